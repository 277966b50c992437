"""Reading the stored policy: casbin rules → one :class:`TenantPolicy` per tenant.

Rows of ``permrag_casbin_rule``:

* ``p, role, tenant, selector, read, allow|deny[, expires]``
* ``g, subject, object, tenant[, expires]`` — subject ``user:<id>``,
  ``group:<id>``, ``agent:<id>`` or a role; object ``group:<id>`` or a role;
* ``acl, folder, tenant, principal, allow|deny[, expires]`` — a folder's ACL entry;
* ``noinh, folder, tenant`` — the folder does not inherit its parent's ACL;
* ``ident, user:<id>|group:<id>, tenant, label, inactive`` — what the identity
  provider says of an id: its label (``userName`` / ``displayName``, may be
  empty) and, for a user, ``inactive`` when it is deactivated. Stored with the
  policy so that a rename or a deactivation moves the policy version and every
  process sees it at its next read.

``expires`` is epoch seconds as text (casbin itself never reads it: the
enforcer adapter drops expired rows and the extra field).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from ..storage import db
from .model import AGENT_PREFIX, GROUP_PREFIX, USER_PREFIX, Folder, TenantPolicy, edge_parts

Row = tuple[Any, ...]

FOLDER_ACL = "acl"
# The ptype column holds 8 characters (PostgreSQL enforces it): a folder that
# breaks inheritance is stored as "noinh"; "noinherit" rows that SQLite
# accepted before are read the same.
NO_INHERIT = "noinh"
NO_INHERIT_TYPES = (NO_INHERIT, "noinherit")
IDENT = "ident"
INACTIVE = "inactive"


def ident_row(key: str, tenant: str, label: str | None, inactive: bool) -> dict[str, str | None]:
    """The stored row of an id's label and deactivation."""
    return {"ptype": IDENT, "v0": key, "v1": tenant, "v2": label or "", "v3": INACTIVE if inactive else None, "v4": None, "v5": None}


def stamp(expires: float | None) -> str | None:
    """How an expiry is stored."""
    return None if expires is None else repr(float(expires))


_ROLES = select(db.roles.c.tenant, db.roles.c.name)
_RULES = select(db.casbin_rule.c.ptype, db.casbin_rule.c.v0, db.casbin_rule.c.v1, db.casbin_rule.c.v2, db.casbin_rule.c.v3, db.casbin_rule.c.v4, db.casbin_rule.c.v5)
_ROLES_OF = _ROLES.where(db.roles.c.tenant.in_(bindparam("names", expanding=True)))
_RULES_OF = _RULES.where(  # a g row names its tenant in v2, every other row in v1
    ((db.casbin_rule.c.ptype == "g") & db.casbin_rule.c.v2.in_(bindparam("g_names", expanding=True))) | ((db.casbin_rule.c.ptype != "g") & db.casbin_rule.c.v1.in_(bindparam("names", expanding=True)))
)


def read_all(conn: Connection, only: Iterable[str] | None = None) -> dict[str, TenantPolicy]:
    """Every tenant's policy as stored (or the tenants ``only`` names)."""
    if only is None:
        return build(conn.execute(_ROLES), conn.execute(_RULES))
    role_rows: list[Sequence[Any]] = []
    rule_rows: list[Sequence[Any]] = []
    for part in db.chunks(sorted(set(only))):
        role_rows += conn.execute(_ROLES_OF, {"names": list(part)}).all()
        rule_rows += conn.execute(_RULES_OF, {"names": list(part), "g_names": list(part)}).all()
    return build(role_rows, rule_rows)


def build(role_rows: Iterable[Sequence[Any]], rule_rows: Iterable[Sequence[Any]]) -> dict[str, TenantPolicy]:
    """Tenants' policies from stored rows: (tenant, role) and (ptype, v0, …, v5)."""
    tenants: dict[str, TenantPolicy] = {}
    for tenant, name in role_rows:
        add_row(tenants, ("role", tenant, name))
    for row in rule_rows:
        add_row(tenants, tuple(row))
    return tenants


def _tenant_of(tenants: dict[str, TenantPolicy], row: Row) -> TenantPolicy:
    t = row[1] if row[0] == "role" else row[3] if row[0] == "g" else row[2]
    tp = tenants.get(t)
    if tp is None:
        tp = tenants[t] = TenantPolicy()
    return tp


def add_row(tenants: dict[str, TenantPolicy], row: Row) -> None:
    """What one stored row adds to its tenant's policy, in the log's form:
    ``("role", tenant, name)`` or ``(ptype, v0, …, v5)``. The one reading of a
    row: a full load (:func:`build`), a change in this process and another
    process's catch-up (:func:`apply_rows`) all go through it."""
    tp = _tenant_of(tenants, row)
    if row[0] == "role":
        tp.roles.add(row[2])
        return
    ptype, v0, v1, v2, v3, v4, v5 = row
    if ptype == "p":
        (tp.allow if v4 == "allow" else tp.deny)[v0].add(v2)
        if v5:
            tp.expires[("p", v0, v2, v4)] = float(v5)
    elif ptype == "g":
        kind, a, b = edge_parts(v0, v1)
        getattr(tp, "add_" + kind)(a, b)
        if v3:
            tp.expires[("g", v0, v1)] = float(v3)
    elif ptype == FOLDER_ACL:
        acl = tp.folders.setdefault(v0, Folder())
        (acl.allow if v3 == "allow" else acl.deny)[v2] = float(v4) if v4 else None
    elif ptype in NO_INHERIT_TYPES:
        tp.folders.setdefault(v0, Folder()).inherit = False
    elif ptype == IDENT:
        if v2:
            tp.labels[v0] = v2
        if v3 == INACTIVE and v0.startswith(USER_PREFIX):
            tp.inactive.add(v0[len(USER_PREFIX) :])


def remove_row(tenants: dict[str, TenantPolicy], row: Row) -> None:
    """The inverse of :func:`add_row`: what removing one stored row takes away
    (matched by its key: the expiry and the identity extras do not matter)."""
    tp = _tenant_of(tenants, row)
    if row[0] == "role":
        tp.roles.discard(row[2])
        return
    ptype, v0, v1, v2, v3, v4, _ = row
    if ptype == "p":
        (tp.allow if v4 == "allow" else tp.deny).get(v0, set()).discard(v2)
        tp.expires.pop(("p", v0, v2, v4), None)
    elif ptype == "g":
        kind, a, b = edge_parts(v0, v1)
        getattr(tp, "remove_" + kind)(a, b)
        tp.expires.pop(("g", v0, v1), None)
    elif ptype == FOLDER_ACL or ptype in NO_INHERIT_TYPES:
        acl = tp.folders.get(v0)
        if acl is None:
            return
        if ptype == FOLDER_ACL:
            (acl.allow if v3 == "allow" else acl.deny).pop(v2, None)
        else:
            acl.inherit = True
        if acl.empty():
            del tp.folders[v0]
    elif ptype == IDENT:
        tp.labels.pop(v0, None)
        if v0.startswith(USER_PREFIX):
            tp.inactive.discard(v0[len(USER_PREFIX) :])


def apply_rows(tenants: dict[str, TenantPolicy], removed: Iterable[Row], added: Iterable[Row], names: Iterable[str]) -> None:
    """One logged change applied to a copy of the policy at the version before
    it: its removed rows, then its added rows. A tenant of ``names`` left with
    nothing is dropped, as a full load would not have it."""
    for row in removed:
        remove_row(tenants, row)
    for row in added:
        add_row(tenants, row)
    for t in names:
        tp = tenants.get(t)
        if tp is not None and tp.empty():
            del tenants[t]


def rows_of(tp: TenantPolicy, tenant: str, *, identity: bool = True) -> list[Row]:
    """The stored rows (log form) whose :func:`build` is ``tp`` — every row of
    the tenant; ``identity=False`` leaves out the identity provider's (ident) rows."""
    rows: list[Row] = [("role", tenant, r) for r in sorted(tp.roles)]
    for eft, by_role in (("allow", tp.allow), ("deny", tp.deny)):
        for role, sels in sorted(by_role.items()):
            rows += [("p", role, tenant, s, "read", eft, stamp(tp.expires.get(("p", role, s, eft)))) for s in sorted(sels)]
    edges = [(s, o) for s, os in tp.parents.items() for o in os]
    edges += [(USER_PREFIX + u, r) for u, rs in tp.user_roles.items() for r in rs]
    edges += [(AGENT_PREFIX + a, r) for a, rs in tp.agent_roles.items() for r in rs]
    edges += [(GROUP_PREFIX + g, r) for g, rs in tp.group_roles.items() for r in rs]
    edges += [(m, GROUP_PREFIX + g) for m, gs in tp.member_of.items() for g in gs]
    rows += [("g", s, o, tenant, stamp(tp.expires.get(("g", s, o))), None, None) for s, o in sorted(edges)]
    for path, acl in sorted(tp.folders.items()):
        for eft, entries in (("allow", acl.allow), ("deny", acl.deny)):
            rows += [(FOLDER_ACL, path, tenant, p, eft, stamp(t), None) for p, t in sorted(entries.items())]
        if not acl.inherit:
            rows.append((NO_INHERIT, path, tenant, "", None, None, None))
    if identity:
        keys = sorted(set(tp.labels) | {USER_PREFIX + u for u in tp.inactive})
        rows += [tuple(ident_row(k, tenant, tp.labels.get(k), k.startswith(USER_PREFIX) and k[len(USER_PREFIX) :] in tp.inactive).values()) for k in keys]
    return rows
