"""The search path: one snapshot per request, one plan, one verified run.

A request takes a :class:`~permrag.access.Snapshot` (the caller's bitmap and
the versions it belongs to, after checking the stored versions), plans a
filter for it, runs the plan on the tenant's collection with over-fetch and
verification, stamps every hit with the snapshot's policy version and writes
the audit record. Every later stage of the same request (rerank, parent
merge, recommendations) uses that same snapshot, so nothing in one answer
comes from two versions.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from pyroaring import FrozenBitMap

from ..access import Access, Snapshot, check_agents, check_principal
from ..access.consistency import DEFAULT_WAIT, reach
from ..backends import MAX_LIMIT, Binding, Grouping, RawHit
from ..catalog import Catalog
from ..domain.names import check_text
from ..domain.results import Hit, Hits, Stats
from ..errors import ArgumentError, ConfigError
from ..storage.audit import AuditLog
from .contract import stamp
from .execute import Executor, Route
from .fusion import DEFAULT_FUSION, DEFAULT_WEIGHTS, default_pool
from .in_process import InProcessRanker
from .planner import DenyAll, Filter, Plan, Planner, in_process
from .probe import ask

MODES = ("auto", "hybrid", "dense", "keyword")  # auto: hybrid where the backend has BM25, else dense
FUSIONS = ("rrf", "weighted")
MAX_QUERY_CHARS = 10_000
MAX_PLANS = 4096  # plans kept, least recently used out first (plans of older catalog versions age out)
MOVED_RETRIES = 2  # searches asked again when rows moved in another process left an answer short (search_many)
# Hybrid search fuses each list's top ``pool`` candidates; without ``pool``
# that is fusion.default_pool: k for RRF (a larger pool lets a row at middling
# ranks in both lists outscore the best dense row), 4·k for weighted fusion.


class Searcher:
    """Permissioned search over one store."""

    def __init__(self, access: Access, catalog: Catalog, binding: Binding, planner: Callable[[], Planner], audit: AuditLog, stats: Stats, local: InProcessRanker | None = None) -> None:
        self.access = access
        self.catalog = catalog
        self.binding = binding
        self.planner = planner
        self.audit = audit
        self.stats = stats
        self.local = local  # small visible sets ranked in process (search/in_process.py); None: always Milvus
        self._plans: OrderedDict[tuple[str, int, int], tuple[FrozenBitMap, Plan]] = OrderedDict()
        self._executors: dict[tuple[int, int], Executor] = {}
        self._plans_lock = threading.Lock()

    # ------------------------------------------------------------------ plans
    def plan(self, snap: Snapshot) -> Plan:
        """The filter for ``snap`` (cached per tenant, catalog version and bitmap)."""
        return self._cached(snap) or self._planned(snap, self.catalog.tenants.number(snap.tenant))

    def plan_of(self, snap: Snapshot, no: int | None) -> Plan:
        """:meth:`plan`, given the tenant's collection number (None: none yet)."""
        return self._cached(snap) or self._planned(snap, no)

    def _cached(self, snap: Snapshot) -> Plan | None:
        with self._plans_lock:
            key = (snap.tenant, snap.catalog_version, id(snap.visible))
            hit = self._plans.get(key)
            if hit is not None:
                self._plans.move_to_end(key)
        return hit[1] if hit is not None and hit[0] is snap.visible else None

    def _planned(self, snap: Snapshot, no: int | None) -> Plan:
        """A new plan for ``snap`` (the tenant's number is looked up only for one: a
        tenant with no rows yet has none, and looking costs a query each time)."""
        grouping = self.grouping_of(no) if 0 < len(snap.visible) < len(snap.tenant_rows) else None
        plan = self.planner().plan(snap.visible, snap.tenant_rows, snap.tenant, snap.classes, grouping)
        with self._plans_lock:
            while len(self._plans) >= MAX_PLANS:
                self._plans.popitem(last=False)  # the least recently used: the others' plans stay
            self._plans[(snap.tenant, snap.catalog_version, id(snap.visible))] = (snap.visible, plan)
        return plan

    def _in_process(self, snap: Snapshot, mode: str, backend: Any) -> Filter | None:
        """A dense search of a small, partly visible set is ranked in process
        (search/in_process.py): it needs no filter form, so none is planned. (A larger
        set read back in the background is planned — once per bitmap, cached —
        and the executor ranks it in process while its rows stay cached, or
        searches Milvus with that plan.)"""
        if mode != "dense" or self.local is None:
            return None
        n = snap.visible.intersection_cardinality(snap.tenant_rows)
        if n == len(snap.tenant_rows) or not self.local.takes(n, backend):
            return None  # nothing visible, or everything (allow-all), or too many rows: the planner's way
        return in_process(snap.tenant, n)

    def grouping(self, tenant: str) -> Grouping | None:
        """How the tenant's collection keeps rows in class groups (None: flat, or no vectors)."""
        return self.grouping_of(self.catalog.tenants.number(tenant))

    def grouping_of(self, no: int | None) -> Grouping | None:
        """:meth:`grouping` of the collection numbered ``no`` (None: none yet)."""
        if no is None:
            return None
        try:
            backend = self.binding.backend()
        except ConfigError:  # a catalog-only store: plans without groups
            return None
        return backend.grouping(no)

    def executor(self, tenant: str) -> Executor | None:
        """The tenant collection's executor (one per collection and backend, kept)."""
        return self.executor_of(self.catalog.tenants.number(tenant))

    def executor_of(self, no: int | None) -> Executor | None:
        """:meth:`executor` of the collection numbered ``no`` (None: none yet)."""
        if no is None:
            return None
        backend = self.binding.backend()
        key = (no, id(backend))
        with self._plans_lock:
            ex = self._executors.get(key)
            if ex is None or ex.backend is not backend or ex.local is not self.local:
                if len(self._executors) >= MAX_PLANS:
                    self._executors.clear()
                ex = self._executors[key] = Executor(backend, no, self.catalog.rows.records, self.stats, self.local)
        return ex

    # ------------------------------------------------------------------ search
    def search_many(
        self,
        queries: Sequence[str],
        *,
        user: str,
        tenant: str,
        k: int = 10,
        mode: str = "auto",
        fusion: str = DEFAULT_FUSION,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        vectors: Any = None,
        pool: int | None = None,
        snapshot: Snapshot | None = None,
        agent: object = None,
        at_least: object = None,
        wait: float = DEFAULT_WAIT,
    ) -> list[Hits]:
        """The top ``k`` rows ``user`` (through ``agent``: only rows both may read) may read for each query, best first;
        with ``at_least`` (a consistency token), only once this process reflects its versions (access/consistency.py)."""
        queries = check_search_args(queries, user, tenant, k, mode, fusion, weights, pool)  # user and tenant: checked here, once
        agents = check_agents(agent)
        if at_least is not None:
            reach(self.access, at_least, wait)
        pool = pool if pool is not None else default_pool(fusion, k, MAX_LIMIT)
        backend = self.binding.backend()  # a store bound to another catalog fails here, whatever the caller sees
        mode = resolve_mode(mode, backend.capabilities)
        args = (backend, list(queries), user, tenant, agents, k, mode, dict(fusion=fusion, weights=(float(weights[0]), float(weights[1])), pool=pool), vectors)
        for attempt in range(MOVED_RETRIES + 1):
            snap, plan, out = self._once(snapshot, *args)
            # Rows moved or replaced after this snapshot was taken (by another process, or by this
            # one's placement keeper) have left Milvus under the IDs it knows: an answer short of
            # them is asked again at the versions of now (a caller's own snapshot is answered as it is).
            if snapshot is not None or attempt == MOVED_RETRIES or all(h.complete for h in out):
                break
            self.access.refresh()
            if self.catalog.version == snap.catalog_version:
                break  # nothing moved meanwhile: the answer is what the store holds
            self.stats.add("searches:again")
        self.audit.record(
            "search",
            user,
            tenant,
            snap.policy_version,
            {"plan": plan.kind, "mode": mode, "k": k, "queries": [q[:200] for q in queries], "rows": [[h.row_id for h in hs] for hs in out]},
            agents=snap.agents,
        )
        return out

    def _once(
        self, snapshot: Snapshot | None, backend: Any, queries: list[str], user: str, tenant: str, agents: Any, k: int, mode: str, how: dict[str, Any], vectors: Any
    ) -> tuple[Snapshot, Plan, list[Hits]]:
        """One search of ``queries`` at one snapshot (``snapshot``, else the caller's of now)."""
        snap = snapshot or self.access.snapshot_of(user, tenant, agents)
        no = self.catalog.tenants.number(tenant)  # once, at the snapshot's catalog version (None: no collection yet)
        held = self._ask_early(backend, no, mode)
        plan = self._in_process(snap, mode, backend) or self.plan_of(snap, no)
        ex = None if isinstance(plan, DenyAll) else self.executor_of(no)
        route = ex.route(plan, snap, mode) if ex is not None else Route("deny", plan)  # the one decision: deny, here or Milvus
        self.stats.add("searches", len(queries))
        self.stats.add(f"plan:{plan.kind}")
        self.stats.add(f"route:{route.kind}")
        if isinstance(plan, DenyAll):
            return snap, plan, [stamp(self.access.engine, (), snap, k, mode) for _ in queries]
        backend.capabilities.require(mode)
        if vectors is not None:
            vectors = self.binding.check_vectors(vectors, len(queries))
        elif mode != "keyword":
            vectors = self.binding.encode(queries)
        raw = ex.run(route, snap, mode, vectors, queries, k, held=held, **how) if ex else [[] for _ in queries]
        return snap, plan, [stamp(self.access.engine, self.hits(r, snap, mode), snap, k, mode) for r in raw]

    def _ask_early(self, backend: Any, no: int | None, mode: str) -> Future | None:
        """A dense search may be ranked in process, which asks Milvus whether it holds
        the collection (search/execute.py): asked now, on a worker thread, the answer
        comes while the snapshot, the plan, the encoding and the ranking run. A search
        that goes to Milvus after all leaves it unread (one metadata call, in the background)."""
        if mode != "dense" or self.local is None or self.local.max_rows <= 0 or no is None:
            return None
        return ask(backend.has_tenant, no)

    def hits(self, raw: list[RawHit], snap: Snapshot, mode: str = "dense") -> Hits:
        """Verified raw hits as :class:`Hit` objects with their catalog records
        (those the verify step read; read here only for a hit without one)."""
        if not raw:
            return Hits((), snap.policy_version, mode)
        recs = {h.row_id: h.record for h in raw if h.record is not None}
        if len(recs) < len(raw):
            recs.update(self.catalog.rows.records(h.row_id for h in raw if h.record is None))
        return Hits(
            [
                Hit(h.row_id, recs[h.row_id].external_id, h.text, h.score, dict(recs[h.row_id].attrs), recs[h.row_id].tenant, recs[h.row_id].parent, snap.policy_version)
                for h in raw
                if h.row_id in recs
            ],
            snap.policy_version,
            mode,
        )


def resolve_mode(mode: str, capabilities: Any) -> str:
    """The mode that runs: ``auto`` is hybrid where the backend has BM25
    (Milvus Lite, servers >= 2.5) and dense elsewhere; a named mode is kept
    (and refused later if the backend cannot run it)."""
    if mode != "auto":
        return mode
    return "hybrid" if capabilities.bm25 else "dense"


def check_k(k: object, what: str = "k") -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_LIMIT:
        raise ArgumentError(f"{what} must be an integer from 1 to {MAX_LIMIT}, not {k!r}")
    return k


def check_search_args(queries, user, tenant, k, mode, fusion, weights, pool=None) -> list[str]:
    check_principal("user", user)
    check_principal("tenant", tenant)
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence) or not queries:
        raise ArgumentError("give at least one query (a list of strings)")
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise ArgumentError("a query must be a non-empty string")
        if len(q) > MAX_QUERY_CHARS:
            raise ArgumentError(f"a query is at most {MAX_QUERY_CHARS} characters")
        check_text("a query", q, ArgumentError)
    check_k(k)
    if pool is not None:
        check_k(pool, "pool")
    if mode not in MODES:
        raise ArgumentError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if fusion not in FUSIONS:
        raise ArgumentError(f"fusion must be 'rrf' or 'weighted', not {fusion!r}")
    if (
        isinstance(weights, (str, bytes))
        or not isinstance(weights, Sequence)
        or len(weights) != 2
        or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0 for w in weights)
    ):
        raise ArgumentError(f"weights must be two finite non-negative numbers (dense, keyword), not {weights!r}")
    return list(queries)
