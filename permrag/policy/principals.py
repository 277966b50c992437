"""Principals an administrator types, checked against what the tenant knows.

A principal's *form* is checked everywhere (names.principal): ``bogus:x``,
``usr:dave``, ``group:`` and the empty string are errors, never role names.
Where an administrator types one — a folder ACL, a group membership, a
group's role, a grant, an assignment's role — it must also *name* someone:
a typo would otherwise be stored as a new, empty principal, and a deny that
names nobody fails open. Such a call raises :class:`UnknownPrincipalError`
(:class:`UnknownRoleError` for a rule's or an assignment's role) naming the
closest known principal, unless ``allow_unknown=True`` (``--allow-unknown``)
says the name is meant (a group the identity provider has not synced yet).

A user or group is known when the tenant stores it: a label from the
identity provider, a membership, a role or a member. A user comes into being
by its first role assignment, so assignments check only the role. ACLs that
arrive with source documents may name principals not synced yet: they are
stored as they are, and ``permrag policy check`` lists every one that names
nobody (access/lint.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..domain.names import Held, check, kind_prefix, show_time
from ..errors import PolicyError, UnknownPrincipalError
from .model import AGENT_PREFIX, ROLE_PREFIX, TenantPolicy


def exists(tp: TenantPolicy, key: str) -> bool:
    """Whether ``user:<id>`` / ``group:<id>`` / ``role:<name>`` names someone the tenant knows."""
    if key.startswith(ROLE_PREFIX):
        return key[len(ROLE_PREFIX) :] in tp.roles
    return tp.known(key)


def names(tp: TenantPolicy, kind: str) -> set[str]:
    """Every name of ``kind`` (``user``, ``group``, ``role``) the tenant knows, ids and labels."""
    if kind == "role":
        return set(tp.roles)
    prefix = f"{kind}:"
    ids = tp.groups() if kind == "group" else tp.agents() if kind == "agent" else tp.users()
    return ids | {k[len(prefix) :] for k in tp.labels if k.startswith(prefix)} | {v for k, v in tp.labels.items() if k.startswith(prefix)}


def closest(tp: TenantPolicy, kind: str, name: str) -> str | None:
    """The known name of ``kind`` most like ``name`` (difflib), if one is close."""
    found = difflib.get_close_matches(name, sorted(names(tp, kind)), n=1, cutoff=0.6)
    return found[0] if found else None


def resolve(tp: TenantPolicy, key: str) -> str:
    """A typed principal with a label in place of an id → the principal by id (roles and agents as they are)."""
    return key if key.startswith((ROLE_PREFIX, AGENT_PREFIX)) else tp.resolve_key(key)


def require(tp: TenantPolicy, key: str, tenant: str, where: str, *, allow_unknown: bool = False) -> str:
    """``key`` by id, if it names someone the tenant knows (or ``allow_unknown``);
    else :class:`UnknownPrincipalError` naming the closest known one."""
    key = resolve(tp, key)
    if allow_unknown or exists(tp, key):
        return key
    kind, _, name = key.partition(":")
    near = closest(tp, kind, name)
    advice = f"; did you mean {kind}:{near}?" if near is not None else f"; the tenant has no {kind} of a similar name"
    raise UnknownPrincipalError(
        f"unknown {kind} {name!r} in tenant {tenant!r} ({where}){advice}",
        hint="pass allow_unknown=True to name it anyway",
        cli_hint="pass --allow-unknown to name it anyway",
    )


def user_id(user: object) -> str:
    """A user id given to an assignment: never a principal (``user:bob``,
    ``group:contractors``, ``usr:dave``, any word and a colon-like character):
    stored as a user, it would be a phantom that holds the role while the
    group or user it looks like holds nothing, so a deny meant for them fails
    open. ``permrag policy check`` lists phantoms stored before this check."""
    name = check("user", user, error=PolicyError)
    head = kind_prefix(name)
    if head is not None:
        raise PolicyError(
            f"{name!r} is a principal, not a user id ({head!r} and a colon name a kind)",
            hint="give the bare user id (bob, not user:bob); to give a group a role use identity.assign_group",
            cli_hint="give the bare user id (bob, not user:bob); to give a group a role use `permrag group assign`",
        )
    return name


def listing(items: Iterable[tuple[str, tuple[str, ...]]], tp: TenantPolicy, now: float) -> list[Held]:
    """(name, expiry key) pairs as :class:`Held` names, sorted, the expired ones left out."""
    out = [Held(name, tp.expires.get(key)) for name, key in items if tp.live(key, now)]
    return sorted(out)


def require_future(until: float | None, now: float, what: str) -> float | None:
    """``until`` unless it has already passed: an expiry in the past would store
    access that never holds while listings and exports show it."""
    if until is not None and until <= now:
        raise PolicyError(f"{what} {show_time(until)} is in the past; give a future time, or leave it out for access that does not expire")
    return until
