"""Exact dense ranking of a visible set in process — a silo of one's own.

The limit a permissioned search can reach is a search over a collection that
holds only the caller's rows. For a visible set permrag can do better than ask
Milvus at all: it keeps the rows' vectors (read back from Milvus by primary
key, once) and scores every visible row itself — one matrix product, exact by
construction (no index, no filter form, no over-fetch), the same cosine Milvus
computes. The primary-key read is paid once per row; every later query is a
matrix product, far cheaper than a filtered Milvus search.

Why a cache keyed by row ID is safe across processes: a row's record, text
and vector never change while its ID exists (an update or replace publishes
new IDs; catalog/rows.py), and IDs are never reused (catalog/allocation.py).
Which rows are scored comes from the request's snapshot, never from the
cache, and every hit is verified like a Milvus hit (search/execute.py): its
tenant and external id as stored in Milvus must equal the catalog's record.

Only dense ranking runs here (in hybrid search, the dense half): BM25 scores
depend on the tenant collection's statistics, which only Milvus holds.

**Memory** (search/arena.py): each tenant's cached rows live once, shared by
the sets of every user, within ``cache_mb`` (:meth:`InProcessRanker.memory`).
A set is ranked from a contiguous copy of its vectors when small enough
(``copy_mb``), else from the arena. When a new set does not fit, the rows of
the sets searched least recently make room; sets searched in the last
``RECENT_S`` seconds are not evicted for a set read in the background: that
one is not cached and its searches go to Milvus, exact as ever. Many users
searching in turn thus keep what fits instead of taking turns in the cache.

A set of at most ``max_rows`` rows is read back by the search that first
needs it. A larger one, up to ``prefetch_rows`` (and what fits the cache), is
read back *in the background*: the searches that find it not read yet go to
Milvus with the planner's filter, and once the read is done the set is ranked
here (:meth:`InProcessRanker.ready`): no search waits for a read that large.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np
from pyroaring import AbstractBitMap

from ..backends import RawHit
from ..catalog import as_array
from .arena import ROW_OVERHEAD, Arena, Row, VisibleSet, row_of

log = logging.getLogger(__name__)

LOCAL_ROWS = 10_000  # largest visible set read back by the search that needs it (0: never rank in process)
PREFETCH_ROWS = 100_000  # largest set read back in the background, then ranked here (PermRAG's default)
CACHE_MB = 512  # the cached rows of every tenant together: unit vectors and texts (PermRAG's cache_mb)
COPY_MB = 128  # contiguous copies of sets' vectors (a set whose copy would take over half of it has none)
MAX_SETS = 64
RECENT_S = 30.0  # a set searched this recently keeps its rows: a newcomer that does not fit goes to Milvus
PREFETCH_QUEUE = 8  # sets waiting for a background read (more are asked again by their next search)
PREFETCH_CHUNK = 2_000  # rows per background read (close() waits for at most one)
RETRY_AFTER = 2.0  # seconds before a set whose background read failed, or did not stick, is queued again


_RANKERS: weakref.WeakSet[InProcessRanker] = weakref.WeakSet()


def _after_fork() -> None:
    """A forked child gets fresh locks and no reader: the parent's reader thread,
    and whatever lock it held at the fork, do not exist in the child."""
    for ranker in list(_RANKERS):
        ranker._lock = threading.Lock()
        ranker._wake = threading.Condition(ranker._lock)
        ranker._worker = None
        ranker._busy = False
        ranker._queue.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class InProcessRanker:
    """The per-store cache of stored rows and visible sets, and the ranking itself."""

    def __init__(self, max_rows: int = LOCAL_ROWS, cache_mb: float = CACHE_MB, prefetch_rows: int = 0, copy_mb: float = COPY_MB) -> None:
        self.max_rows = max_rows
        self.prefetch_rows = prefetch_rows if max_rows > 0 else 0  # local_rows=0 turns in-process ranking off, background reads too
        self.budget = int(cache_mb * 2**20)
        self.copy_budget = int(copy_mb * 2**20)
        self.prefetched = 0  # sets read back and built in the background
        self.refused = 0  # sets not cached: the rows of sets searched recently filled the cache
        self._arenas: dict[int, Arena] = {}
        self._sets: OrderedDict[tuple[int, int], VisibleSet] = OrderedDict()
        self._seen: dict[tuple[int, int], float] = {}  # when each cached set was last searched
        self._copies: OrderedDict[tuple[int, int], tuple[VisibleSet, np.ndarray]] = OrderedDict()
        self._copy_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: OrderedDict[tuple[int, int], tuple[Any, AbstractBitMap, AbstractBitMap]] = OrderedDict()
        self._tried: dict[tuple[int, int], tuple[AbstractBitMap, float]] = {}
        self._busy = False
        self._closed = False
        self._worker: threading.Thread | None = None
        self._dim = 0  # of the stored vectors, once a row was read
        self._row_bytes = 0.0  # mean bytes of a cached row (vector, text, overhead), once rows were read
        _RANKERS.add(self)

    def takes(self, n_visible: int, backend: Any) -> bool:
        """Whether a visible set of this size is ranked here, read back by the search
        that needs it (the backend must read rows back by ID)."""
        return 0 < n_visible <= self.max_rows and hasattr(backend, "stored")

    def ready(self, backend: Any, tenant_no: int, visible: AbstractBitMap, tenant_rows: AbstractBitMap, n_visible: int) -> bool:
        """Whether a set too large to read back during a search (over ``max_rows``, up to
        ``prefetch_rows``) is read back and built already, so it is ranked here. If not,
        it is queued for a background read and False is returned: this search goes to Milvus."""
        if not (self.max_rows < n_visible <= self.prefetch_rows) or not hasattr(backend, "stored"):
            return False
        key = (tenant_no, id(visible))
        with self._lock:
            hit = self._sets.get(key)
            if hit is not None and hit.visible is visible and hit.arena is self._arenas.get(tenant_no):
                return True
            if self._closed or not self._fits(n_visible) or key in self._queue:
                return False
            tried = self._tried.get(key)
            if tried is not None and tried[0] is visible and time.monotonic() - tried[1] < RETRY_AFTER:
                return False
            if not self._admissible(n_visible):  # no room beside the sets searched recently: asked again later
                self._tried[key] = (visible, time.monotonic() + RECENT_S)
                return False
            while len(self._queue) >= PREFETCH_QUEUE:
                self._queue.popitem(last=False)  # the oldest waits for its next search
            self._queue[key] = (backend, visible, tenant_rows)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._prefetch, name="permrag-prefetch", daemon=True)
                self._worker.start()
            self._wake.notify()
        return False

    def memory(self) -> dict[str, int]:
        """What the cache holds now: rows, bytes (arenas; copies apart), sets, and the budgets."""
        with self._lock:
            return {
                "rows": sum(a.n for a in self._arenas.values()),
                "bytes": self._held(),
                "copy_bytes": self._copy_bytes,
                "sets": len(self._sets),
                "budget_bytes": self.budget,
                "copy_budget_bytes": self.copy_budget,
                "refused_sets": self.refused,
            }

    def _held(self) -> int:
        return sum(a.nbytes for a in self._arenas.values())

    def _per_row(self) -> float:
        return max(self._row_bytes, self._dim * 4 + ROW_OVERHEAD)

    def _fits(self, n_rows: int) -> bool:
        """Whether a set of ``n_rows`` rows fits the cache with room to spare (three quarters of it)."""
        return n_rows * self._per_row() <= 0.75 * self.budget

    def _prefetch(self) -> None:
        """The background reader: one queued set at a time, in chunks."""
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                key, (backend, visible, tenant_rows) = self._queue.popitem(last=False)
                self._tried[key] = (visible, time.monotonic())
                if len(self._tried) > 4 * MAX_SETS:
                    self._tried.clear()
                self._busy = True
            try:
                self._built(backend, key[0], visible, tenant_rows, True, chunk=PREFETCH_CHUNK)
                with self._lock:
                    if key in self._sets:
                        self.prefetched += 1
                    else:  # not cached (no room beside the sets searched recently): tried again later
                        self._tried[key] = (visible, time.monotonic() + RECENT_S)
            except Exception as exc:  # the backend down, the store closed: the searches go to Milvus (and raise there)
                log.debug("background read of %d rows failed: %s", len(visible), exc)
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no background read is queued or running; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._queue or self._busy:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._wake.wait(left)
        return True

    def clear(self) -> None:
        with self._lock:
            self._arenas.clear()
            self._sets.clear()
            self._seen.clear()
            self._copies.clear()
            self._copy_bytes = 0
            self._queue.clear()
            self._tried.clear()

    def close(self) -> None:
        """Stop the background reader (it finishes at most one chunk) and drop the caches."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._wake.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=30)
        self.clear()

    # ------------------------------------------------------------------ ranking
    def rank(self, backend: Any, tenant_no: int, visible: AbstractBitMap, tenant_rows: AbstractBitMap, vectors: np.ndarray, k: int, *, read: bool = True) -> list[list[RawHit]] | None:
        """Per query, every visible row with a stored vector, best first (equal
        scores by row ID), cut at the first ``k`` plus any tied with the k-th —
        the caller verifies and may ask for more with a larger ``k``. Rows not
        cached are read back now if ``read``; else None unless the set is built."""
        s = self._built(backend, tenant_no, visible, tenant_rows, read)
        if s is None:
            return None
        if len(s.ids) == 0:
            return [[] for _ in range(len(vectors))]
        block, pick = s.vectors(self._copy(s, (tenant_no, id(visible))))
        q = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.divide(q, norms, out=np.zeros_like(q), where=norms > 0)
        scores = q @ block.T  # queries × rows
        if pick is not None:
            scores = scores[:, pick]
        meta = s.arena.meta
        out: list[list[RawHit]] = []
        for sc in scores:
            if len(sc) > k:
                kth = np.partition(sc, len(sc) - k)[len(sc) - k]
                cand = np.flatnonzero(sc >= kth)
            else:
                cand = np.arange(len(sc))
            order = cand[np.lexsort((s.ids[cand], -sc[cand]))]
            out.append([RawHit(int(s.ids[i]), float(sc[i]), *meta[s.slots[i]]) for i in order])
        return out

    def prefill(self, backend: Any, tenant_no: int, visible: AbstractBitMap, tenant_rows: AbstractBitMap) -> int:
        """Read back (and keep, if it fits) the rows of ``visible`` now; returns how many are held."""
        built = self._built(backend, tenant_no, visible, tenant_rows, True)
        return 0 if built is None else len(built.ids)

    # ------------------------------------------------------------------ caches
    def _copy(self, s: VisibleSet, key: tuple[int, int]) -> np.ndarray | None:
        """The set's vectors in one block, kept while the copies' budget allows (None: too large)."""
        nbytes = len(s.slots) * s.arena.vectors.shape[1] * 4
        if 2 * nbytes > self.copy_budget or len(s.slots) == s.arena.n:
            return None
        with self._lock:
            held = self._copies.get(key)
            if held is not None and held[0] is s:
                self._copies.move_to_end(key)
                return held[1]
        block = s.arena.vectors[s.slots]
        with self._lock:
            if self._sets.get(key) is not s:
                return block  # (left the cache meanwhile: used once)
            old = self._copies.pop(key, None)
            if old is not None:
                self._copy_bytes -= old[1].nbytes
            self._copies[key] = (s, block)
            self._copy_bytes += block.nbytes
            while self._copies and self._copy_bytes > self.copy_budget:
                _, (_, gone) = self._copies.popitem(last=False)
                self._copy_bytes -= gone.nbytes
        return block

    def _built(self, backend: Any, tenant_no: int, visible: AbstractBitMap, tenant_rows: AbstractBitMap, read: bool, chunk: int = 0) -> VisibleSet | None:
        """The set (rows not cached read back now if ``read``; else None unless it is built).
        ``chunk``: read that many rows at a time (a background read stops between chunks at close)."""
        key = (tenant_no, id(visible))
        with self._lock:
            hit = self._sets.get(key)
            if hit is not None and hit.visible is visible and hit.arena is self._arenas.get(tenant_no):
                self._sets.move_to_end(key)
                self._seen[key] = hit.arena.used = time.monotonic()
                return hit
        vis = visible if visible.issubset(tenant_rows) else visible & tenant_rows
        ids = as_array(vis).astype(np.int64)
        fresh: dict[int, Row] = {}
        lacking: set[int] = set()  # rows the catalog has and Milvus lacks (yet): not in the set
        for _ in range(10):  # (rows evicted by another thread between the read and the build are read again)
            with self._lock:
                arena = self._arenas.get(tenant_no)
                absent = [i for i in ids.tolist() if (arena is None or i not in arena.slot) and i not in fresh and i not in lacking]
                if not absent:
                    return self._place(key, tenant_no, visible, ids, fresh, lacking)
            if not read:
                return None  # (evicted meanwhile: asked again by a later search)
            got = self._read(backend, tenant_no, absent, chunk)
            if got is None:
                return None  # closed during a background read
            lacking.update(i for i in absent if i not in got)
            fresh.update(got)
        raise RuntimeError(f"the rows of a visible set of {len(ids)} rows were evicted while it was read, ten times")

    def _read(self, backend: Any, tenant_no: int, ids: list[int], chunk: int) -> dict[int, Row] | None:
        """The stored rows of ``ids`` (those Milvus has); ``chunk``: a background read, that many
        rows at a time, None once the ranker is closed (0: a search's read, at once)."""
        out: dict[int, Row] = {}
        step = chunk or len(ids)
        for start in range(0, len(ids), step):
            if chunk and self._closed:
                return None
            # at the store's search consistency, as a Milvus search would read (a 2.3
            # server's Strong read waits for the next time tick)
            stored = backend.stored(tenant_no, ids[start : start + step], ("text", "dense", "tenant", "external_id"), strong=False)
            out.update((i, row_of(rec)) for i, rec in stored.items())
        if out:
            sample = next(iter(out.values()))
            n = len(out)
            with self._lock:
                self._dim = self._dim or sample.unit.shape[0]
                self._row_bytes = max(self._row_bytes, self._dim * 4 + ROW_OVERHEAD + sum(len(r.text) for r in out.values()) / n)
        return out

    def _place(self, key: tuple[int, int], tenant_no: int, visible: AbstractBitMap, ids: np.ndarray, fresh: dict[int, Row], lacking: set[int]) -> VisibleSet:
        """The set built from the arena and the rows just read (under the lock): cached if its
        rows are all stored and fit, else a set of its own used by this search alone."""
        arena = self._arenas.get(tenant_no)
        present = ids if not lacking else ids[~np.isin(ids, list(lacking))]
        if len(present) == 0:
            return VisibleSet(visible, present, present, Arena(1, 0))
        add = [(i, r) for i, r in fresh.items() if arena is None or i not in arena.slot]
        need = sum(self._dim * 4 + len(r.text) + ROW_OVERHEAD for _, r in add)
        # a set with rows Milvus lacks (yet) is not cached, but the rows read are, where they fit as they are
        cached = (not add or self._room(tenant_no, need, present, len(present) <= self.max_rows)) if not lacking else self._held() + need <= self.budget
        if cached and add:
            arena = self._arenas.get(tenant_no)
            if arena is None:
                arena = self._arenas[tenant_no] = Arena(add[0][1].unit.shape[0], len(add))
            arena.add(add, self.budget - self._held() - need)
        if cached and not lacking:
            assert arena is not None
            arena.used = time.monotonic()
            built = VisibleSet(visible, present, arena.slots_of(present), arena)
            self._sets.pop(key, None)
            self._sets[key] = built
            self._seen[key] = arena.used
            while len(self._sets) > MAX_SETS:
                gone, _ = self._sets.popitem(last=False)
                self._seen.pop(gone, None)
            return built
        if not cached and not lacking:
            self.refused += 1
        own = Arena(self._dim or present.size and fresh[next(iter(fresh))].unit.shape[0], len(present))
        rows = dict(fresh)
        if arena is not None:
            rows.update((i, Row(arena.vectors[arena.slot[i]], *arena.meta[arena.slot[i]])) for i in present.tolist() if i not in rows and i in arena.slot)
        own.add(((i, rows[i]) for i in present.tolist()), 0)
        return VisibleSet(visible, present, np.arange(len(present), dtype=np.int64), own)

    def _room(self, tenant_no: int, need: int, keep: np.ndarray, small: bool) -> bool:
        """Make room for ``need`` more bytes of ``tenant_no``'s rows (under the lock): other
        tenants' arenas not searched recently are dropped, least recently searched first,
        then this tenant's arena is rebuilt with the rows of ``keep`` and of its most
        recently searched sets that fit. False, and nothing changed, if that would evict
        a set searched in the last RECENT_S seconds — unless the set is ``small`` (at most
        ``max_rows``: read back by the search that needs it, which has no other route)."""
        held = self._held()
        if held + need <= self.budget:
            return True
        if need > self.budget:
            return False
        now = time.monotonic()
        idle = [t for u, t in sorted((a.used, t) for t, a in self._arenas.items() if t != tenant_no) if now - u >= RECENT_S]
        reclaim = sum(self._arenas[t].nbytes for t in idle)
        if held - reclaim + need <= self.budget:
            for t in idle:
                if self._held() + need <= self.budget:
                    break
                self._drop_tenant(t)
            return True
        arena = self._arenas.get(tenant_no)
        if arena is None:
            return False
        room = self.budget - (held - reclaim - arena.nbytes) - need
        keep_ids = {i for i in keep.tolist() if i in arena.slot}
        kept: list[tuple[int, int]] = []
        for seen, k in sorted(((self._seen.get(k, 0.0), k) for k in self._sets if k[0] == tenant_no), reverse=True):  # most recent first
            more = keep_ids.union(self._sets[k].ids.tolist())
            if arena.bytes_of(more) <= room:
                keep_ids = more
                kept.append(k)
            elif now - seen < RECENT_S and not small:
                return False
        if arena.bytes_of(keep_ids) > room:
            return False
        for t in idle:
            self._drop_tenant(t)
        self._compact(tenant_no, arena, keep_ids, kept)
        return True

    def _admissible(self, n_rows: int) -> bool:
        """Whether a set of ``n_rows`` rows could be cached without evicting a set searched
        in the last RECENT_S seconds (under the lock): a background read is not started
        for a set that could not stay."""
        need = n_rows * self._per_row()
        if self._held() + need <= self.budget:
            return True
        now = time.monotonic()
        recent: dict[int, list[np.ndarray]] = {}
        for k, s in self._sets.items():
            if now - self._seen.get(k, 0.0) < RECENT_S:
                recent.setdefault(k[0], []).append(s.ids)
        rows = sum(len(np.unique(np.concatenate(parts))) for parts in recent.values())
        return rows * self._per_row() + need <= self.budget

    def _compact(self, tenant_no: int, arena: Arena, keep_ids: set[int], kept: list[tuple[int, int]]) -> None:
        """A new arena for ``tenant_no`` with the rows ``keep_ids``; the sets ``kept`` re-pointed to it."""
        new = arena.kept(keep_ids)
        sets = {k: self._sets[k] for k in kept}
        copies = {k: self._copies[k][1] for k in kept if k in self._copies and self._copies[k][0] is sets[k]}
        seen = {k: self._seen.get(k, 0.0) for k in kept}
        self._drop_tenant(tenant_no)
        self._arenas[tenant_no] = new
        for k in reversed(kept):  # (least recent first: the cache's order)
            s = sets[k]
            moved = VisibleSet(s.visible, s.ids, new.slots_of(s.ids), new)
            self._sets[k] = moved
            self._seen[k] = seen[k]
            if k in copies:
                self._copies[k] = (moved, copies[k])
                self._copy_bytes += copies[k].nbytes

    def _drop_tenant(self, tenant_no: int) -> None:
        self._arenas.pop(tenant_no, None)
        for k in [k for k in self._sets if k[0] == tenant_no]:
            del self._sets[k]
            self._seen.pop(k, None)
        for k in [k for k in self._copies if k[0] == tenant_no]:
            self._copy_bytes -= self._copies.pop(k)[1].nbytes
