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

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from .. import db
from .model import AGENT_PREFIX, GROUP_PREFIX, USER_PREFIX, Folder, TenantPolicy

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
    tenants: dict[str, TenantPolicy] = defaultdict(TenantPolicy)
    for tenant, name in role_rows:
        tenants[tenant].roles.add(name)
    for ptype, v0, v1, v2, v3, v4, v5 in rule_rows:
        if ptype == "p":
            tp = tenants[v1]
            (tp.allow if v4 == "allow" else tp.deny)[v0].add(v2)
            if v5:
                tp.expires[("p", v0, v2, v4)] = float(v5)
        elif ptype == "g":
            tp = tenants[v2]
            if v1.startswith(GROUP_PREFIX):
                tp.add_member(v0, v1[len(GROUP_PREFIX) :])
            elif v0.startswith(USER_PREFIX):
                tp.add_user(v0[len(USER_PREFIX) :], v1)
            elif v0.startswith(AGENT_PREFIX):
                tp.add_agent(v0[len(AGENT_PREFIX) :], v1)
            elif v0.startswith(GROUP_PREFIX):
                tp.add_group_role(v0[len(GROUP_PREFIX) :], v1)
            else:
                tp.add_inherit(v0, v1)
            if v3:
                tp.expires[("g", v0, v1)] = float(v3)
        elif ptype == FOLDER_ACL:
            acl = tenants[v1].folders.setdefault(v0, Folder())
            (acl.allow if v3 == "allow" else acl.deny)[v2] = float(v4) if v4 else None
        elif ptype in NO_INHERIT_TYPES:
            tenants[v1].folders.setdefault(v0, Folder()).inherit = False
        elif ptype == IDENT:
            if v2:
                tenants[v1].labels[v0] = v2
            if v3 == INACTIVE and v0.startswith(USER_PREFIX):
                tenants[v1].inactive.add(v0[len(USER_PREFIX) :])
    return dict(tenants)
