"""Run a plan on the backend: over-fetch where needed, verify every hit.

The verify step is the guarantee: whatever the backend returns, a hit is
kept only if

* its row ID is in the caller's bitmap (the request's snapshot), and
* the tenant and external id Milvus stored with it equal the catalog's
  record for that row ID (a collection written by another catalog, or a
  corrupted row, cannot pass as one of ours).

A drop of a row that is published in the tenant under an *exact* plan, or
any identity mismatch, means the backend ignored part of the filter or holds
foreign rows: it is logged on the ``permrag.security`` logger and counted in
``stats["dropped_hits"]``. Rows the filter lets through by design (a superset
plan) or that are not yet published (a batch between its Milvus insert and
its publish) are counted in ``stats["overfetch_discarded"]``. Either way the
search asks again with a larger limit until it has ``k`` verified hits or
the candidates are exhausted, so nothing is lost to post-filtering. Past
Milvus' largest limit it falls back to exact ID-list filters in chunks.

A dense search of at most ``local_rows`` visible rows — or of a larger set
read back in the background already (up to ``prefetch_rows``) — is ranked in
process instead (search/in_process.py): every visible row scored from its stored
vector, read back once; its hits pass the same verify. Milvus is still asked whether
it holds the collection, so a search while the backend is down raises on
either path (the question runs beside the ranking: search/probe.py).

Which way a search goes — nothing visible (no backend call), ranked in
process, or Milvus under the plan — is decided once per request
(:meth:`Executor.route`, a :class:`Route`) and passed down; a route in
process falls back to Milvus only at run time, when the collection is gone
or a background-read set left the cache.

A plan may name class groups (partitions, placement/layout.py) instead of,
or besides, a filter. A row searched through a group is verified like any
other, so a stale plan naming a group cannot make a row visible.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..access import Snapshot
from ..backends import MAX_LIMIT, RawHit, SearchBackend
from ..catalog import RowRecord, as_array
from ..domain.results import Stats
from .fusion import order, rrf, weighted
from .in_process import InProcessRanker
from .planner import IN_PROCESS, AllowAll, DenyAll, Filter, Plan
from .probe import ask

log = logging.getLogger(__name__)
security_log = logging.getLogger("permrag.security")

CHUNK_IDS = 5_000

Records = Callable[[Sequence[int]], Mapping[int, RowRecord]]
ROUTES = ("deny", "here", "milvus")


@dataclass(frozen=True)
class Route:
    """How one search runs, decided once (:meth:`Executor.route`) and passed down:
    ``deny`` (nothing visible: no backend call), ``here`` (its dense ranking in
    process, search/in_process.py; a hybrid search's keyword half still asks Milvus)
    or ``milvus`` (the plan's filter and partitions). A ``here`` route falls back
    to Milvus only at run time, when the collection is gone or a background-read
    set left the cache meanwhile."""

    kind: str
    plan: Plan


def indexed_alone(plan: Plan, backend: Any) -> bool:
    """Whether Milvus' ANN index (HNSW, IVF) searches exactly the visible rows under
    ``plan``, as a per-user silo's index would: everything visible, or class groups
    of visible rows alone, with no residual filter. Such a set larger than
    ``local_rows`` is not read back for in-process ranking: the index answers it in
    about a silo's time with a silo's recall, while exact ranking in process costs
    time in proportion to the set (bench_search --index HNSW). With FLAT, and where a
    residual filter would narrow an ANN search, the background read stays (exact)."""
    if getattr(backend, "index", "FLAT") == "FLAT":
        return False
    return isinstance(plan, AllowAll) or (isinstance(plan, Filter) and plan.exact and not plan.expr and plan.strategy != IN_PROCESS)


class Executor:
    """Executes plans on one backend for one tenant collection; counts what verify dropped."""

    def __init__(self, backend: SearchBackend, tenant_no: int, records: Records, stats: Stats, local: InProcessRanker | None = None) -> None:
        self.backend = backend
        self.tenant_no = tenant_no
        self.records = records
        self.stats = stats
        self.local = local

    def route(self, plan: Plan, snap: Snapshot, mode: str) -> Route:
        """The one decision of how a search runs (see :class:`Route`); asking whether
        a larger set is read back already queues its background read (search/in_process.py)."""
        if isinstance(plan, DenyAll):
            return Route("deny", plan)
        if getattr(plan, "strategy", None) == IN_PROCESS:
            return Route("here", plan)  # planned for in-process ranking (search/searcher.py): there is no filter for Milvus
        if mode in ("dense", "hybrid") and isinstance(plan, (Filter, AllowAll)) and self.local is not None and self._local_ready(plan, snap):
            return Route("here", plan)
        return Route("milvus", plan)

    def run(
        self,
        plan: Plan | Route,
        snap: Snapshot,
        mode: str,
        vectors: np.ndarray | None,
        texts: Sequence[str],
        k: int,
        *,
        fusion: str = "rrf",
        weights: tuple[float, float] = (0.5, 0.5),
        pool: int | None = None,
        held: Future | None = None,
    ) -> list[list[RawHit]]:
        """Verified top-k per query along ``plan``'s route (a :class:`Route` decided by the
        caller, or decided here once); ``pool``: candidates per list before hybrid fusion;
        ``held``: the collection check of this search, asked already — search/searcher.py."""
        route = plan if isinstance(plan, Route) else self.route(plan, snap, mode)
        if route.kind == "deny":
            return [[] for _ in texts]
        if mode == "hybrid":
            # Fusion is done here, over two verified candidate lists (each with
            # its own over-fetch under a superset plan); ties break towards
            # the dense list, which Milvus' rankers do not do, and which ranks
            # better. The route holds for the dense half; the keyword half asks Milvus.
            n = max(k, pool or k)
            known: dict[int, RowRecord] = {}  # the records this request read: each once, over both lists
            dense = self._along(route, snap, "dense", vectors, texts, n, held, known)
            keyword = self._along(Route("milvus", route.plan), snap, "keyword", vectors, texts, n, None, known)
            return [fuse(d, s, k, fusion, weights) for d, s in zip(dense, keyword)]
        return self._along(route, snap, mode, vectors, texts, k, held, {})

    def _along(self, route: Route, snap: Snapshot, mode: str, vectors: np.ndarray | None, texts: Sequence[str], k: int, held: Future | None, known: dict[int, RowRecord]) -> list[list[RawHit]]:
        """One list (dense or keyword) along ``route``; ``known``: the records the request read so far."""
        plan = route.plan
        if route.kind == "here" and mode == "dense" and vectors is not None and isinstance(plan, (Filter, AllowAll)) and self.local is not None:
            ranked = self._ranked_here(self.local, plan, snap, vectors, k, held, known)
            if ranked is not None:
                return ranked  # (None: the collection is gone, or a background-read set left the cache meanwhile: Milvus answers)
        if isinstance(plan, Filter) and plan.strategy == IN_PROCESS:
            # planned for in-process ranking (search/searcher.py), so there is no filter to
            # give Milvus: the collection is gone (nothing to find) or the set can't be ranked here
            if mode == "dense" and vectors is not None and self.local is not None and self.local.takes(plan.visible, self.backend):
                return [[] for _ in texts]
            raise RuntimeError("an in-process plan reached the Milvus path")  # never: engine.py plans it only for dense searches ranked here
        assert isinstance(plan, (Filter, AllowAll))
        return self._milvus(plan, snap, mode, vectors, texts, k, known)

    def _ranked_here(self, local: InProcessRanker, plan: Filter | AllowAll, snap: Snapshot, vectors: np.ndarray, k: int, held: Future | None, known: dict[int, RowRecord]) -> list[list[RawHit]] | None:
        """The dense top-k ranked in process, once Milvus has said it still holds the
        collection: a search while the backend is down raises on either path, and a
        dropped collection goes the Milvus way. The question runs beside the ranking
        (search/probe.py) and its answer is awaited before anything returns."""
        held = held or ask(self.backend.has_tenant, self.tenant_no)
        try:
            ranked, failed = self._local(local, plan, snap, vectors, k, known), None
        except Exception as exc:  # (a read-back from a collection dropped meanwhile: the Milvus way)
            ranked, failed = None, exc
        exists = held.result()  # raises what has_tenant raised (the backend is down)
        if failed is not None and exists:
            raise failed
        return ranked if exists else None

    def _milvus(self, plan: AllowAll | Filter, snap: Snapshot, mode: str, vectors: np.ndarray | None, texts: Sequence[str], k: int, known: dict[int, RowRecord]) -> list[list[RawHit]]:
        """Verified top-k per query from Milvus under the plan's filter, over-fetching
        until k verified rows are found, the filter runs out, or ties are settled."""
        results: list[list[RawHit] | None] = [None] * len(texts)
        pending = list(range(len(texts)))
        # One row past what the plan needs: when it scores below the k-th,
        # no row beyond can tie with the k-th and one search is enough (with
        # exactly k, the k-th itself looked like a tie: every search was made twice).
        limit = plan.fetch_limit(k) + 1
        # the share of the rows searched (the named groups', or the tenant's) the caller may see: an ANN
        # index searches that much wider (a superset plan's filter admits more, but only the visible rows
        # among its hits count); a plan naming groups of visible rows alone searches like a silo
        admits = min(1.0, plan.visible / max(1, getattr(plan, "scope", 0) or len(snap.tenant_rows)))
        while pending:
            raw = self.backend.search(
                self.tenant_no,
                mode,
                vectors=vectors[pending] if vectors is not None else None,
                texts=[texts[i] for i in pending],
                expr=plan.expr,
                limit=limit,
                groups=getattr(plan, "groups", ()),
                admits=admits,
            )
            self.stats.add("milvus_searches", 1)
            still = []
            for i, hits in zip(pending, raw):
                ok = self.verify(plan, snap, hits, known)
                complete = len(hits) < limit
                if len(ok) >= k and not complete and limit < TIE_FETCH and hits[-1].row_id != ok[k - 1].row_id and hits[-1].score >= ok[k - 1].score:
                    # Rows tied with the k-th may lie beyond what Milvus
                    # returned, and which of them it returns depends on the
                    # filter form: fetch past the tie, then break it by row ID.
                    still.append(i)
                elif len(ok) >= k or complete:
                    results[i] = canonical(ok)[:k]
                elif limit >= MAX_LIMIT:
                    results[i] = self._by_id_chunks(snap, mode, vectors, texts, i, k, known)
                else:
                    still.append(i)
            if still:
                self.stats.add("overfetch_rounds", 1)
            pending = still
            # (past a tie too: a geometric step stays cheaper than jumping
            # straight to TIE_FETCH rows, which most ties never need)
            limit = min(MAX_LIMIT, limit * 4)
        return [r or [] for r in results]

    def _local_ready(self, plan: Filter | AllowAll, snap: Snapshot) -> bool:
        """Whether a dense search is ranked in process: a small set (read back now if
        need be), or a larger one read back in the background already — if not, its
        background read is queued and the plan goes to Milvus (search/in_process.py)."""
        assert self.local is not None
        if self.local.takes(plan.visible, self.backend):
            return True
        return not indexed_alone(plan, self.backend) and self.local.ready(self.backend, self.tenant_no, snap.visible, snap.tenant_rows, plan.visible)

    def _local(self, local: InProcessRanker, plan: Filter | AllowAll, snap: Snapshot, vectors: np.ndarray, k: int, known: dict[int, RowRecord]) -> list[list[RawHit]] | None:
        """Every visible row scored in process (search/in_process.py); verified like Milvus hits.
        A small set is read back now if need be; a larger one only if built already (else None)."""
        read = local.takes(plan.visible, self.backend)
        ranked = local.rank(self.backend, self.tenant_no, snap.visible, snap.tenant_rows, vectors, k, read=read)
        if ranked is None:
            return None
        out = []
        for i, hits in enumerate(ranked):
            ok = self.verify(plan, snap, hits, known)
            if len(ok) < k and len(hits) < plan.visible:
                # verify dropped some: rank the whole set and verify the rows past these
                # (the order is canonical, so the first len(hits) are the same rows)
                whole = local.rank(self.backend, self.tenant_no, snap.visible, snap.tenant_rows, vectors[[i]], plan.visible, read=read)
                if whole is None:
                    return None
                ok += self.verify(plan, snap, whole[0][len(hits) :], known)
            out.append(ok[:k])
        self.stats.add("local_searches", 1)  # one per batch of queries, as milvus_searches counts
        return out

    def verify(self, plan: Plan, snap: Snapshot, hits: list[RawHit], known: dict[int, RowRecord] | None = None) -> list[RawHit]:
        """The hits the caller may read whose stored tenant and external id agree with
        the catalog, each with the record it was checked against. ``known``: the
        records this request read already (a later over-fetch round returns the same
        rows again); what is read here is added to it."""
        inside = [h for h in hits if h.row_id in snap.visible]
        recs = known if known is not None else {}
        missing = [h.row_id for h in inside if h.row_id not in recs]
        if missing:
            recs.update(self.records(missing))
        ok: list[RawHit] = []
        mismatched: list[int] = []
        for h in inside:
            rec = recs.get(h.row_id)
            if rec is None or rec.tenant != snap.tenant or h.tenant != rec.tenant or h.external_id != rec.external_id:
                mismatched.append(h.row_id)
            else:
                ok.append(replace(h, record=rec))
        outside = [h.row_id for h in hits if h.row_id not in snap.visible]
        suspicious = [r for r in outside if r in snap.tenant_rows] if plan.exact else []
        discarded = len(outside) - len(suspicious)
        if discarded:
            self.stats.add("overfetch_discarded", discarded)
        if suspicious or mismatched:
            self.stats.add("dropped_hits", len(suspicious) + len(mismatched))
            if mismatched:
                self.stats.add("mismatched_hits", len(mismatched))
            security_log.warning(
                "verify dropped %d hit(s) outside the caller's bitmap under an exact %s plan and %d whose tenant or external id in Milvus disagree with the catalog, in tenant %r: %s",
                len(suspicious),
                getattr(plan, "strategy", plan.kind),
                len(mismatched),
                snap.tenant,
                (suspicious + mismatched)[:20],
            )
        return ok

    def _by_id_chunks(self, snap: Snapshot, mode: str, vectors: np.ndarray | None, texts: Sequence[str], i: int, k: int, known: dict[int, RowRecord]) -> list[RawHit]:
        """Exact fallback: search each chunk of visible IDs, keep the best k."""
        from .planner import Filter

        self.stats.add("id_chunk_fallbacks", 1)
        ids = as_array(snap.visible)
        merged: list[RawHit] = []
        for start in range(0, len(ids), CHUNK_IDS):
            part = ids[start : start + CHUNK_IDS]
            exact = Filter(snap.tenant, f"row_id in [{', '.join(str(int(x)) for x in part)}]", "ids", True, len(part), len(part), 0, len(part), 0.0)
            raw = self.backend.search(
                self.tenant_no, mode, vectors=vectors[[i]] if vectors is not None else None, texts=[texts[i]], expr=exact.expr, limit=k, admits=len(part) / max(1, len(snap.tenant_rows))
            )
            merged.extend(self.verify(exact, snap, raw[0], known))
        return canonical(merged)[:k]


# How far a search fetches past a tie at its k-th score (beyond it, rows tied
# with the k-th are ordered by row ID among those Milvus returned): a query of
# one common word ties thousands of BM25 scores.
TIE_FETCH = 1024


def canonical(hits: list[RawHit]) -> list[RawHit]:
    """Best first; equal scores by row ID, so a top-k is one list whatever
    filter form or over-fetch produced its candidates."""
    return sorted(hits, key=lambda h: (-h.score, h.row_id))


def fuse(dense: list[RawHit], keyword: list[RawHit], k: int, fusion: str, weights: tuple[float, float]) -> list[RawHit]:
    """Client-side fusion of two verified candidate lists: ``rrf`` (k=60) or
    ``weighted`` (min-max normalised, ``weights`` = dense, keyword)."""
    scores = rrf([dense, keyword]) if fusion == "rrf" else weighted([dense, keyword], weights)
    by_id = {h.row_id: h for h in keyword}
    by_id.update({h.row_id: h for h in dense})
    return [replace(by_id[rid], score=scores[rid]) for rid in order(scores, dense)[:k]]
