"""A policy :class:`~permrag.policy.records.Change` turned into SQL.

A change is data — typed rows to remove and rows to add (policy/records.py)
— so its statements are derived here, one way for every kind of change: each
removal deletes the stored rows of its key (a rule: role, tenant, selector,
effect; an edge: subject, object, tenant; a folder entry: folder, tenant,
principal, effect; the no-inherit flag: folder, tenant; an identity row:
principal, tenant; a role: tenant, name), read first so that the log holds
the rows exactly as they were stored (a few by one indexed read per key;
many — a replacing import, a large sync — by one read of the tenant's rows
of that type, then deleted by id); then the additions are inserted in
batches. Removals run first, so a change that replaces a row (a new expiry, a
relabelled user) removes the old one and writes the new one.

:func:`write` returns the rows it removed and added, in the log's form: that
is what the change log records and what every process applies to its copy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, literal, select
from sqlalchemy.engine import Connection

from ..storage import db
from .persist import FOLDER_ACL, IDENT, NO_INHERIT_TYPES
from .records import Change, Edge, FolderEntry, Ident, Op, RoleDef, Row, Rule

_c = db.casbin_rule.c
_b: list[Any] = [bindparam(f"b{i}") for i in range(4)]
# key shape → the rows it names, with bound parameters b0…b3
_WHERE: dict[str, Any] = {
    "p": (_c.ptype == "p", _c.v0 == _b[0], _c.v1 == _b[1], _c.v2 == _b[2], _c.v4 == _b[3]),
    "g": (_c.ptype == "g", _c.v0 == _b[0], _c.v1 == _b[1], _c.v2 == _b[2]),
    FOLDER_ACL: (_c.ptype == FOLDER_ACL, _c.v0 == _b[0], _c.v1 == _b[1], _c.v2 == _b[2], _c.v3 == _b[3]),
    "noinh": (_c.ptype.in_(NO_INHERIT_TYPES), _c.v0 == _b[0], _c.v1 == _b[1]),
    IDENT: (_c.ptype == IDENT, _c.v0 == _b[0], _c.v1 == _b[1]),
}
_ROLE = (db.roles.c.tenant == _b[0], db.roles.c.name == _b[1])
_COLS = (_c.id, _c.ptype, _c.v0, _c.v1, _c.v2, _c.v3, _c.v4, _c.v5)
_SELECTS: dict[str, Any] = {k: select(*_COLS).where(*w) for k, w in _WHERE.items()}
# Many removals of one shape: the tenant's rows of that type, read once and matched here.
_TENANT_ROWS: dict[str, Any] = {k: select(*_COLS).where(w[0], (_c.v2 if k == "g" else _c.v1) == _b[0]) for k, w in _WHERE.items()}
_KEY_OF: dict[str, Any] = {  # a stored row (ptype, v0 … v5) → the key a removal names it by
    "p": lambda r: (r[1], r[2], r[3], r[5]),
    "g": lambda r: (r[1], r[2], r[3]),
    FOLDER_ACL: lambda r: (r[1], r[2], r[3], r[4]),
    "noinh": lambda r: (r[1], r[2]),
    IDENT: lambda r: (r[1], r[2]),
}
_TENANT_AT = {"p": 1, "g": 2, FOLDER_ACL: 1, "noinh": 1, IDENT: 1}  # where a key holds its tenant
_ROLE_ROW = select(literal("role"), db.roles.c.tenant, db.roles.c.name).where(*_ROLE)
_ROLE_DELETE = delete(db.roles).where(*_ROLE)
BATCH = 1000
FEW = 32  # up to this many removals of one shape: one indexed read per key


def _key(op: Op) -> tuple[str, tuple[Any, ...]]:
    """The key shape of a removal and the values that name its rows."""
    if isinstance(op, RoleDef):
        return "role", (op.tenant, op.role)
    if isinstance(op, Rule):
        return "p", (op.role, op.tenant, op.selector, op.effect)
    if isinstance(op, Edge):
        return "g", (op.subject, op.target, op.tenant)
    if isinstance(op, FolderEntry):
        return ("noinh", (op.folder, op.tenant)) if op.principal is None else (FOLDER_ACL, (op.folder, op.tenant, op.principal, op.effect))
    if isinstance(op, Ident):
        return IDENT, (op.principal, op.tenant)
    raise TypeError(f"not a policy change: {op!r}")


def write(conn: Connection, change: Change) -> tuple[list[Row], list[Row]]:
    """Run ``change``'s statements in ``conn``'s transaction: its removals, then
    its additions; returns (the rows removed, as they were stored; the rows added)."""
    keys: dict[str, dict[tuple[Any, ...], None]] = defaultdict(dict)
    for op in change.ops:
        if not op.added:
            shape, values = _key(op)
            keys[shape][values] = None
    removed: list[Row] = []
    for shape, named in keys.items():
        if shape == "role":
            params = [{"b0": t, "b1": n} for t, n in named]
            for one in params:
                removed += [tuple(r) for r in conn.execute(_ROLE_ROW, one)]
            conn.execute(_ROLE_DELETE, params)
            continue
        found = _stored(conn, shape, list(named))
        removed += [row for _, row in found]
        for ids in db.chunks([i for i, _ in found], BATCH):
            conn.execute(delete(db.casbin_rule).where(_c.id.in_(list(ids))))
    added = [op.row() for op in change.ops if op.added]
    roles = [{"tenant": r[1], "name": r[2]} for r in added if r[0] == "role"]
    rules = [_columns(r) for r in added if r[0] != "role"]
    for table, rows in ((db.roles, roles), (db.casbin_rule, rules)):
        for part in db.chunks(rows, BATCH):
            conn.execute(table.insert(), list(part))
    return removed, [r for r in added if r[0] == "role"] + [r for r in added if r[0] != "role"]


def _stored(conn: Connection, shape: str, named: list[tuple[Any, ...]]) -> list[tuple[int, Row]]:
    """(id, row) of every stored row the keys ``named`` name: by one indexed read
    per key, or — for many — by one read of each tenant's rows of the type."""
    out: list[tuple[int, Row]] = []
    if len(named) <= FEW:
        for values in named:
            out += [(r[0], tuple(r[1:])) for r in conn.execute(_SELECTS[shape], {f"b{i}": v for i, v in enumerate(values)})]
        return out
    wanted, key_of = set(named), _KEY_OF[shape]
    for tenant in sorted({values[_TENANT_AT[shape]] for values in named}):
        out += [(r[0], tuple(r[1:])) for r in conn.execute(_TENANT_ROWS[shape], {"b0": tenant}) if key_of(tuple(r[1:])) in wanted]
    return out


def _columns(row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(("ptype", "v0", "v1", "v2", "v3", "v4", "v5"), row))
