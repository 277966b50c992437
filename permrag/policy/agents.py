"""Agents: principals of their own kind that act for users (``rag.policy.assign_agent``).

An agent (``agent:<id>``) holds roles by assignment (``g, agent:<id>, role``),
may be a member of groups (``g, agent:<id>, group:<g>``) and may be named by
document and folder ACL entries, exactly like a user — but in a namespace
apart: an agent id used as a user holds nothing, and a user id is never an
agent. What an agent may read matters only for a *delegated* request, one
made by a user through the agent, which sees the rows both may read
(access/compiler.py intersects the two bitmaps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..domain.names import Held, check_id, check_tenant, expiry
from ..errors import PolicyError, UnknownSubjectError
from .changes import edge_change
from .changes import need_role as _need_role
from .model import AGENT_PREFIX, TenantPolicy
from .principals import listing, require_future
from .records import Change, Edge


def agent_id(agent: object) -> str:
    """An agent id as an administrator gives it: a name that does not start like a principal."""
    return check_id("agent", agent, PolicyError)


class AgentPolicy:
    """The agent half of :class:`~permrag.policy.Policy` (mixed in; it owns ``_one``, ``refresh``, ``tenant``, ``clock``)."""

    _one: Callable[..., bool]
    refresh: Callable[[], Any]
    tenant: Callable[[str], TenantPolicy]
    clock: Callable[[], float]

    def assign_agent(self, agent: str, role: str, tenant: str = "default", *, expires_at: object = None) -> bool:
        """Give agent ``agent`` ``role`` (until ``expires_at`` if given); False if it already holds it."""
        agent, tenant = agent_id(agent), check_tenant(tenant, PolicyError)
        until = require_future(expiry(expires_at, "expires_at", PolicyError), self.clock(), "expires_at")

        def make(tp: TenantPolicy) -> Change | None:
            _need_role(tp, role, tenant)
            key = ("g", AGENT_PREFIX + agent, role)
            held = role in tp.agent_roles.get(agent, ())
            if held and tp.expires.get(key) == until:
                return None
            if not held:
                tp.check_assign(AGENT_PREFIX + agent, role)
            return edge_change(tenant, key, held, until, set(), set())

        return self._one(tenant, make)

    def unassign_agent(self, agent: str, role: str, tenant: str = "default") -> None:
        """Take ``role`` away from agent ``agent``."""
        agent, tenant = agent_id(agent), check_tenant(tenant, PolicyError)

        def make(tp: TenantPolicy) -> Change:
            if role not in tp.agent_roles.get(agent, ()):
                raise UnknownSubjectError(f"agent {agent!r} does not hold role {role!r} in tenant {tenant!r}")
            return Change.of("unassign_agent", {tenant}, [Edge(False, tenant, AGENT_PREFIX + agent, role)], set(), set())

        self._one(tenant, make)

    def agents(self, tenant: str = "default") -> list[str]:
        """Agents with at least one role or group membership in ``tenant``."""
        self.refresh()
        return sorted(self.tenant(tenant).agents())

    def roles_of_agent(self, agent: str, tenant: str = "default", *, implicit: bool = False) -> list[Held]:
        """The roles agent ``agent`` holds now (assigned, each with its ``expires_at``; with ``implicit`` also through groups and inheritance)."""
        self.refresh()
        tp, now = self.tenant(tenant), self.clock()
        roles = tp.roles_of_user(agent, implicit=implicit, now=now, agent=True)
        return listing(((r, ("g", AGENT_PREFIX + agent, r)) for r in roles), tp, now)
