"""Building blocks of policy changes shared by the versioned policy and the
identity layer (groups, folder ACLs, directory sync)."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UnknownRoleError
from .model import AGENT_PREFIX, GROUP_PREFIX, USER_PREFIX, TenantPolicy
from .persist import rows_of
from .principals import closest
from .records import Change, Edge, Op, RoleDef, Rule, op_of


def set_expiry(tp: TenantPolicy, key: tuple[str, ...], until: float | None) -> None:
    if until is None:
        tp.expires.pop(key, None)
    else:
        tp.expires[key] = until


def edge_change(tenant: str, key: tuple[str, ...], held: bool, until: float | None, roles: Iterable[str] | None, users: Iterable[str] | None) -> Change:
    """Store the ``g`` edge ``key`` = ("g", subject, object) with expiry ``until``
    (replacing it when ``held``)."""
    _, subject, target = key
    edge = Edge(True, tenant, subject, target, until)
    gone = [Edge(False, tenant, subject, target)] if held else []
    return Change.of(edge.verb, {tenant}, [*gone, edge], roles, users)


def role_ops(tp: TenantPolicy, tenant: str, role: str) -> list[Op]:
    """Removing ``role``: its rules, every edge to or from it, and the role itself."""
    ops: list[Op] = [Rule(False, tenant, role, sel, eft) for eft, by in (("allow", tp.allow), ("deny", tp.deny)) for sel in sorted(by.get(role, ()))]
    edges = [(role, p) for p in tp.parents.get(role, ())] + [(c, role) for c in tp.children.get(role, ())]
    edges += [(USER_PREFIX + u, role) for u in tp.role_users.get(role, ())] + [(AGENT_PREFIX + a, role) for a in tp.role_agents.get(role, ())]
    edges += [(GROUP_PREFIX + g, role) for g in tp.role_groups.get(role, ())] + [(role, GROUP_PREFIX + g) for g in tp.member_of.get(role, ())]
    ops += [Edge(False, tenant, s, o) for s, o in sorted(edges)]
    return [*ops, RoleDef(False, tenant, role)]


def tenant_ops(tp: TenantPolicy, tenant: str) -> list[Op]:
    """Removing everything of ``tenant`` but what the identity provider says (its ident rows)."""
    return [op_of(row, False) for row in rows_of(tp, tenant, identity=False)]


def need_role(tp: TenantPolicy, role: str, tenant: str) -> None:
    """Raise :class:`UnknownRoleError`, naming the closest role, if ``role`` does not exist."""
    if role not in tp.roles:
        near = closest(tp, "role", role)
        raise UnknownRoleError(f"unknown role {role!r} in tenant {tenant!r}" + (f"; did you mean {near!r}?" if near else ""))
