"""One tenant's policy in memory: roles, their rules, role inheritance and
user assignments, kept as separate namespaces.

A *role* holds allow and deny rules and may inherit other roles (casbin
``g, role, parent``). A *user* holds roles only through assignments
(``g, user:<id>, role``): a user whose id equals a role's name holds nothing
by that, and a role is never a user. A user's roles are its assigned roles
and everything they inherit.

Chains are bounded: casbin's role manager (``max_hierarchy_level=10``) finds
a role at most 9 links above a user (measured: a 10-link chain enforces
False), so no change may make a user → … → role chain longer than
:data:`MAX_DEPTH` links, or casbin and the compiled bitmaps would disagree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sqlalchemy.engine import Connection

from ..errors import RoleCycleError

MAX_DEPTH = 9
USER_PREFIX = "user:"  # how a user is written as a casbin subject


def _graph() -> defaultdict[str, set[str]]:
    return defaultdict(set)


def _reach(edges: dict[str, set[str]], start: str) -> set[str]:
    """``start`` and everything reachable from it along ``edges``."""
    seen = {start}
    stack = [start]
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


@dataclass
class TenantPolicy:
    """One tenant's roles, rules, role hierarchy and user assignments."""

    roles: set[str] = field(default_factory=set)
    allow: dict[str, set[str]] = field(default_factory=_graph)  # role → selectors
    deny: dict[str, set[str]] = field(default_factory=_graph)
    parents: dict[str, set[str]] = field(default_factory=_graph)  # role → roles it inherits
    children: dict[str, set[str]] = field(default_factory=_graph)  # role → roles inheriting it
    user_roles: dict[str, set[str]] = field(default_factory=_graph)  # user → roles assigned
    role_users: dict[str, set[str]] = field(default_factory=_graph)  # role → users assigned to it

    def copy(self) -> "TenantPolicy":
        def dup(d: dict[str, set[str]]) -> defaultdict[str, set[str]]:
            out = _graph()
            for k, v in d.items():
                if v:
                    out[k] = set(v)
            return out

        return TenantPolicy(
            set(self.roles), dup(self.allow), dup(self.deny), dup(self.parents), dup(self.children), dup(self.user_roles), dup(self.role_users)
        )

    # ------------------------------------------------------------------ reading
    def inherited(self, role: str) -> set[str]:
        """``role`` and every role it inherits, transitively."""
        return _reach(self.parents, role)

    def roles_of_user(self, user: str, *, implicit: bool = True) -> set[str]:
        """The roles ``user`` holds: assigned ones, and (implicit) what they inherit."""
        direct = self.user_roles.get(user, set())
        if not implicit:
            return set(direct)
        out: set[str] = set()
        for r in direct:
            out |= self.inherited(r)
        return out

    def heirs(self, role: str) -> set[str]:
        """``role`` and every role that inherits it, transitively."""
        return _reach(self.children, role)

    def holders(self, role: str) -> tuple[set[str], set[str]]:
        """(roles, users) whose visibility ``role``'s rules reach: its heirs and their users."""
        roles = self.heirs(role)
        users: set[str] = set()
        for r in roles:
            users |= self.role_users.get(r, set())
        return roles, users

    def users(self) -> set[str]:
        """Users with at least one assignment."""
        return {u for u, rs in self.user_roles.items() if rs}

    def rules(self) -> Iterator[tuple[str, str, str]]:
        """(role, selector, effect) for every rule, sorted."""
        for role in sorted(self.allow):
            for sel in sorted(self.allow[role]):
                yield role, sel, "allow"
        for role in sorted(self.deny):
            for sel in sorted(self.deny[role]):
                yield role, sel, "deny"

    # ------------------------------------------------------------------ depth and cycles
    def _up(self, role: str, memo: dict[str, int]) -> int:
        """Most links from ``role`` up to a role that inherits nothing."""
        if role not in memo:
            memo[role] = 0  # cycles cannot be stored; this only guards recursion
            memo[role] = max((1 + self._up(p, memo) for p in self.parents.get(role, ())), default=0)
        return memo[role]

    def _down(self, role: str, memo: dict[str, int]) -> int:
        """Most links from ``role`` down to a user (or a role nobody holds)."""
        if role not in memo:
            memo[role] = 0
            below = [1 + self._down(c, memo) for c in self.children.get(role, ())]
            if self.role_users.get(role):
                below.append(1)
            memo[role] = max(below, default=0)
        return memo[role]

    def check_inherit(self, role: str, parent: str) -> None:
        """Raise if ``role`` inheriting ``parent`` makes a cycle or too long a chain."""
        if role == parent or role in self.inherited(parent):
            raise RoleCycleError(f"role {role!r} inheriting {parent!r} would make a role cycle")
        depth = self._down(role, {}) + 1 + self._up(parent, {})
        if depth > MAX_DEPTH:
            raise RoleCycleError(
                f"role {role!r} inheriting {parent!r} makes a chain of {depth} links, too deep (at most {MAX_DEPTH}, casbin's reach)"
            )

    def check_assign(self, user: str, role: str) -> None:
        """Raise if assigning ``role`` to ``user`` makes too long a chain."""
        depth = 1 + self._up(role, {})
        if depth > MAX_DEPTH:
            raise RoleCycleError(
                f"assigning {role!r} to {user!r} makes a chain of {depth} links, too deep (at most {MAX_DEPTH}, casbin's reach)"
            )

    # ------------------------------------------------------------------ changes (validated by the caller)
    def add_inherit(self, role: str, parent: str) -> None:
        self.parents[role].add(parent)
        self.children[parent].add(role)

    def remove_inherit(self, role: str, parent: str) -> None:
        self.parents[role].discard(parent)
        self.children[parent].discard(role)

    def add_user(self, user: str, role: str) -> None:
        self.user_roles[user].add(role)
        self.role_users[role].add(user)

    def remove_user(self, user: str, role: str) -> None:
        self.user_roles[user].discard(role)
        self.role_users[role].discard(user)

    def drop_role(self, role: str) -> None:
        self.roles.discard(role)
        self.allow.pop(role, None)
        self.deny.pop(role, None)
        for child in list(self.children.get(role, ())):
            self.remove_inherit(child, role)
        for parent in list(self.parents.get(role, ())):
            self.remove_inherit(role, parent)
        for user in list(self.role_users.get(role, ())):
            self.remove_user(user, role)
        for d in (self.children, self.parents, self.role_users):
            d.pop(role, None)


@dataclass
class Change:
    """A validated change: its SQL, its in-memory effect, and whom it touches."""

    write: Callable[[Connection], None]
    apply: Callable[[dict[str, TenantPolicy]], None]
    tenants: set[str]
    roles: set[str] | None = field(default_factory=set)  # None: everything in `tenants`
    users: set[str] | None = field(default_factory=set)


