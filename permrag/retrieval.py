"""Run a plan against the store: over-fetch where needed, verify every hit.

The verify step is the guarantee: whatever the backend returns, a hit whose
row ID is not in the caller's bitmap is dropped. Under an exact plan such a
hit means the backend ignored part of the filter; it is logged on the
``permrag.security`` logger and counted in ``stats["dropped_hits"]``. Under a
superset plan the extra rows are expected, counted in
``stats["overfetch_discarded"]``, and the search asks again with a larger
limit until it has k visible hits or the candidates are exhausted, so there is
no shortfall. Past Milvus' largest limit it falls back to exact ID-list
filters in chunks.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pyroaring import AbstractBitMap

from .bitmaps import as_array
from .planner import AllowAll, DenyAll, Filter, Plan, tenant_expr
from .store import MAX_LIMIT, RRF_K, MilvusStore, RawHit

log = logging.getLogger(__name__)
security_log = logging.getLogger("permrag.security")

CHUNK_IDS = 5_000


@dataclass(frozen=True)
class Hit:
    """One search result, stamped with the policy version it was computed under."""

    row_id: int
    external_id: str
    text: str
    score: float
    attrs: dict[str, Any]
    tenant: str
    parent: str | None
    policy_version: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "row_id": self.row_id,
            "external_id": self.external_id,
            "text": self.text,
            "score": self.score,
            "attrs": self.attrs,
            "tenant": self.tenant,
            "parent": self.parent,
            "policy_version": self.policy_version,
        }


class Hits(list):
    """The hits of one query, best first, and the policy version they were
    computed under (also for an empty result)."""

    def __init__(self, hits: Sequence[Hit] = (), policy_version: int = 0) -> None:
        super().__init__(hits)
        self.policy_version = policy_version


class Retrieval:
    """Executes plans on one store; counts what verify dropped."""

    def __init__(self, store: MilvusStore, stats: Counter) -> None:
        self.store = store
        self.stats = stats

    def run(
        self,
        plan: Plan,
        visible: AbstractBitMap,
        mode: str,
        vectors: np.ndarray | None,
        texts: Sequence[str],
        k: int,
        fusion: str = "rrf",
        weights: tuple[float, float] = (0.5, 0.5),
    ) -> list[list[RawHit]]:
        """Verified top-k per query."""
        nq = len(texts)
        if isinstance(plan, DenyAll):
            return [[] for _ in range(nq)]
        if mode == "hybrid":
            # Fusion is done here, over the two verified top-k lists (see
            # fuse): each list gets its own over-fetch under a superset plan,
            # and ties break towards the dense list, which Milvus' rankers
            # do not do (measured on the English Q/A set: RRF nDCG@10 0.50 in
            # Milvus, 0.61 here).
            dense = self.run(plan, visible, "dense", vectors, texts, k)
            keyword = self.run(plan, visible, "keyword", vectors, texts, k)
            return [fuse(d, s, k, fusion, weights) for d, s in zip(dense, keyword)]
        results: list[list[RawHit] | None] = [None] * nq
        pending = list(range(nq))
        limit = plan.fetch_limit(k)
        while pending:
            raw = self.store.search(
                mode,
                vectors=vectors[pending] if vectors is not None else None,
                texts=[texts[i] for i in pending],
                expr=plan.expr,
                limit=limit,
            )
            self.stats["milvus_searches"] += 1
            still = []
            for i, hits in zip(pending, raw):
                ok = self._verify(plan, visible, hits)
                if len(ok) >= k or len(hits) < limit:
                    results[i] = ok[:k]
                elif limit >= MAX_LIMIT:
                    results[i] = self._by_id_chunks(plan, visible, mode, vectors, texts, i, k)
                else:
                    still.append(i)
            if still:
                self.stats["overfetch_rounds"] += 1
            pending = still
            limit = min(MAX_LIMIT, limit * 4)
        return [r or [] for r in results]

    def _verify(self, plan: Plan, visible: AbstractBitMap, hits: list[RawHit]) -> list[RawHit]:
        ok = [h for h in hits if h.row_id in visible]
        dropped = len(hits) - len(ok)
        if dropped:
            if plan.exact:
                self.stats["dropped_hits"] += dropped
                security_log.warning(
                    "verify dropped %d hit(s) outside the caller's bitmap under an exact %s plan in tenant %r: %s",
                    dropped,
                    plan.kind,
                    plan.tenant,
                    [h.row_id for h in hits if h.row_id not in visible][:20],
                )
            else:
                self.stats["overfetch_discarded"] += dropped
        return ok

    def _by_id_chunks(self, plan, visible, mode, vectors, texts, i, k) -> list[RawHit]:
        """Exact fallback: search each chunk of visible IDs, keep the best k."""
        self.stats["id_chunk_fallbacks"] += 1
        ids = as_array(visible)
        merged: list[RawHit] = []
        for start in range(0, len(ids), CHUNK_IDS):
            chunk = ", ".join(str(int(x)) for x in ids[start : start + CHUNK_IDS])
            exact = Filter(plan.tenant, f"{tenant_expr(plan.tenant)} and row_id in [{chunk}]", "ids", True, 0, 0, 0, 0, 0.0)
            raw = self.store.search(
                mode,
                vectors=vectors[[i]] if vectors is not None else None,
                texts=[texts[i]],
                expr=exact.expr,
                limit=k,
            )
            merged.extend(self._verify(exact, visible, raw[0]))
        merged.sort(key=lambda h: -h.score)
        return merged[:k]


def fuse(dense: list[RawHit], keyword: list[RawHit], k: int, fusion: str, weights: tuple[float, float]) -> list[RawHit]:
    """Client-side fusion of two verified top-k lists.

    ``rrf``: reciprocal rank fusion (k=60), as Milvus' RRFRanker.
    ``weighted``: each list's scores min-max normalised per query to [0, 1],
    then ``weights[0] * dense + weights[1] * keyword``. Milvus' own
    WeightedRanker squashes BM25 with arctan, which saturates near 1 for any
    good match (and Milvus Lite's BM25 scores come negated), so a weak keyword
    list drowns the dense one: on the chatterbot English Q/A set (see
    benchmarks/bench_quality.py) nDCG@10 was 0.17 with it and 0.70 with this.
    """
    scores: dict[int, float] = {}
    texts: dict[int, str] = {}
    if fusion == "rrf":
        for hits in (dense, keyword):
            for rank, h in enumerate(hits, start=1):
                scores[h.row_id] = scores.get(h.row_id, 0.0) + 1.0 / (RRF_K + rank)
                texts[h.row_id] = h.text
    else:
        for hits, w in ((dense, weights[0]), (keyword, weights[1])):
            for rid, norm in _min_max(hits).items():
                scores[rid] = scores.get(rid, 0.0) + w * norm
            for h in hits:
                texts[h.row_id] = h.text
    # Ties (with min-max, the two lists' tops tie whenever the weights are
    # equal) go to the better dense rank: the semantic match first.
    dense_rank = {h.row_id: i for i, h in enumerate(dense)}
    best = sorted(scores.items(), key=lambda kv: (-kv[1], dense_rank.get(kv[0], len(dense)), kv[0]))[:k]
    return [RawHit(rid, s, texts[rid]) for rid, s in best]


def _min_max(hits: Sequence[RawHit]) -> dict[int, float]:
    """Scores mapped to [0, 1] within one list (all 1.0 when they are equal)."""
    if not hits:
        return {}
    lo = min(h.score for h in hits)
    hi = max(h.score for h in hits)
    return {h.row_id: (h.score - lo) / (hi - lo) if hi > lo else 1.0 for h in hits}


__all__ = ["AllowAll", "Hit", "Retrieval", "fuse"]
