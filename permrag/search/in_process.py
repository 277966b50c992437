"""Exact dense ranking of a small visible set in process — a silo of one's own.

The limit a permissioned search can reach is a search over a collection that
holds only the caller's rows. For a small visible set permrag can do better
than ask Milvus at all: it keeps the rows' vectors (read back from Milvus by
primary key, once) and scores every visible row itself — one matrix product,
exact by construction (no index, no filter form, no over-fetch), the same
cosine Milvus computes. The primary-key read is paid once per set; every
later query is a matrix product, far cheaper than a filtered Milvus search.

Why a cache keyed by row ID is safe across processes: a row's record, text
and vector never change while its ID exists (an update or replace publishes
new IDs; catalog/rows.py), and IDs are never reused (catalog/allocation.py).
Which rows are scored comes from the request's snapshot, never from the
cache, and every hit is verified like a Milvus hit (search/execute.py): its
tenant and external id as stored in Milvus must equal the catalog's record.

Only dense ranking runs here (in hybrid search, the dense half): BM25 scores
depend on the tenant collection's statistics, which only Milvus holds.

A set of at most ``max_rows`` rows is read back by the search that first
needs it. A larger one, up to ``prefetch_rows`` (and what fits the cache), is
read back *in the background*: the searches that find it not read yet go to
Milvus with the planner's filter, exact as ever, and once the read is done
the set is ranked here (:meth:`InProcessRanker.ready`). A read that large takes
far longer than a search, so no search waits for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyroaring import AbstractBitMap

from ..backends import RawHit
from ..catalog import as_array

log = logging.getLogger(__name__)

LOCAL_ROWS = 10_000  # largest visible set read back by the search that needs it (0: never rank in process)
PREFETCH_ROWS = 100_000  # largest set read back in the background, then ranked here (PermRAG's default)
CACHE_MB = 256  # cached rows (vectors and texts) and built matrices, each
MAX_SETS = 64
PREFETCH_QUEUE = 8  # sets waiting for a background read (more are asked again by their next search)
PREFETCH_CHUNK = 2_000  # rows per background read (close() waits for at most one)
RETRY_AFTER = 2.0  # seconds before a set whose background read failed, or did not stick, is queued again


@dataclass(frozen=True)
class _Row:
    unit: np.ndarray  # the stored vector, scaled to length 1 (zeros stay zeros)
    text: str
    tenant: str
    external_id: str

    @property
    def nbytes(self) -> int:
        return self.unit.nbytes + len(self.text) + 200


@dataclass(frozen=True)
class _Set:
    visible: AbstractBitMap  # the snapshot's bitmap this entry was built for (identity-checked)
    ids: np.ndarray  # row IDs with a stored row, ascending
    matrix: np.ndarray  # their unit vectors, one per row
    rows: tuple[_Row, ...]


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
    """The per-store cache of stored rows and built matrices, and the ranking itself."""

    def __init__(self, max_rows: int = LOCAL_ROWS, cache_mb: float = CACHE_MB, prefetch_rows: int = 0) -> None:
        self.max_rows = max_rows
        self.prefetch_rows = prefetch_rows if max_rows > 0 else 0  # local_rows=0 turns in-process ranking off, background reads too
        self.budget = int(cache_mb * 2**20)
        self.prefetched = 0  # sets read back and built in the background
        self._rows: OrderedDict[tuple[int, int], _Row] = OrderedDict()
        self._row_bytes = 0
        self._sets: OrderedDict[tuple[int, int], _Set] = OrderedDict()
        self._set_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: OrderedDict[tuple[int, int], tuple[Any, AbstractBitMap, AbstractBitMap]] = OrderedDict()
        self._tried: dict[tuple[int, int], tuple[AbstractBitMap, float]] = {}
        self._busy = False
        self._closed = False
        self._worker: threading.Thread | None = None
        self._dim = 0  # of the stored vectors, once a row was read
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
            if hit is not None and hit.visible is visible:
                return True
            if self._closed or not self._fits(n_visible) or key in self._queue:
                return False
            tried = self._tried.get(key)
            if tried is not None and tried[0] is visible and time.monotonic() - tried[1] < RETRY_AFTER:
                return False
            while len(self._queue) >= PREFETCH_QUEUE:
                self._queue.popitem(last=False)  # the oldest waits for its next search
            self._queue[key] = (backend, visible, tenant_rows)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._prefetch, name="permrag-prefetch", daemon=True)
                self._worker.start()
            self._wake.notify()
        return False

    def _fits(self, n_rows: int) -> bool:
        """Whether a set of ``n_rows`` rows fits the caches (three quarters of each budget:
        its rows, at their mean size so far, and its matrix), so that building it
        does not evict it again."""
        per_row = self._row_bytes / len(self._rows) if self._rows else self._dim * 4 + 200
        return n_rows * max(per_row, self._dim * 4) <= 0.75 * self.budget

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
                vis = visible if visible.issubset(tenant_rows) else visible & tenant_rows
                ids = as_array(vis).astype(np.int64)
                for start in range(0, len(ids), PREFETCH_CHUNK):
                    if self._closed or not self._fits(len(ids)):
                        break
                    self._rows_of(backend, key[0], ids[start : start + PREFETCH_CHUNK])
                else:
                    if self._built(backend, key[0], visible, tenant_rows, False) is not None:
                        self.prefetched += 1
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
            self._rows.clear()
            self._sets.clear()
            self._queue.clear()
            self._tried.clear()
            self._row_bytes = self._set_bytes = 0

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
        out: list[list[RawHit]] = []
        if len(s.ids) == 0:
            return [[] for _ in range(len(vectors))]
        q = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.divide(q, norms, out=np.zeros_like(q), where=norms > 0)
        scores = q @ s.matrix.T  # queries × rows
        for sc in scores:
            if len(sc) > k:
                kth = np.partition(sc, len(sc) - k)[len(sc) - k]
                cand = np.flatnonzero(sc >= kth)
            else:
                cand = np.arange(len(sc))
            order = cand[np.lexsort((s.ids[cand], -sc[cand]))]
            out.append([RawHit(int(s.ids[i]), float(sc[i]), s.rows[i].text, s.rows[i].tenant, s.rows[i].external_id) for i in order])
        return out

    def prefill(self, backend: Any, tenant_no: int, visible: AbstractBitMap, tenant_rows: AbstractBitMap) -> int:
        """Read back (and keep) the rows of ``visible`` now; returns how many are kept."""
        return len(self._set(backend, tenant_no, visible, tenant_rows).ids)

    # ------------------------------------------------------------------ caches
    def _set(self, backend: Any, tenant_no: int, visible: AbstractBitMap, tenant_rows: AbstractBitMap) -> _Set:
        """The built set, its missing rows read back now."""
        built = self._built(backend, tenant_no, visible, tenant_rows, True)
        assert built is not None  # (read=True always builds)
        return built

    def _built(self, backend: Any, tenant_no: int, visible: AbstractBitMap, tenant_rows: AbstractBitMap, read: bool) -> _Set | None:
        """The built set (missing rows read back now if ``read``; else None unless every row is cached)."""
        key = (tenant_no, id(visible))
        with self._lock:
            hit = self._sets.get(key)
            if hit is not None and hit.visible is visible:
                self._sets.move_to_end(key)
                return hit
        vis = visible if visible.issubset(tenant_rows) else visible & tenant_rows
        ids = as_array(vis).astype(np.int64)
        rows = self._rows_of(backend, tenant_no, ids, read)
        if not read and any(r is None for r in rows):
            return None  # evicted meanwhile (the cache is shared): asked again by a later search
        present = [i for i, r in enumerate(rows) if r is not None]
        kept = tuple(r for r in rows if r is not None)
        dim = kept[0].unit.shape[0] if kept else 0
        matrix = np.stack([r.unit for r in kept]) if kept else np.zeros((0, dim), dtype=np.float32)
        built = _Set(visible, ids[present], matrix, kept)
        if len(kept) < len(ids):
            return built  # rows the catalog has and Milvus lacks (yet): not kept, asked again next time
        with self._lock:
            old = self._sets.pop(key, None)
            if old is not None:
                self._set_bytes -= old.matrix.nbytes
            self._sets[key] = built
            self._set_bytes += matrix.nbytes
            while self._sets and (self._set_bytes > self.budget or len(self._sets) > MAX_SETS):
                _, gone = self._sets.popitem(last=False)
                self._set_bytes -= gone.matrix.nbytes
        return built

    def _rows_of(self, backend: Any, tenant_no: int, ids: np.ndarray, read: bool = True) -> list[_Row | None]:
        with self._lock:
            got = {int(i): self._rows.get((tenant_no, int(i))) for i in ids}
            for i, r in got.items():
                if r is not None:
                    self._rows.move_to_end((tenant_no, i))
        missing = [i for i, r in got.items() if r is None]
        if missing and read:
            # at the store's search consistency, as a Milvus search would read (a 2.3
            # server's Strong read waits for the next time tick)
            stored = backend.stored(tenant_no, missing, ("text", "dense", "tenant", "external_id"), strong=False)
            fresh = {i: _row(rec) for i, rec in stored.items()}
            with self._lock:
                if fresh and not self._dim:
                    self._dim = next(iter(fresh.values())).unit.shape[0]
                for i, r in fresh.items():
                    if (tenant_no, i) not in self._rows:
                        self._rows[(tenant_no, i)] = r
                        self._row_bytes += r.nbytes
                while self._rows and self._row_bytes > self.budget:
                    _, gone = self._rows.popitem(last=False)
                    self._row_bytes -= gone.nbytes
            got.update(fresh)
        return [got[int(i)] for i in ids]


def _row(rec: dict[str, Any]) -> _Row:
    v = np.asarray(rec["dense"], dtype=np.float32)
    n = float(np.linalg.norm(v))
    return _Row(v / n if n > 0 else v, str(rec.get("text", "")), str(rec.get("tenant", "")), str(rec.get("external_id", "")))
