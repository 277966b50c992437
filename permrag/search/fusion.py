"""Fusing ranked lists: reciprocal rank fusion and min-max weighted sums.

One implementation for every place that fuses: hybrid search (a dense and a
keyword list) and RAG-Fusion (one list per query variant).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Protocol

RRF_K = 60  # reciprocal-rank constant (as Milvus' RRFRanker)

# The default fusion of hybrid search, chosen by the quality benchmark on
# the dev half of its English and Chinese Q/A sets: the setting whose worse
# gain over dense search, across both languages, is largest, so that the
# default never ranks below dense search (RRF and weighted fusion that leans
# on BM25 do, in English). A test holds these to the benchmark's recorded
# choice.
DEFAULT_FUSION = "weighted"
DEFAULT_WEIGHTS = (0.98, 0.02)  # dense, keyword
POOL_FACTOR = 4  # weighted fusion without ``pool`` fuses each list's top 4·k


def default_pool(fusion: str, k: int, limit: int) -> int:
    """Candidates per list before fusion when the caller names no ``pool``:
    the top k for RRF (a larger pool makes RRF worse), 4·k for weighted fusion."""
    return min(k * POOL_FACTOR, limit) if fusion == "weighted" else k


class Ranked(Protocol):
    @property
    def row_id(self) -> int: ...

    @property
    def score(self) -> float: ...


def rrf(lists: Iterable[Sequence[Ranked]]) -> dict[int, float]:
    """Reciprocal rank fusion: row ID → Σ 1 / (60 + rank)."""
    scores: dict[int, float] = {}
    for hits in lists:
        for rank, h in enumerate(hits, start=1):
            scores[h.row_id] = scores.get(h.row_id, 0.0) + 1.0 / (RRF_K + rank)
    return scores


def min_max(hits: Sequence[Ranked]) -> dict[int, float]:
    """Scores mapped to [0, 1] within one list (all 1.0 when they are equal)."""
    if not hits:
        return {}
    lo = min(h.score for h in hits)
    hi = max(h.score for h in hits)
    return {h.row_id: (h.score - lo) / (hi - lo) if hi > lo else 1.0 for h in hits}


def weighted(lists: Sequence[Sequence[Ranked]], weights: Sequence[float]) -> dict[int, float]:
    """Σ weight × min-max normalised score, per row ID.

    Milvus' own WeightedRanker squashes BM25 with arctan, which saturates
    near 1 for any good match (and Milvus Lite's BM25 scores come negated), so
    a weak keyword list drowns the dense one (see the benchmarks' quality
    page for the measurement).
    """
    scores: dict[int, float] = {}
    for hits, w in zip(lists, weights):
        for rid, norm in min_max(hits).items():
            scores[rid] = scores.get(rid, 0.0) + w * norm
    return scores


def order(scores: dict[int, float], tiebreak: Sequence[Ranked] = ()) -> list[int]:
    """Row IDs by score, best first; ties go to the better rank in
    ``tiebreak`` (the dense list: the semantic match first), then the ID."""
    rank: dict[Hashable, int] = {h.row_id: i for i, h in enumerate(tiebreak)}
    return sorted(scores, key=lambda rid: (-scores[rid], rank.get(rid, len(rank)), rid))
