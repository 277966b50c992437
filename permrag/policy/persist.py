"""Reading the stored policy: casbin rules → one :class:`TenantPolicy` per tenant."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.engine import Connection

from .. import db
from .model import USER_PREFIX, TenantPolicy


def read_all(conn: Connection) -> dict[str, TenantPolicy]:
    """Every tenant's policy as stored."""
    c = db.casbin_rule.c
    tenants: dict[str, TenantPolicy] = defaultdict(TenantPolicy)
    for tenant, name in conn.execute(select(db.roles.c.tenant, db.roles.c.name)):
        tenants[tenant].roles.add(name)
    for ptype, v0, v1, v2, v4 in conn.execute(select(c.ptype, c.v0, c.v1, c.v2, c.v4)):
        if ptype == "p":
            (tenants[v1].allow if v4 == "allow" else tenants[v1].deny)[v0].add(v2)
        elif ptype == "g":
            if v0.startswith(USER_PREFIX):
                tenants[v2].add_user(v0[len(USER_PREFIX) :], v1)
            else:
                tenants[v2].add_inherit(v0, v1)
    return dict(tenants)
