"""What live provisioning keeps (policy/provisioning.py writes it): users and
groups as an identity provider reads them back, and how they are read.

A user or group is its ``ident`` row (label, deactivation; ``v4`` its
``externalId``, ``v5`` a small JSON of the user's ``displayName`` and the
created / modified times) and its memberships. Each record has a version
(a digest of what the provider wrote), SCIM's ``meta.version``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..domain.names import check
from ..errors import PolicyError
from ..storage import db
from .model import GROUP_PREFIX, USER_PREFIX, TenantPolicy
from .persist import IDENT, ident_row

Extras = tuple[str | None, dict[str, Any]]  # (externalId, {"d": displayName, "c": created, "m": modified})
MAX_TEXT = 256


@dataclass(frozen=True)
class UserFields:
    """What a provider writes of a user."""

    user_name: str
    display_name: str | None = None
    external_id: str | None = None
    active: bool | None = None  # None: not given (active, and not shown as set)


@dataclass(frozen=True)
class GroupFields:
    """What a provider writes of a group; ``members`` are ``(type, id)`` with
    type ``"User"``, ``"Group"`` or None (whichever the id names)."""

    display_name: str
    external_id: str | None = None
    members: tuple[tuple[str | None, str], ...] = ()


@dataclass(frozen=True)
class ProvisionedUser:
    id: str
    user_name: str
    display_name: str | None
    external_id: str | None
    active: bool
    groups: tuple[tuple[str, str], ...]  # (group id, its label)
    created: float | None
    modified: float | None
    active_given: bool = True  # False: the provider never set ``active`` (or removed it)

    @property
    def version(self) -> str:
        return digest(["User", self.id, self.user_name, self.display_name, self.external_id, self.active, self.active_given])


@dataclass(frozen=True)
class ProvisionedGroup:
    id: str
    display_name: str
    external_id: str | None
    members: tuple[tuple[str, str, str], ...]  # ("User" | "Group", id, label)
    created: float | None
    modified: float | None

    @property
    def version(self) -> str:
        return digest(["Group", self.id, self.display_name, self.external_id, [list(m[:2]) for m in self.members]])


def digest(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=True).encode()).hexdigest()[:20]


def text(what: str, value: object, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    return check(what, value, max_len=MAX_TEXT, error=PolicyError)


def is_user(tp: TenantPolicy, key: str) -> bool:
    """A user the provider sees: labelled, or in a group (a deleted one is neither)."""
    return key in tp.labels or bool(tp.member_of.get(key))


def is_group(tp: TenantPolicy, key: str) -> bool:
    g = key[len(GROUP_PREFIX) :]
    return key in tp.labels or bool(tp.members.get(g)) or bool(tp.member_of.get(key))


def decode(ext: str | None, meta: str | None) -> Extras:
    try:
        more = json.loads(meta) if meta else {}
    except ValueError:
        more = {}
    return (ext or None), (more if isinstance(more, dict) else {})


def extras_of(conn: Connection, tenant: str, key: str | None = None) -> dict[str, Extras]:
    """Stored extras of every id of ``tenant`` (or of ``key`` alone)."""
    c = db.casbin_rule.c
    where = [c.ptype == IDENT, c.v1 == tenant] + ([c.v0 == key] if key is not None else [])
    return {v0: decode(v4, v5) for v0, v4, v5 in conn.execute(select(c.v0, c.v4, c.v5).where(*where))}


def _extras_in(conn: Connection, tenant: str, keys: Iterable[str] = (), external_id: str | None = None) -> dict[str, Extras]:
    """Stored extras of ``keys``, or of the ids whose externalId is ``external_id``."""
    c = db.casbin_rule.c
    out: dict[str, Extras] = {}
    if external_id is not None:
        q = select(c.v0, c.v4, c.v5).where(c.ptype == IDENT, c.v1 == tenant, c.v4 == external_id)
        return {v0: decode(v4, v5) for v0, v4, v5 in conn.execute(q)}
    for part in db.chunks(sorted(keys), 500):
        q = select(c.v0, c.v4, c.v5).where(c.ptype == IDENT, c.v1 == tenant, c.v0.in_(list(part)))
        out.update({v0: decode(v4, v5) for v0, v4, v5 in conn.execute(q)})
    return out


def user_keys(tp: TenantPolicy) -> set[str]:
    """Every user the provider sees (labelled, or in a group), as ``user:<id>``."""
    return {k for k in tp.labels if k.startswith(USER_PREFIX)} | {k for k, gs in tp.member_of.items() if gs and k.startswith(USER_PREFIX)}


def group_keys(tp: TenantPolicy) -> set[str]:
    """Every group the provider sees (labelled, or with members or a parent group), as ``group:<id>``."""
    keys = {k for k in tp.labels if k.startswith(GROUP_PREFIX)} | {GROUP_PREFIX + g for g, ms in tp.members.items() if ms}
    return keys | {k for k, gs in tp.member_of.items() if gs and k.startswith(GROUP_PREFIX)}


def select_keys(conn: Connection, tenant: str, tp: TenantPolicy, keys: set[str], where: tuple[str, str] | None) -> tuple[list[str], dict[str, Extras]]:
    """(the keys among ``keys`` that ``where`` = (attribute, value) keeps, their extras).
    Attributes: ``id`` and ``externalId`` (exact), ``userName`` / ``displayName``
    (the label, without regard to case); None keeps every key."""
    if where is None:
        return sorted(keys), extras_of(conn, tenant)
    attr, value = where
    if attr == "externalId":
        found = _extras_in(conn, tenant, external_id=value)
        return sorted(k for k in found if k in keys), found
    if attr == "id":
        hit = [k for k in keys if k.partition(":")[2] == value]
    elif attr in ("userName", "displayName"):
        low = value.casefold()
        hit = [k for k in keys if tp.labels.get(k, k.partition(":")[2]).casefold() == low]
    else:
        raise PolicyError(f"cannot select provisioned identities by {attr!r}")
    return sorted(hit), _extras_in(conn, tenant, hit)


def ident_record(key: str, tenant: str, label: str | None, inactive: bool, ext: str | None, more: dict[str, Any]) -> dict[str, Any]:
    row = ident_row(key, tenant, label, inactive)
    row.update(v4=ext, v5=json.dumps(more, ensure_ascii=True, separators=(",", ":")) if more else None)
    return row


def user_record(tp: TenantPolicy, uid: str, extras: Extras, now: float) -> ProvisionedUser:
    key = USER_PREFIX + uid
    groups = tuple(sorted((g, tp.labels.get(GROUP_PREFIX + g, g)) for g in tp.member_of.get(key, ()) if tp.live(("g", key, GROUP_PREFIX + g), now)))
    ext, more = extras
    active = uid not in tp.inactive
    return ProvisionedUser(uid, tp.labels.get(key, uid), more.get("d"), ext, active, groups, more.get("c"), more.get("m"), not active or more.get("a", 1) == 1)


def group_record(tp: TenantPolicy, gid: str, extras: Extras, now: float) -> ProvisionedGroup:
    members = []
    for m in sorted(tp.members.get(gid, ())):
        if m.startswith((USER_PREFIX, GROUP_PREFIX)) and tp.live(("g", m, GROUP_PREFIX + gid), now):
            kind, ident = m.split(":", 1)
            members.append(("User" if kind + ":" == USER_PREFIX else "Group", ident, tp.labels.get(m, ident)))
    ext, more = extras
    return ProvisionedGroup(gid, tp.labels.get(GROUP_PREFIX + gid, gid), ext, tuple(members), more.get("c"), more.get("m"))
