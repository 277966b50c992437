"""Building blocks of policy changes shared by the policy store and the
identity layer (groups, folder ACLs, directory sync)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete
from sqlalchemy.engine import Connection

from .. import db
from ..errors import UnknownRoleError
from .model import Change, TenantPolicy
from .persist import stamp
from .principals import closest


def set_expiry(tp: TenantPolicy, key: tuple[str, ...], until: float | None) -> None:
    if until is None:
        tp.expires.pop(key, None)
    else:
        tp.expires[key] = until


def edge_change(tenant: str, key: tuple[str, ...], held: bool, until: float | None, add: Callable[[TenantPolicy], None], roles: set[str], users: set[str]) -> Change:
    """Store the ``g`` edge ``key`` = ("g", subject, object) with expiry ``until``
    (replacing it when ``held``)."""
    _, v0, v1 = key
    c = db.casbin_rule.c

    def write(conn: Connection) -> None:
        if held:
            conn.execute(delete(db.casbin_rule).where(c.ptype == "g", c.v0 == v0, c.v1 == v1, c.v2 == tenant))
        conn.execute(db.casbin_rule.insert().values(ptype="g", v0=v0, v1=v1, v2=tenant, v3=stamp(until)))

    def apply(s: dict[str, TenantPolicy]) -> None:
        add(s[tenant])
        set_expiry(s[tenant], key, until)

    return Change(write, apply, {tenant}, roles, users)


def need_role(tp: TenantPolicy, role: str, tenant: str) -> None:
    """Raise :class:`UnknownRoleError`, naming the closest role, if ``role`` does not exist."""
    if role not in tp.roles:
        near = closest(tp, "role", role)
        raise UnknownRoleError(f"unknown role {role!r} in tenant {tenant!r}" + (f"; did you mean {near!r}?" if near else ""))
