"""Exact dense ranking of a small visible set in process — a silo of one's own.

The limit a permissioned search can reach is a search over a collection that
holds only the caller's rows. For a small visible set permrag can do better
than ask Milvus at all: it keeps the rows' vectors (read back from Milvus by
primary key, once) and scores every visible row itself — one matrix product,
exact by construction (no index, no filter form, no over-fetch), the same
cosine Milvus computes. Measured on Milvus Lite at 100k rows: a primary-key
read of 1,000 scattered rows 49 ms once, then 0.2 ms per query against 46 ms
for a filtered Milvus search (benchmarks/bench_search.py has the side-by-side
numbers against a per-user silo).

Why a cache keyed by row ID is safe across processes: a row's record, text
and vector never change while its ID exists (an update or replace publishes
new IDs; catalog/rows.py), and IDs are never reused (catalog/allocation.py).
Which rows are scored comes from the request's snapshot, never from the
cache, and every hit is verified like a Milvus hit (search/execute.py): its
tenant and external id as stored in Milvus must equal the catalog's record.

Only dense ranking runs here (in hybrid search, the dense half): BM25 scores
depend on the tenant collection's statistics, which only Milvus holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyroaring import AbstractBitMap

from ..backends import RawHit
from ..catalog import as_array

LOCAL_ROWS = 10_000  # largest visible set ranked in process (0: never)
CACHE_MB = 256  # cached rows (vectors and texts) and built matrices, each
MAX_SETS = 64


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


class LocalRanker:
    """The per-store cache of stored rows and built matrices, and the ranking itself."""

    def __init__(self, max_rows: int = LOCAL_ROWS, cache_mb: float = CACHE_MB) -> None:
        self.max_rows = max_rows
        self.budget = int(cache_mb * 2**20)
        self._rows: OrderedDict[tuple[int, int], _Row] = OrderedDict()
        self._row_bytes = 0
        self._sets: OrderedDict[tuple[int, int], _Set] = OrderedDict()
        self._set_bytes = 0
        self._lock = threading.Lock()

    def takes(self, n_visible: int, backend: Any) -> bool:
        """Whether a visible set of this size is ranked here (the backend must read rows back by ID)."""
        return 0 < n_visible <= self.max_rows and hasattr(backend, "stored")

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._sets.clear()
            self._row_bytes = self._set_bytes = 0

    # ------------------------------------------------------------------ ranking
    def rank(self, backend: Any, tenant_no: int, visible: AbstractBitMap, tenant_rows: AbstractBitMap, vectors: np.ndarray, k: int) -> list[list[RawHit]]:
        """Per query, every visible row with a stored vector, best first (equal
        scores by row ID), cut at the first ``k`` plus any tied with the k-th —
        the caller verifies and may ask for more with a larger ``k``."""
        s = self._set(backend, tenant_no, visible, tenant_rows)
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
        key = (tenant_no, id(visible))
        with self._lock:
            hit = self._sets.get(key)
            if hit is not None and hit.visible is visible:
                self._sets.move_to_end(key)
                return hit
        vis = visible if visible.issubset(tenant_rows) else visible & tenant_rows
        ids = as_array(vis).astype(np.int64)
        rows = self._rows_of(backend, tenant_no, ids)
        present = [i for i, r in enumerate(rows) if r is not None]
        kept = tuple(rows[i] for i in present)  # type: ignore[misc]
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

    def _rows_of(self, backend: Any, tenant_no: int, ids: np.ndarray) -> list[_Row | None]:
        with self._lock:
            got = {int(i): self._rows.get((tenant_no, int(i))) for i in ids}
            for i, r in got.items():
                if r is not None:
                    self._rows.move_to_end((tenant_no, i))
        missing = [i for i, r in got.items() if r is None]
        if missing:
            # at the store's search consistency, as a Milvus search would read (a 2.3
            # server's Strong read waits for the next time tick: ~200 ms)
            stored = backend.stored(tenant_no, missing, ("text", "dense", "tenant", "external_id"), strong=False)
            fresh = {i: _row(rec) for i, rec in stored.items()}
            with self._lock:
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
