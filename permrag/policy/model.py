"""One tenant's policy in memory: roles, their rules, role inheritance,
user assignments, groups and folder ACLs, kept as separate namespaces.

A *role* holds allow and deny rules and may inherit other roles (casbin
``g, role, parent``). A *user* holds roles only through assignments
(``g, user:<id>, role``) or through the *groups* it is a member of
(``g, user:<id>, group:<g>``; groups nest: ``g, group:<a>, group:<b>``; a
group holds roles: ``g, group:<g>, role``). A user whose id equals a role's
or a group's name holds nothing by that: the three are separate namespaces.
A user's roles are its assigned roles, its groups' roles, and everything
they inherit.

Every assignment, membership, inheritance and rule may carry an expiry
(``expires``, epoch seconds): from that instant it counts as absent. Every
reading method takes ``now``; there is no cron: the compiler recomputes at
the next expiry (access/compiler.py).

Chains are bounded: casbin's role manager (``max_hierarchy_level=10``) finds
a role at most 9 links above a user (measured: a 10-link chain enforces
False), so no change may make a user → … → role chain (through groups or
roles) longer than :data:`MAX_DEPTH` links, or casbin and the compiled
bitmaps would disagree. Group chains obey the same bound.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

from ..errors import AmbiguousNameError, RoleCycleError

MAX_DEPTH = 9
USER_PREFIX = "user:"  # how a user is written as a casbin subject
GROUP_PREFIX = "group:"
ROLE_PREFIX = "role:"
AGENT_PREFIX = "agent:"  # an agent (acting for users) is a principal of its own kind: never a user, group or role


def edge_parts(subject: str, target: str) -> tuple[str, str, str]:
    """What a stored ``g`` edge is, as the :class:`TenantPolicy` methods that
    hold it (``add_<kind>`` / ``remove_<kind>``) and their arguments:
    ``member`` (member, group), ``user`` (user, role), ``agent`` (agent, role),
    ``group_role`` (group, role) or ``inherit`` (role, parent)."""
    if target.startswith(GROUP_PREFIX):
        return "member", subject, target[len(GROUP_PREFIX) :]
    for prefix, kind in ((USER_PREFIX, "user"), (AGENT_PREFIX, "agent"), (GROUP_PREFIX, "group_role")):
        if subject.startswith(prefix):
            return kind, subject[len(prefix) :], target
    return "inherit", subject, target


def _graph() -> defaultdict[str, set[str]]:
    return defaultdict(set)


def _reach(edges: dict[str, set[str]], start: str, ok: Callable[[str, str], bool] | None = None) -> set[str]:
    """``start`` and everything reachable from it along ``edges`` (those ``ok`` keeps)."""
    seen = {start}
    stack = [start]
    while stack:
        here = stack.pop()
        for nxt in edges.get(here, ()):
            if nxt not in seen and (ok is None or ok(here, nxt)):
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _now(now: float | None) -> float:
    return time.time() if now is None else now


@dataclass
class Folder:
    """A folder's own ACL: principal → expiry (None: never), and whether it
    inherits its parent folder's ACL."""

    allow: dict[str, float | None] = field(default_factory=dict)
    deny: dict[str, float | None] = field(default_factory=dict)
    inherit: bool = True

    def copy(self) -> Folder:
        return Folder(dict(self.allow), dict(self.deny), self.inherit)

    def empty(self) -> bool:
        return not self.allow and not self.deny and self.inherit


def parent_folder(path: str) -> str | None:
    """``/a/b`` → ``/a`` → ``/`` → None."""
    if path == "/":
        return None
    head = path.rsplit("/", 1)[0]
    return head or "/"


@dataclass
class TenantPolicy:
    """One tenant's roles, rules, role hierarchy, assignments, groups and folder ACLs."""

    roles: set[str] = field(default_factory=set)
    allow: dict[str, set[str]] = field(default_factory=_graph)  # role → selectors
    deny: dict[str, set[str]] = field(default_factory=_graph)
    parents: dict[str, set[str]] = field(default_factory=_graph)  # role → roles it inherits
    children: dict[str, set[str]] = field(default_factory=_graph)  # role → roles inheriting it
    user_roles: dict[str, set[str]] = field(default_factory=_graph)  # user → roles assigned
    role_users: dict[str, set[str]] = field(default_factory=_graph)  # role → users assigned to it
    member_of: dict[str, set[str]] = field(default_factory=_graph)  # "user:<id>" / "group:<id>" → groups it is in
    members: dict[str, set[str]] = field(default_factory=_graph)  # group → "user:<id>" / "group:<id>" members
    group_roles: dict[str, set[str]] = field(default_factory=_graph)  # group → roles assigned to it
    role_groups: dict[str, set[str]] = field(default_factory=_graph)  # role → groups assigned it
    # ("g", subject as stored, object as stored) or ("p", role, selector, effect) → epoch seconds
    expires: dict[tuple[str, ...], float] = field(default_factory=dict)
    folders: dict[str, Folder] = field(default_factory=dict)
    # Identity-provider facts, keyed "user:<id>" / "group:<id>": the label
    # (userName / displayName) shown for the immutable id, and users the
    # provider deactivated (they hold nothing; their edges stay, masked).
    labels: dict[str, str] = field(default_factory=dict)
    inactive: set[str] = field(default_factory=set)
    agent_roles: dict[str, set[str]] = field(default_factory=_graph)  # agent → roles assigned (g, agent:<id>, role)
    role_agents: dict[str, set[str]] = field(default_factory=_graph)  # role → agents assigned it

    def copy(self) -> TenantPolicy:
        def dup(d: dict[str, set[str]]) -> defaultdict[str, set[str]]:
            out = _graph()
            for k, v in d.items():
                if v:
                    out[k] = set(v)
            return out

        return TenantPolicy(
            set(self.roles),
            dup(self.allow),
            dup(self.deny),
            dup(self.parents),
            dup(self.children),
            dup(self.user_roles),
            dup(self.role_users),
            dup(self.member_of),
            dup(self.members),
            dup(self.group_roles),
            dup(self.role_groups),
            dict(self.expires),
            {f: acl.copy() for f, acl in self.folders.items()},
            dict(self.labels),
            set(self.inactive),
            dup(self.agent_roles),
            dup(self.role_agents),
        )

    def empty(self) -> bool:
        """Nothing stored: no role, rule, edge, folder ACL, label or deactivation."""
        for f in fields(self):
            value = getattr(self, f.name)
            if any(value.values()) if isinstance(value, defaultdict) else value:
                return False
        return True

    def identity_only(self) -> TenantPolicy:
        """An empty policy that keeps the provider's labels and deactivations
        (a policy import that replaces everything must not reactivate anyone)."""
        return TenantPolicy(labels=dict(self.labels), inactive=set(self.inactive))

    # ------------------------------------------------------------------ identity
    def label(self, key: str) -> str | None:
        """The provider's label of ``user:<id>`` / ``group:<id>`` (None: none stored)."""
        return self.labels.get(key)

    def shown(self, key: str) -> str:
        """``key`` with its label, when it has one that differs from the id."""
        label = self.labels.get(key)
        ident = key.partition(":")[2]
        return key if label is None or label == ident else f"{key} ({label})"

    def matching(self, prefix: str, name: str) -> list[str]:
        """Ids of kind ``prefix`` whose id or label is ``name``: the id alone when it
        is one; else every id labelled ``name`` (several: ambiguous)."""
        if self.known(prefix + name):
            return [name]
        return sorted(k[len(prefix) :] for k, v in self.labels.items() if v == name and k.startswith(prefix))

    def resolve(self, prefix: str, name: str) -> str:
        """The id an administrator means by ``name`` (an id, or an unambiguous
        label of kind ``prefix``); an unknown name is returned as it is."""
        hits = self.matching(prefix, name)
        if len(hits) > 1:
            kind = prefix.rstrip(":")
            raise AmbiguousNameError(f"{kind} {name!r} is the label of {len(hits)} {kind}s: {', '.join(map(repr, hits))}; give the id")
        return hits[0] if hits else name

    def resolve_key(self, key: str) -> str:
        """``user:<id or label>`` / ``group:<id or label>`` → the same key by id."""
        if key.startswith(AGENT_PREFIX):
            return key  # agents have no labels
        prefix = GROUP_PREFIX if key.startswith(GROUP_PREFIX) else USER_PREFIX
        return prefix + self.resolve(prefix, key[len(prefix) :])

    def known(self, key: str) -> bool:
        """Whether ``user:<id>`` / ``group:<id>`` is stored anywhere as that id."""
        if key in self.labels or self.member_of.get(key):
            return True
        if key.startswith(GROUP_PREFIX):
            g = key[len(GROUP_PREFIX) :]
            return bool(self.members.get(g) or self.group_roles.get(g))
        if key.startswith(AGENT_PREFIX):
            return bool(self.agent_roles.get(key[len(AGENT_PREFIX) :]))
        return bool(self.user_roles.get(key[len(USER_PREFIX) :]))

    # ------------------------------------------------------------------ expiry
    def live(self, key: tuple[str, ...], now: float | None) -> bool:
        """Whether the edge or rule ``key`` has not expired at ``now``."""
        t = self.expires.get(key)
        return t is None or t > _now(now)

    def next_expiry(self, now: float) -> float | None:
        """The first expiry after ``now`` of anything in this policy (None: none)."""
        times = [t for t in self.expires.values() if t > now]
        for acl in self.folders.values():
            times += [t for t in (*acl.allow.values(), *acl.deny.values()) if t is not None and t > now]
        return min(times, default=None)

    # ------------------------------------------------------------------ reading
    def inherited(self, role: str, now: float | None = None) -> set[str]:
        """``role`` and every role it inherits, transitively."""
        t = _now(now)
        return _reach(self.parents, role, lambda r, p: self.live(("g", r, p), t))

    def groups_of(self, subject: str, now: float | None = None) -> set[str]:
        """Groups ``subject`` (``user:<id>`` or ``group:<id>``) is in, directly or through groups."""
        t = _now(now)
        out: set[str] = set()
        stack = [subject]
        while stack:
            here = stack.pop()
            for g in self.member_of.get(here, ()):
                if g not in out and self.live(("g", here, GROUP_PREFIX + g), t):
                    out.add(g)
                    stack.append(GROUP_PREFIX + g)
        return out

    def roles_of_user(self, user: str, *, implicit: bool = True, now: float | None = None, agent: bool = False) -> set[str]:
        """The roles ``user`` (with ``agent``: the agent of that id) holds: assigned
        ones (to it or, implicit, to its groups), and (implicit) what they inherit."""
        t = _now(now)
        key = (AGENT_PREFIX if agent else USER_PREFIX) + user
        direct = {r for r in (self.agent_roles if agent else self.user_roles).get(user, set()) if self.live(("g", key, r), t)}
        if not implicit:
            return direct
        for g in self.groups_of(key, t):
            direct |= {r for r in self.group_roles.get(g, ()) if self.live(("g", GROUP_PREFIX + g, r), t)}
        out: set[str] = set()
        for r in direct:
            out |= self.inherited(r, t)
        return out

    def principals(self, user: str, now: float | None = None) -> set[str]:
        """What ACL entries may name to reach ``user``: ``user:<id>``, its groups, its roles."""
        t = _now(now)
        key = USER_PREFIX + user
        return {key} | {GROUP_PREFIX + g for g in self.groups_of(key, t)} | {ROLE_PREFIX + r for r in self.roles_of_user(user, now=t)}

    def selectors(self, role: str, effect: str, now: float | None = None) -> set[str]:
        """The role's own allow or deny selectors that have not expired."""
        t = _now(now)
        rules = self.allow if effect == "allow" else self.deny
        return {s for s in rules.get(role, ()) if self.live(("p", role, s, effect), t)}

    def heirs(self, role: str) -> set[str]:
        """``role`` and every role that inherits it, transitively."""
        return _reach(self.children, role)

    def group_users(self, group: str) -> set[str]:
        """Users in ``group`` directly or through nested groups (expiry ignored: a superset)."""
        users: set[str] = set()
        for g in self._groups_below(group):
            users |= {m[len(USER_PREFIX) :] for m in self.members.get(g, ()) if m.startswith(USER_PREFIX)}
        return users

    def _groups_below(self, group: str) -> set[str]:
        out = {group}
        stack = [group]
        while stack:
            for m in self.members.get(stack.pop(), ()):
                if m.startswith(GROUP_PREFIX) and m[len(GROUP_PREFIX) :] not in out:
                    out.add(m[len(GROUP_PREFIX) :])
                    stack.append(m[len(GROUP_PREFIX) :])
        return out

    def holders(self, role: str) -> tuple[set[str], set[str]]:
        """(roles, users) whose visibility ``role``'s rules reach: its heirs,
        their users and their groups' users (ignoring expiry: a superset)."""
        roles = self.heirs(role)
        users: set[str] = set()
        for r in roles:
            users |= self.role_users.get(r, set())
            for g in self.role_groups.get(r, ()):
                users |= self.group_users(g)
        return roles, users

    def users(self) -> set[str]:
        """Users with at least one assignment or group membership."""
        out = {u for u, rs in self.user_roles.items() if rs}
        return out | {k[len(USER_PREFIX) :] for k, gs in self.member_of.items() if gs and k.startswith(USER_PREFIX)}

    def agents(self) -> set[str]:
        """Agents with at least one assignment or group membership."""
        out = {a for a, rs in self.agent_roles.items() if rs}
        return out | {k[len(AGENT_PREFIX) :] for k, gs in self.member_of.items() if gs and k.startswith(AGENT_PREFIX)}

    def groups(self) -> set[str]:
        """Groups with a member, a parent group or a role."""
        out = {g for g, ms in self.members.items() if ms} | {g for g, rs in self.group_roles.items() if rs}
        return out | {k[len(GROUP_PREFIX) :] for k, gs in self.member_of.items() if gs and k.startswith(GROUP_PREFIX)}

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

    def _up_group(self, group: str, memo: dict[str, int]) -> int:
        """Most links from ``group`` up through parent groups and roles."""
        key = GROUP_PREFIX + group
        if key not in memo:
            memo[key] = 0
            ups = [1 + self._up_group(p, memo) for p in self.member_of.get(key, ())]
            ups += [1 + self._up(r, memo) for r in self.group_roles.get(group, ())]
            memo[key] = max(ups, default=0)
        return memo[key]

    def _down_group(self, group: str, memo: dict[str, int]) -> int:
        """Most links from a user down below ``group`` up to it."""
        key = GROUP_PREFIX + group
        if key not in memo:
            memo[key] = 0
            below = [1 + self._down_group(m[len(GROUP_PREFIX) :], memo) if m.startswith(GROUP_PREFIX) else 1 for m in self.members.get(group, ())]
            memo[key] = max(below, default=0)
        return memo[key]

    def _down(self, role: str, memo: dict[str, int]) -> int:
        """Most links from ``role`` down to a user (or a role nobody holds)."""
        if role not in memo:
            memo[role] = 0
            below = [1 + self._down(c, memo) for c in self.children.get(role, ())]
            if self.role_users.get(role) or self.role_agents.get(role):
                below.append(1)
            below += [1 + self._down_group(g, memo) for g in self.role_groups.get(role, ())]
            memo[role] = max(below, default=0)
        return memo[role]

    def _too_deep(self, depth: int, what: str) -> None:
        if depth > MAX_DEPTH:
            raise RoleCycleError(f"{what} makes a chain of {depth} links, too deep (at most {MAX_DEPTH}, casbin's reach)")

    def check_inherit(self, role: str, parent: str) -> None:
        """Raise if ``role`` inheriting ``parent`` makes a cycle or too long a chain."""
        if role == parent or role in self.inherited(parent, 0.0):
            raise RoleCycleError(f"role {role!r} inheriting {parent!r} would make a role cycle")
        self._too_deep(self._down(role, {}) + 1 + self._up(parent, {}), f"role {role!r} inheriting {parent!r}")

    def check_assign(self, user: str, role: str) -> None:
        """Raise if assigning ``role`` to ``user`` makes too long a chain."""
        self._too_deep(1 + self._up(role, {}), f"assigning {role!r} to {user!r}")

    def check_group_role(self, group: str, role: str) -> None:
        self._too_deep(self._down_group(group, {}) + 1 + self._up(role, {}), f"assigning {role!r} to group {group!r}")

    def check_member(self, member: str, group: str) -> None:
        """Raise if putting ``member`` (``user:`` / ``group:`` key) in ``group`` makes a cycle or too long a chain."""
        if member == GROUP_PREFIX + group or (member.startswith(GROUP_PREFIX) and member[len(GROUP_PREFIX) :] in self.groups_of(GROUP_PREFIX + group, 0.0)):
            raise RoleCycleError(f"{member!r} in group {group!r} would make a group cycle")
        below = self._down_group(member[len(GROUP_PREFIX) :], {}) if member.startswith(GROUP_PREFIX) else 0
        self._too_deep(below + 1 + self._up_group(group, {}), f"{member!r} in group {group!r}")

    # ------------------------------------------------------------------ changes (validated by the caller)
    def add_inherit(self, role: str, parent: str) -> None:
        self.parents[role].add(parent)
        self.children[parent].add(role)

    def remove_inherit(self, role: str, parent: str) -> None:
        self.parents[role].discard(parent)
        self.children[parent].discard(role)
        self.expires.pop(("g", role, parent), None)

    def add_user(self, user: str, role: str) -> None:
        self.user_roles[user].add(role)
        self.role_users[role].add(user)

    def remove_user(self, user: str, role: str) -> None:
        self.user_roles[user].discard(role)
        self.role_users[role].discard(user)
        self.expires.pop(("g", USER_PREFIX + user, role), None)

    def add_agent(self, agent: str, role: str) -> None:
        self.agent_roles[agent].add(role)
        self.role_agents[role].add(agent)

    def remove_agent(self, agent: str, role: str) -> None:
        self.agent_roles[agent].discard(role)
        self.role_agents[role].discard(agent)
        self.expires.pop(("g", AGENT_PREFIX + agent, role), None)

    def add_member(self, member: str, group: str) -> None:
        self.member_of[member].add(group)
        self.members[group].add(member)

    def remove_member(self, member: str, group: str) -> None:
        self.member_of[member].discard(group)
        self.members[group].discard(member)
        self.expires.pop(("g", member, GROUP_PREFIX + group), None)

    def add_group_role(self, group: str, role: str) -> None:
        self.group_roles[group].add(role)
        self.role_groups[role].add(group)

    def remove_group_role(self, group: str, role: str) -> None:
        self.group_roles[group].discard(role)
        self.role_groups[role].discard(group)
        self.expires.pop(("g", GROUP_PREFIX + group, role), None)

    def drop_role(self, role: str) -> None:
        self.roles.discard(role)
        for eft in ("allow", "deny"):
            for sel in (self.allow if eft == "allow" else self.deny).get(role, ()):
                self.expires.pop(("p", role, sel, eft), None)
        self.allow.pop(role, None)
        self.deny.pop(role, None)
        for child in list(self.children.get(role, ())):
            self.remove_inherit(child, role)
        for parent in list(self.parents.get(role, ())):
            self.remove_inherit(role, parent)
        for user in list(self.role_users.get(role, ())):
            self.remove_user(user, role)
        for group in list(self.role_groups.get(role, ())):
            self.remove_group_role(group, role)
        for agent in list(self.role_agents.get(role, ())):
            self.remove_agent(agent, role)
        for d in (self.children, self.parents, self.role_users, self.role_groups, self.role_agents):
            d.pop(role, None)
