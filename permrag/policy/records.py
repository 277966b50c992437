"""One logged policy change as a typed value, written and read back strictly.

A record of the change log (policy/deltas.py) is a :class:`Delta`: the
version, its kind, the tenants it touched, the roles and users whose cached
bitmaps it changes, and the stored rows it added and removed. The rows are
the exact statements' effect; :meth:`Delta.ops` names each one as a typed
change — a :class:`Rule`, an :class:`Edge` (an assignment, a membership, a
group's role, an agent's role, a role inheritance), a :class:`RoleDef`, a
:class:`FolderEntry` or an :class:`Ident` (a label or deactivation from the
identity provider) — each with the principals, roles and selectors it names.

The log is written by other processes (and possibly other permrag versions):
:func:`parse` checks every field's type and every row's shape and raises
:class:`MalformedRecord` for anything else, so a damaged record is never read
as a smaller change than it was (the catch-up then reloads everything).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .model import AGENT_PREFIX, GROUP_PREFIX, USER_PREFIX, edge_parts
from .persist import FOLDER_ACL, IDENT, INACTIVE, NO_INHERIT, NO_INHERIT_TYPES, stamp

Row = tuple[Any, ...]
RULE_TYPES = ("p", "g", FOLDER_ACL, IDENT, *NO_INHERIT_TYPES)  # stored rows: (ptype, v0 … v5)
MAX_KIND = 32


class MalformedRecord(ValueError):
    """A change-log record that is not one permrag writes."""


@dataclass(frozen=True)
class Rule:
    """``role`` may (``allow``) or may not (``deny``) read ``selector`` in ``tenant``."""

    added: bool
    tenant: str
    role: str
    selector: str
    effect: str
    expires: float | None = None

    def row(self) -> Row:
        return ("p", self.role, self.tenant, self.selector, "read", self.effect, stamp(self.expires))


@dataclass(frozen=True)
class Edge:
    """A ``g`` edge: ``subject`` holds ``target`` (a role, or a group it is a member of)."""

    added: bool
    tenant: str
    subject: str
    target: str
    expires: float | None = None

    def row(self) -> Row:
        return ("g", self.subject, self.target, self.tenant, stamp(self.expires), None, None)

    @property
    def kind(self) -> str:
        """``membership``, ``assignment`` (a user's role), ``agent_role``, ``group_role`` or ``inheritance``."""
        return {"member": "membership", "user": "assignment", "agent": "agent_role", "group_role": "group_role", "inherit": "inheritance"}[edge_parts(self.subject, self.target)[0]]

    @property
    def verb(self) -> str:
        """The logged kind of a change that adds this edge (``member``, ``assign_user``…)."""
        return {"membership": "member", "assignment": "assign_user", "agent_role": "assign_agent", "inheritance": "inherit"}.get(self.kind, self.kind)


@dataclass(frozen=True)
class RoleDef:
    added: bool
    tenant: str
    role: str

    def row(self) -> Row:
        return ("role", self.tenant, self.role)


@dataclass(frozen=True)
class FolderEntry:
    """A folder's ACL entry (``principal`` allowed or denied), or with ``principal``
    None its flag that it does not inherit its parent's ACL."""

    added: bool
    tenant: str
    folder: str
    principal: str | None
    effect: str | None = None
    expires: float | None = None

    def row(self) -> Row:
        if self.principal is None:
            return (NO_INHERIT, self.folder, self.tenant, "", None, None, None)
        return (FOLDER_ACL, self.folder, self.tenant, self.principal, self.effect, stamp(self.expires), None)


@dataclass(frozen=True)
class Ident:
    """What the identity provider says of ``principal``: its label, whether it is
    deactivated, and the provisioning extras kept beside them (its ``externalId``
    and a JSON object of SCIM metadata: policy/provisioned.py)."""

    added: bool
    tenant: str
    principal: str
    label: str = ""
    inactive: bool = False
    external_id: str | None = None
    extras: str | None = None

    def row(self) -> Row:
        return (IDENT, self.principal, self.tenant, self.label, INACTIVE if self.inactive else None, self.external_id, self.extras)


Op = Rule | Edge | RoleDef | FolderEntry | Ident


@dataclass(frozen=True)
class Change:
    """A validated policy change, as data: its kind, the typed rows it removes
    (matched by key) and adds, and whose cached bitmaps it changes (``None``:
    all of the tenants'). policy/writes.py turns it into SQL; the rows the
    statements then removed and added are logged (policy/deltas.py) and applied
    to every process's copy the same way (persist.py ``apply_rows``)."""

    kind: str
    tenants: frozenset[str]
    ops: tuple[Op, ...]
    roles: frozenset[str] | None = frozenset()
    users: frozenset[str] | None = frozenset()

    @classmethod
    def of(cls, kind: str, tenants: Iterable[str], ops: Iterable[Op], roles: Iterable[str] | None = (), users: Iterable[str] | None = ()) -> Change:
        return cls(kind[:MAX_KIND], frozenset(tenants), tuple(ops), None if roles is None else frozenset(roles), None if users is None else frozenset(users))


def _expiry(text: Any) -> float | None:
    return None if text is None else float(text)


def op_of(row: Row, added: bool) -> Op:
    """The typed change one logged row stands for."""
    if row[0] == "role":
        return RoleDef(added, row[1], row[2])
    ptype, v0, v1, v2, v3, v4, v5 = row
    if ptype == "p":
        return Rule(added, v1, v0, v2, v4, _expiry(v5))
    if ptype == "g":
        return Edge(added, v2, v0, v1, _expiry(v3))
    if ptype == FOLDER_ACL:
        return FolderEntry(added, v1, v0, v2, v3, _expiry(v4))
    if ptype == IDENT:
        return Ident(added, v1, v0, v2 or "", v3 == INACTIVE, v4, v5)
    return FolderEntry(added, v1, v0, None, None, None)


@dataclass(frozen=True)
class Delta:
    """One policy version's change, as logged."""

    version: int
    ts: float
    kind: str
    tenants: tuple[str, ...]
    roles: tuple[str, ...] | None  # None: every role of ``tenants``
    users: tuple[str, ...] | None  # None: every user of ``tenants``
    added: tuple[Row, ...] = ()
    removed: tuple[Row, ...] = ()

    def detail(self) -> str:
        def opt(v: tuple[str, ...] | None) -> list[str] | None:
            return None if v is None else sorted(v)

        return json.dumps({"tenants": sorted(self.tenants), "roles": opt(self.roles), "users": opt(self.users), "added": [list(r) for r in self.added], "removed": [list(r) for r in self.removed]})

    @classmethod
    def from_row(cls, version: Any, ts: Any, kind: Any, detail: Any) -> Delta:
        return parse(version, ts, kind, detail)

    def ops(self) -> list[Op]:
        """The typed changes: rows removed first, then rows added (the order they were written)."""
        return [op_of(r, False) for r in self.removed] + [op_of(r, True) for r in self.added]

    def scope(self) -> tuple[set[str] | None, set[str] | None]:
        """(roles, users) whose cached bitmaps another process drops for this change
        (None: all of the tenants'): the recorded scope, checked against the typed
        changes — a rule of a role outside it, or an edge or deactivation of a user
        outside it, and the record is not trusted to be narrow: everything."""
        if self.roles is None or self.users is None:
            return None, None
        roles, users = set(self.roles), set(self.users)
        for r in (*self.removed, *self.added):  # the rows read directly: a sync batch logs thousands
            if r[0] == "p" and r[1] not in roles:
                return None, None
            if r[0] == "g" and not r[2].startswith(GROUP_PREFIX) and not r[1].startswith((USER_PREFIX, AGENT_PREFIX, GROUP_PREFIX)) and r[1] not in roles:
                return None, None  # a role inheritance outside the scope's roles
            if r[0] in ("g", IDENT) and r[1].startswith(USER_PREFIX) and r[1][len(USER_PREFIX) :] not in users:
                return None, None
            if r[0] == FOLDER_ACL or r[0] in NO_INHERIT_TYPES:
                return None, None
        return roles, users


def _names(value: Any, what: str, nullable: bool) -> tuple[str, ...] | None:
    if value is None and nullable:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise MalformedRecord(f"{what} must be a list of names")
    return tuple(value)


def _row(value: Any) -> Row:
    if not isinstance(value, list) or not value:
        raise MalformedRecord("a logged row must be a non-empty list")
    if value[0] == "role":
        if len(value) != 3 or not all(isinstance(v, str) and v for v in value):
            raise MalformedRecord("a role row must be ['role', tenant, name]")
        return tuple(value)
    if value[0] not in RULE_TYPES or len(value) != 7 or not all(isinstance(v, str) for v in value[:4]) or not all(v is None or isinstance(v, str) for v in value[4:]):
        raise MalformedRecord(f"not a stored rule row: {str(value)[:80]}")
    if value[0] == "p" and value[5] not in ("allow", "deny"):
        raise MalformedRecord("a rule row's effect must be allow or deny")
    try:
        _expiry(value[6] if value[0] == "p" else value[4] if value[0] == "g" else value[5] if value[0] == FOLDER_ACL else None)
    except ValueError:
        raise MalformedRecord("a row's expiry must be a number") from None
    return tuple(value)


def parse(version: Any, ts: Any, kind: Any, detail: Any) -> Delta:
    """A stored record as a :class:`Delta`; :class:`MalformedRecord` for anything permrag does not write."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise MalformedRecord(f"a record's version must be a positive integer, not {version!r}")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise MalformedRecord(f"record {version}: its time must be a number")
    if not isinstance(kind, str) or not kind or len(kind) > MAX_KIND:
        raise MalformedRecord(f"record {version}: its kind must be a short name")
    try:
        d = json.loads(detail) if isinstance(detail, str) else None
    except ValueError:
        d = None
    if not isinstance(d, dict) or set(d) != {"tenants", "roles", "users", "added", "removed"}:
        raise MalformedRecord(f"record {version}: its detail is not a change record")
    if not isinstance(d["added"], list) or not isinstance(d["removed"], list):
        raise MalformedRecord(f"record {version}: added and removed must be lists of rows")
    try:
        tenants = _names(d["tenants"], "tenants", False) or ()
        roles, users = _names(d["roles"], "roles", True), _names(d["users"], "users", True)
        added, removed = tuple(_row(r) for r in d["added"]), tuple(_row(r) for r in d["removed"])
    except MalformedRecord as exc:
        raise MalformedRecord(f"record {version}: {exc}") from None
    if not tenants:
        raise MalformedRecord(f"record {version}: it names no tenant")
    return Delta(version, float(ts), kind, tenants, roles, users, added, removed)
