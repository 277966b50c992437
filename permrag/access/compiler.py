"""Policy + catalog → roaring bitmaps, cached and updated incrementally.

Caches, each per tenant, each filled lazily:

* selector → rows it selects (from the catalog's inverted index);
* role → (allow, deny): unions of the role's own rules' selector bitmaps;
* ACLs (access/acls.py) → principal → rows its document and folder ACL
  entries allow and deny;
* user (or role) → visible rows: ``(∪ allow of its roles ∪ ACL allow of its
  principals) − (∪ deny of its roles ∪ ACL deny of its principals)``, then
  derived rows added back iff all their sources are visible. A user's roles
  come through assignments, its groups (nested) and inheritance; its
  principals are ``user:<id>``, each ``group:<g>`` it is in, each
  ``role:<r>`` it holds. A deny — of a rule or of an ACL — always wins.
  A user the identity provider deactivated sees nothing.
* agent → visible rows, the same way from ``agent:<id>`` (policy/agents.py);
  (user, agents) → the user's rows ∩ each agent's: a delegated request's
  bitmap, one intersection, kept while both inputs are the very bitmaps it
  was made from (so a plan cached for it stays valid, search/searcher.py).

Expiring grants, assignments, memberships and ACL entries are read at the
compiler's clock: each tenant's caches hold until the first expiry after
they were filled, and the first lookup at or after it drops them, so an
expiry takes effect at the next query in every process without a cron.

A policy change drops the role entries it touched and the cached users and
roles that hold them (the versioned policy reports exactly those). An ingest
drops only the selectors whose attribute (or doc id) the new rows carry, the
roles that use them and their holders; new derived rows are patched into the
cached users. So a revoke costs a few set operations, and the next
``visible()`` recomputes one user from cached role bitmaps.

Every cache is read and filled under the state lock shared with the policy
and the catalog, and every change invalidates under that same lock, so a
bitmap and the versions it is reported with always belong together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pyroaring import BitMap, FrozenBitMap

from ..catalog import Catalog, Change
from ..policy import Policy, TenantPolicy, parse_selector
from ..policy.model import AGENT_PREFIX, GROUP_PREFIX, ROLE_PREFIX, USER_PREFIX
from .acls import TenantAcls

log = logging.getLogger(__name__)

EMPTY = FrozenBitMap()
MAX_PAIRS = 4096  # (user, agents) intersections kept per tenant


def _wall() -> float:
    return time.time()  # looked up at each call, so a patched time.time (freezegun, tests) is seen


@dataclass(frozen=True)
class Snapshot:
    """One request's view: versions, the caller's bitmap and the tenant's rows."""

    tenant: str
    policy_version: int
    catalog_version: int
    visible: FrozenBitMap
    tenant_rows: FrozenBitMap
    classes: Mapping[int, FrozenBitMap]
    agents: tuple[str, ...] = ()  # a delegated request: the agents acting for the user (visible = user ∩ every agent)


class Compiler:
    """Computes and caches visible bitmaps for one catalog and policy."""

    def __init__(self, catalog: Catalog, policy: Policy, lock: threading.RLock, clock: Callable[[], float] | None = None, *, listen: bool = True) -> None:
        self.catalog = catalog
        self.policy = policy
        self.lock = lock
        self.clock = clock or _wall
        self._acls: dict[str, TenantAcls] = {}
        self._group: dict[str, dict[str, tuple[frozenset[str], FrozenBitMap, FrozenBitMap]]] = defaultdict(dict)
        self._until: dict[str, float | None] = {}  # tenant → when its caches expire (None: never)
        self._sel: dict[str, dict[str, FrozenBitMap]] = defaultdict(dict)
        self._role: dict[str, dict[str, tuple[FrozenBitMap, FrozenBitMap]]] = defaultdict(dict)
        self._user: dict[str, dict[str, FrozenBitMap]] = defaultdict(dict)
        self._role_view: dict[str, dict[str, FrozenBitMap]] = defaultdict(dict)
        self._agent: dict[str, dict[str, FrozenBitMap]] = defaultdict(dict)
        self._pair: dict[str, dict[tuple[str, tuple[str, ...]], tuple[tuple[FrozenBitMap, ...], FrozenBitMap]]] = defaultdict(dict)
        self.stats = {"user_hits": 0, "user_misses": 0, "role_builds": 0, "selector_builds": 0}
        if listen:  # a compiler for one question (:meth:`at`) is not kept up to date
            policy.subscribe(self.on_policy_change)
            catalog.subscribe(self.on_catalog_change)

    def at(self, moment: float) -> Compiler:
        """A compiler of the same policy and catalog whose clock reads ``moment``:
        answers as they will be then, if nothing changes (when access ends).
        Use it under the state lock and drop it: it does not follow changes."""
        return Compiler(self.catalog, self.policy, self.lock, lambda: moment, listen=False)

    # ------------------------------------------------------------------ lookups
    def visible(self, user: str, tenant: str) -> FrozenBitMap:
        """Rows *user* ``user`` may read in ``tenant`` (empty for unknown users)."""
        with self.lock:
            now = self._fresh(tenant)
            cached = self._user[tenant].get(user)
            if cached is not None:
                self.stats["user_hits"] += 1
                return cached
            self.stats["user_misses"] += 1
            tp = self.policy.tenant(tenant)
            if user in tp.inactive:  # deactivated by the identity provider: every edge and ACL entry masked
                self._user[tenant][user] = EMPTY
                return EMPTY
            bm = self._principal_view(tp, tenant, USER_PREFIX + user, tp.user_roles.get(user, ()), now)
            self._user[tenant][user] = bm
            return bm

    def agent_visible(self, agent: str, tenant: str) -> FrozenBitMap:
        """Rows *agent* ``agent`` may read in ``tenant`` (empty for unknown agents)."""
        with self.lock:
            now = self._fresh(tenant)
            cached = self._agent[tenant].get(agent)
            if cached is None:
                tp = self.policy.tenant(tenant)
                cached = self._principal_view(tp, tenant, AGENT_PREFIX + agent, tp.agent_roles.get(agent, ()), now)
                self._agent[tenant][agent] = cached
            return cached

    def delegated(self, user: str, agents: tuple[str, ...], tenant: str) -> FrozenBitMap:
        """Rows ``user`` may read through ``agents``: the user's bitmap ∩ every agent's."""
        with self.lock:
            parts = (self.visible(user, tenant), *(self.agent_visible(a, tenant) for a in agents))
            if not agents:
                return parts[0]
            hit = self._pair[tenant].get((user, agents))
            if hit is not None and all(x is y for x, y in zip(hit[0], parts)):
                return hit[1]
            out = parts[0]
            for bm in parts[1:]:
                out = out & bm
            # the common case, an agent that may read all the user may: the user's very bitmap, so the
            # delegated request shares its plan and its rows read back (both cached per bitmap)
            out = next((bm for bm in parts if len(bm) == len(out) and bm == out), out) if out else EMPTY
            if len(self._pair[tenant]) >= MAX_PAIRS:
                self._pair[tenant].clear()
            self._pair[tenant][(user, agents)] = (parts, out)
            return out

    def _principal_view(self, tp: TenantPolicy, tenant: str, key: str, assigned: Iterable[str], now: float) -> FrozenBitMap:
        """The rows of ``key`` (``user:<id>`` or ``agent:<id>``): its groups', its ``assigned`` roles' (inherited) and its ACL entries'."""
        roles: set[str] = set()
        allows, denies = [], []
        for g in tp.member_of.get(key, ()):
            if tp.live(("g", key, GROUP_PREFIX + g), now):
                g_roles, g_allow, g_deny = self._group_view(tp, tenant, g, now)
                roles |= g_roles
                allows.append(g_allow)
                denies.append(g_deny)
        own: set[str] = set()
        for r in assigned:
            if tp.live(("g", key, r), now):
                own |= tp.inherited(r, now)
        a, d = self._acls[tenant].rows([key, *(ROLE_PREFIX + r for r in own - roles)])
        return self._compute(roles | own, [a, *allows], [d, *denies], tenant)

    def role_visible(self, role: str, tenant: str) -> FrozenBitMap:
        """Rows a holder of *role* ``role`` alone may read (empty for unknown roles)."""
        with self.lock:
            now = self._fresh(tenant)
            cached = self._role_view[tenant].get(role)
            if cached is None:
                tp = self.policy.tenant(tenant)
                roles = tp.inherited(role, now) if role in tp.roles else set()
                a, d = self._acls[tenant].rows(ROLE_PREFIX + r for r in roles)
                cached = self._compute(roles, [a], [d], tenant)
                self._role_view[tenant][role] = cached
            return cached

    def group_visible(self, group: str, tenant: str) -> FrozenBitMap:
        """Rows a member of ``group`` alone (no other group, role or ACL entry) may read."""
        with self.lock:
            now = self._fresh(tenant)
            roles, allow, deny = self._group_view(self.policy.tenant(tenant), tenant, group, now)
            return self._compute(set(roles), [allow], [deny], tenant)

    def _group_view(self, tp: TenantPolicy, tenant: str, group: str, now: float) -> tuple[frozenset[str], FrozenBitMap, FrozenBitMap]:
        """What membership of ``group`` brings: its roles (through parent groups,
        inherited) and the rows ACL entries naming it, its parents or those
        roles allow and deny. Cached per group: a user's compile is then a union
        of its few direct groups' bitmaps (bench_identity: 100k users in
        nested groups)."""
        cached = self._group[tenant].get(group)
        if cached is not None:
            return cached
        groups = {group} | tp.groups_of(GROUP_PREFIX + group, now)
        roles: set[str] = set()
        for g in groups:
            for r in tp.group_roles.get(g, ()):
                if tp.live(("g", GROUP_PREFIX + g, r), now):
                    roles |= tp.inherited(r, now)
        allow, deny = self._acls[tenant].rows([*(GROUP_PREFIX + g for g in groups), *(ROLE_PREFIX + r for r in roles)])
        view = (frozenset(roles), FrozenBitMap(allow), FrozenBitMap(deny))
        self._group[tenant][group] = view
        return view

    def acls(self, tenant: str) -> TenantAcls:
        """The tenant's ACL bitmaps at the compiler's clock."""
        with self.lock:
            self._fresh(tenant)
            return self._acls[tenant]

    def _fresh(self, tenant: str) -> float:
        """The clock's reading, after dropping the tenant's caches if an expiry has passed."""
        now = self.clock()
        if tenant in self._until:
            until = self._until[tenant]
            if until is None or now < until:
                return now
            self._drop_tenant(tenant)
        acls = self._acls.get(tenant)
        if acls is not None and ((acls.until is not None and acls.until <= now) or acls.stale(self.policy.tenant(tenant))):
            self._drop_tenant(tenant)  # an entry expired, or a deny by label now names other ids (a rename)
            acls = None
        if acls is None:
            acls = self._acls[tenant] = TenantAcls.build(self.catalog.tenant(tenant), self.policy.tenant(tenant), now)
        times = [t for t in (self.policy.tenant(tenant).next_expiry(now), acls.until) if t is not None]
        self._until[tenant] = min(times, default=None)
        return now

    def snapshot(self, user: str, tenant: str, agents: tuple[str, ...] = ()) -> Snapshot:
        """The caller's bitmap (with ``agents``: the delegated one) with the versions it belongs to, taken atomically."""
        with self.lock:
            idx = self.catalog.tenant(tenant)
            return Snapshot(tenant, self.policy.version, self.catalog.version, self.delegated(user, agents, tenant), idx.rows, idx.classes, agents)

    def selector_rows(self, selector: str, tenant: str) -> FrozenBitMap:
        """Rows of ``tenant`` that ``selector`` selects."""
        with self.lock:
            cached = self._sel[tenant].get(selector)
            if cached is not None:
                return cached
            sel = parse_selector(selector)
            idx = self.catalog.tenant(tenant)
            if sel.kind == "all":
                bm = idx.rows
            elif sel.kind == "doc":
                bm = FrozenBitMap(self.catalog.rows.doc_rows(tenant, sel.value) & idx.rows)
            elif not sel.is_glob:
                bm = idx.values(sel.attr).get(sel.value, EMPTY)
            else:
                bm = FrozenBitMap(BitMap.union(BitMap(), *(b for v, b in idx.values(sel.attr).items() if sel.matches_value(v))))
            self.stats["selector_builds"] += 1
            self._sel[tenant][selector] = bm
            return bm

    def role_rows(self, role: str, tenant: str) -> tuple[FrozenBitMap, FrozenBitMap]:
        """(allow, deny) bitmaps of ``role``'s own rules."""
        with self.lock:
            cached = self._role[tenant].get(role)
            if cached is not None:
                return cached
            tp = self.policy.tenant(tenant)
            now = self.clock()
            allow = BitMap.union(BitMap(), *(self.selector_rows(s, tenant) for s in tp.selectors(role, "allow", now)))
            deny = BitMap.union(BitMap(), *(self.selector_rows(s, tenant) for s in tp.selectors(role, "deny", now)))
            allow.run_optimize()
            deny.run_optimize()
            self.stats["role_builds"] += 1
            pair = (FrozenBitMap(allow), FrozenBitMap(deny))
            self._role[tenant][role] = pair
            return pair

    def compile_groups(self, tenant: str) -> int:
        """Build every group's view (roles and ACL bitmaps through its parents) of
        ``tenant``; a user's first lookup is then a union of its direct groups'. Returns how many."""
        with self.lock:
            now = self._fresh(tenant)
            tp = self.policy.tenant(tenant)
            groups = tp.groups()
            for g in groups:
                self._group_view(tp, tenant, g, now)
            return len(groups)

    def compile_all(self, tenants: Iterable[str] | None = None) -> int:
        """Compile every known user of ``tenants`` (all by default); returns how many."""
        n = 0
        with self.lock:
            for tenant in tenants if tenants is not None else self.policy.tenants():
                for user in self.policy.tenant(tenant).users():
                    self.visible(user, tenant)
                    n += 1
        return n

    def _compute(self, roles: set[str], acl_allow: list[BitMap | FrozenBitMap], acl_deny: list[BitMap | FrozenBitMap], tenant: str) -> FrozenBitMap:
        """``(∪ role allows ∪ acl_allow) − (∪ role denies ∪ acl_deny)``, then derived rows."""
        pairs = [self.role_rows(r, tenant) for r in roles]
        allows = [a for a in acl_allow if a] + [a for a, _ in pairs if a]
        if not allows:
            return EMPTY
        denies = [d for d in acl_deny if d] + [d for _, d in pairs if d]
        # Frozen set operations: no copy into a mutable bitmap and back (ACL
        # users' rows are scattered, a union of their groups' bitmaps is the
        # whole cost: bench_identity). Rule bitmaps are runs: optimise those.
        out = allows[0] if len(allows) == 1 else FrozenBitMap.union(*allows)
        if denies:
            out = out - (denies[0] if len(denies) == 1 else FrozenBitMap.union(*denies))
        idx = self.catalog.tenant(tenant)
        if idx.derived:
            allow = BitMap(out)
            allow -= idx.derived_all
            for rid, sources in idx.derived.items():  # sources come before their derived rows
                if all(s in allow for s in sources):
                    allow.add(rid)
            out = FrozenBitMap(allow)
        if pairs:
            out = FrozenBitMap(out, optimize=True)
        elif isinstance(out, BitMap):
            out = FrozenBitMap(out)  # one ACL bitmap alone: frozen as on every other path
        return out if out else EMPTY

    # ------------------------------------------------------------------ invalidation
    def on_policy_change(self, tenant: str | None, roles: set[str] | None, users: set[str] | None) -> None:
        with self.lock:
            if tenant is None:
                self.clear()
                return
            self._until.pop(tenant, None)  # the change may add or remove an expiry
            self._group.pop(tenant, None)  # rebuilt lazily, a few per lookup
            self._agent.pop(tenant, None)  # agents are few: every change drops theirs
            if roles is None or users is None:
                self._drop_tenant(tenant)
                return
            for r in roles:
                self._role[tenant].pop(r, None)
            for u in users:
                self._user[tenant].pop(u, None)
            self._role_view[tenant].clear()

    def on_catalog_change(self, changes: list[Change] | None, retired: set[str] | None) -> None:
        with self.lock:
            if changes is None:
                self.clear()
                return
            for tenant in retired or ():
                self._drop_tenant(tenant)  # a delete or replace: that tenant only
            for ch in changes:
                if ch.tenant not in (retired or ()):
                    self._apply_ingest(ch)

    def _apply_ingest(self, ch: Change) -> None:
        t = ch.tenant
        self._until.pop(t, None)
        self._acls.pop(t, None)
        self._group.pop(t, None)
        self._agent.pop(t, None)
        if any(a.startswith("@") for a in ch.attrs):
            self._drop_tenant(t)  # new ACL entries: whose principals they name is not worth tracking
            return
        stale = set()
        for text in self._sel[t]:
            sel = parse_selector(text)
            if sel.kind == "all" or (sel.kind == "doc" and sel.value in ch.docs) or (sel.kind == "attr" and sel.attr in ch.attrs):
                stale.add(text)
        for text in stale:
            del self._sel[t][text]
        tp: TenantPolicy = self.policy.tenant(t)
        stale_roles = {r for rules in (tp.allow, tp.deny) for r, sels in rules.items() if sels & stale}
        stale_users: set[str] = set()
        for r in stale_roles:
            self._role[t].pop(r, None)
            stale_users |= tp.holders(r)[1]
        for u in stale_users:
            self._user[t].pop(u, None)
        self._role_view[t].clear()
        if ch.derived:
            derived = self.catalog.tenant(t).derived
            for user, bm in list(self._user[t].items()):
                if user in tp.inactive:
                    continue
                patched = BitMap(bm)
                for rid in ch.derived:
                    if all(s in patched for s in derived[rid]):
                        patched.add(rid)
                if len(patched) != len(bm):
                    self._user[t][user] = FrozenBitMap(patched)

    def _drop_tenant(self, tenant: str) -> None:
        for cache in (self._sel, self._role, self._user, self._role_view, self._acls, self._until, self._group, self._agent, self._pair):
            cache.pop(tenant, None)

    def clear(self) -> None:
        with self.lock:
            for cache in (self._sel, self._role, self._user, self._role_view, self._acls, self._until, self._group, self._agent, self._pair):
                cache.clear()
