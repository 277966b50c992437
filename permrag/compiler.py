"""Policy + catalog → roaring bitmaps, cached and updated incrementally.

Three caches, each per tenant, each filled lazily:

* selector → rows it selects (from the catalog's inverted index);
* role → (allow, deny): unions of the role's own rules' selector bitmaps;
* subject → visible rows: ``(∪ allow of implicit roles) − (∪ deny of implicit
  roles)``, then derived rows added back iff all their sources are visible.

A policy change drops the role entry it touched and the cached users that hold
that role (the policy store reports exactly those subjects). An ingest drops
only the selectors whose attribute (or doc id) the new rows carry, the roles
that use them and those roles' users; new derived rows are patched into the
cached users without a recompute. So a revoke costs a few set operations, and
the next ``visible()`` recomputes one user from cached role bitmaps.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Iterable

from pyroaring import BitMap, FrozenBitMap

from .catalog import Catalog, Change
from .policy import Policy, TenantPolicy
from .selectors import parse_selector

log = logging.getLogger(__name__)

EMPTY = FrozenBitMap()


class Compiler:
    """Computes and caches visible bitmaps for one catalog and policy."""

    def __init__(self, catalog: Catalog, policy: Policy) -> None:
        self.catalog = catalog
        self.policy = policy
        self._sel: dict[str, dict[str, BitMap]] = defaultdict(dict)
        self._role: dict[str, dict[str, tuple[BitMap, BitMap]]] = defaultdict(dict)
        self._user: dict[str, dict[str, FrozenBitMap]] = defaultdict(dict)
        self._lock = threading.RLock()
        self.stats = {"user_hits": 0, "user_misses": 0, "role_builds": 0, "selector_builds": 0}
        policy.subscribe(self.on_policy_change)

    # ------------------------------------------------------------------ lookups
    def visible(self, user: str, tenant: str) -> FrozenBitMap:
        """Rows ``user`` may read in ``tenant`` (empty for unknown users)."""
        cached = self._user[tenant].get(user)
        if cached is not None:
            self.stats["user_hits"] += 1
            return cached
        with self._lock:
            self.stats["user_misses"] += 1
            bm = self._compute_user(user, tenant)
            self._user[tenant][user] = bm
            return bm

    def selector_rows(self, selector: str, tenant: str) -> BitMap:
        """Rows of ``tenant`` that ``selector`` selects."""
        cached = self._sel[tenant].get(selector)
        if cached is not None:
            return cached
        with self._lock:
            sel = parse_selector(selector)
            if sel.kind == "all":
                bm = BitMap(self.catalog.tenant_rows(tenant))
            elif sel.kind == "doc":
                bm = self.catalog.doc_rows(tenant, sel.value)
            elif not sel.is_glob:
                bm = BitMap(self.catalog.attr_values(tenant, sel.attr).get(sel.value, ()))
            else:
                values = self.catalog.attr_values(tenant, sel.attr)
                bm = BitMap.union(BitMap(), *(b for v, b in values.items() if sel.matches_value(v)))
            self.stats["selector_builds"] += 1
            self._sel[tenant][selector] = bm
            return bm

    def role_rows(self, role: str, tenant: str) -> tuple[BitMap, BitMap]:
        """(allow, deny) bitmaps of ``role``'s own rules."""
        cached = self._role[tenant].get(role)
        if cached is not None:
            return cached
        with self._lock:
            tp = self.policy.tenant(tenant)
            allow = BitMap.union(BitMap(), *(self.selector_rows(s, tenant) for s in tp.allow.get(role, ())))
            deny = BitMap.union(BitMap(), *(self.selector_rows(s, tenant) for s in tp.deny.get(role, ())))
            allow.run_optimize()
            deny.run_optimize()
            self.stats["role_builds"] += 1
            self._role[tenant][role] = (allow, deny)
            return allow, deny

    def compile_all(self, tenants: Iterable[str] | None = None) -> int:
        """Compile every known user of ``tenants`` (all by default); returns how many."""
        n = 0
        for tenant in tenants if tenants is not None else self.policy.tenants():
            for user in self.policy.tenant(tenant).users():
                self.visible(user, tenant)
                n += 1
        return n

    def _compute_user(self, user: str, tenant: str) -> FrozenBitMap:
        tp = self.policy.tenant(tenant)
        roles = _roles_of(tp, user)
        if not roles:
            return EMPTY
        pairs = [self.role_rows(r, tenant) for r in roles]
        allow = BitMap.union(BitMap(), *(a for a, _ in pairs))
        deny = BitMap.union(BitMap(), *(d for _, d in pairs))
        allow -= deny
        idx = self.catalog.tenant(tenant)
        if idx.derived:
            allow -= idx.derived_all
            for rid, sources in idx.derived.items():  # sources come before their derived rows
                if all(s in allow for s in sources):
                    allow.add(rid)
        allow.run_optimize()
        return FrozenBitMap(allow)

    # ------------------------------------------------------------------ invalidation
    def on_policy_change(self, tenant: str | None, affected: set[str] | None) -> None:
        with self._lock:
            if tenant is None or affected is None:
                self.clear()
                return
            roles = self._role[tenant]
            users = self._user[tenant]
            for s in affected:
                roles.pop(s, None)
                users.pop(s, None)

    def on_ingest(self, changes: Iterable[Change]) -> None:
        with self._lock:
            for ch in changes:
                self._apply_ingest(ch)

    def _apply_ingest(self, ch: Change) -> None:
        t = ch.tenant
        stale = set()
        for text in self._sel[t]:
            sel = parse_selector(text)
            if sel.kind == "all" or (sel.kind == "doc" and sel.value in ch.docs) or (sel.kind == "attr" and sel.attr in ch.attrs):
                stale.add(text)
        for text in stale:
            del self._sel[t][text]
        tp = self.policy.tenant(t)
        stale_roles = {r for rules in (tp.allow, tp.deny) for r, sels in rules.items() if sels & stale}
        stale_users: set[str] = set()
        for r in stale_roles:
            self._role[t].pop(r, None)
            stale_users |= tp.descendants(r)
        for u in stale_users:
            self._user[t].pop(u, None)
        if ch.derived:
            derived = self.catalog.tenant(t).derived
            for user, bm in list(self._user[t].items()):
                patched = BitMap(bm)
                for rid in ch.derived:
                    if all(s in patched for s in derived[rid]):
                        patched.add(rid)
                if len(patched) != len(bm):
                    self._user[t][user] = FrozenBitMap(patched)

    def clear(self) -> None:
        with self._lock:
            self._sel.clear()
            self._role.clear()
            self._user.clear()


def _roles_of(tp: TenantPolicy, subject: str) -> set[str]:
    """Implicit roles; a role asked about holds itself (as casbin's ``g(r, r)``)."""
    roles = tp.implicit_roles(subject)
    if subject in tp.roles:
        roles.add(subject)
    return roles
