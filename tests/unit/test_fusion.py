"""Fusion alone (search/fusion.py, search/execute.py's ``fuse``), no store:
reciprocal rank fusion and min-max weighted sums against a reference written
from their definitions, the tie order, and the default the quality benchmark
chose. (Fusion inside a store, against brute force: tests/integration/test_fusion_store.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from permrag.backends import RawHit
from permrag.search.execute import fuse
from permrag.search.fusion import DEFAULT_FUSION, DEFAULT_WEIGHTS, POOL_FACTOR, default_pool, min_max, rrf, weighted

from ..conftest import examples


def ranked(ids: list[int], scores: list[float]) -> list[RawHit]:
    return [RawHit(r, s, f"t{r}") for r, s in zip(ids, scores)]


def reference(dense: list[RawHit], keyword: list[RawHit], k: int, fusion: str, weights: tuple[float, float]) -> list[int]:
    """The definitions, written out: RRF Σ 1/(60 + rank); weighted Σ w × (s − min)/(max − min)
    (1 where a list's scores are all equal); best first, ties to the better dense rank, then the ID."""
    total: dict[int, float] = {}
    for hits, w in ((dense, weights[0]), (keyword, weights[1])):
        if not hits:
            continue
        lo, hi = min(h.score for h in hits), max(h.score for h in hits)
        for rank, h in enumerate(hits, start=1):
            part = 1.0 / (60 + rank) if fusion == "rrf" else w * ((h.score - lo) / (hi - lo) if hi > lo else 1.0)
            total[h.row_id] = total.get(h.row_id, 0.0) + part
    dense_rank = {h.row_id: i for i, h in enumerate(dense)}
    return sorted(total, key=lambda r: (-total[r], dense_rank.get(r, len(dense)), r))[:k]


@st.composite
def two_lists(draw):
    pool = draw(st.lists(st.integers(0, 60), min_size=0, max_size=40, unique=True))
    rng = random.Random(draw(st.integers(0, 2**32)))
    dense_ids = rng.sample(pool, rng.randint(0, len(pool)))
    keyword_ids = rng.sample(pool, rng.randint(0, len(pool)))
    # scores best first; a few equal scores (ties) on purpose
    dense = sorted((round(rng.uniform(0, 1), 1) for _ in dense_ids), reverse=True)
    keyword = sorted((round(rng.uniform(0, 20), 0) for _ in keyword_ids), reverse=True)
    return ranked(dense_ids, dense), ranked(keyword_ids, keyword)


@pytest.mark.parametrize("fusion,weights", [("rrf", (0.5, 0.5)), ("weighted", (0.8, 0.2)), ("weighted", DEFAULT_WEIGHTS), ("weighted", (0.0, 1.0))])
@settings(max_examples=examples(200), deadline=None)
@given(lists=two_lists(), k=st.integers(1, 30))
def test_fuse_equals_the_definitions(fusion, weights, lists, k) -> None:
    dense, keyword = lists
    got = fuse(dense, keyword, k, fusion, weights)
    assert [h.row_id for h in got] == reference(dense, keyword, k, fusion, weights)
    by_id = {h.row_id: h for h in keyword} | {h.row_id: h for h in dense}
    for h in got:  # the text and identity of the hit it came from; the fused score
        assert h.text == by_id[h.row_id].text
    assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)


def test_the_parts_by_hand() -> None:
    d, s = ranked([1, 2, 3], [0.9, 0.5, 0.1]), ranked([3, 4], [12.0, 2.0])
    assert rrf([d, s]) == pytest.approx({1: 1 / 61, 2: 1 / 62, 3: 1 / 63 + 1 / 61, 4: 1 / 62})
    assert min_max(d) == pytest.approx({1: 1.0, 2: 0.5, 3: 0.0})
    assert min_max(ranked([7, 8], [3.0, 3.0])) == {7: 1.0, 8: 1.0}  # equal scores: all 1
    assert weighted([d, s], (0.5, 0.5)) == pytest.approx({1: 0.5, 2: 0.25, 3: 0.5, 4: 0.0})
    # 1 and 3 tie at 0.5: the dense list's better rank first
    assert [h.row_id for h in fuse(d, s, 4, "weighted", (0.5, 0.5))] == [1, 3, 2, 4]


def test_default_pool() -> None:
    assert default_pool("rrf", 10, 16384) == 10
    assert default_pool("weighted", 10, 16384) == 10 * POOL_FACTOR
    assert default_pool("weighted", 10, 25) == 25


def test_the_default_fusion_is_the_benchmarks_choice_and_not_below_dense() -> None:
    """benchmarks/bench_quality.py chooses the default fusion on the dev halves
    of its English and Chinese Q/A sets; the library must hold that choice, and
    on the test halves the default must score at least what dense search does."""
    data = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quality.json").read_text())
    choice = data["default_choice"]
    assert (choice["fusion"], tuple(choice["weights"]), choice["pool_factor"]) == (DEFAULT_FUSION, DEFAULT_WEIGHTS, POOL_FACTOR)
    assert choice["not_below_dense_on_dev"]
    for res in data["results"]:
        default = next(m for name, m in res["modes"].items() if name.startswith("default"))
        assert default["ndcg"] >= res["modes"]["dense"]["ndcg"] - 1e-9, res["language"]
