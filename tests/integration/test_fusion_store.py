"""Hybrid fusion in a store, over candidate pools larger than k: checked against a reference (the same Milvus searches with an explicit ``row_id in [visible]`` filter, fused by the same function) on Milvus' path and in process; the reranker seam."""

from __future__ import annotations

import random

import pytest

from permrag import ArgumentError, ConfigError, PermRAG
from permrag.embed import HashEncoder
from permrag.search.execute import canonical, fuse
from permrag.search.fusion import DEFAULT_FUSION, DEFAULT_WEIGHTS, default_pool

WORDS = ["budget", "leave", "travel", "hotel", "pension", "laptop", "badge", "salary", "audit", "policy", "report", "review", "security", "training"]


DEPTS = ["hr", "eng", "fin", "ops"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rng = random.Random(7)
    rag = PermRAG.open(tmp_path_factory.mktemp("fusion") / "h", encoder=HashEncoder(32), chunk_size=4000)
    docs = [{"external_id": f"d{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))), "attrs": {"dept": rng.choice(DEPTS)}} for i in range(400)]
    rag.add_documents(docs)
    p = rag.policy
    p.add_role("all")
    p.grant("all", "*")
    p.assign_user("root", "all")
    for d in DEPTS:
        p.add_role(d)
        p.grant(d, f"dept:{d}")
    p.assign_user("h", "hr")
    p.assign_user("he", "hr")
    p.assign_user("he", "eng")
    yield rag
    rag.close()


def reference(rag: PermRAG, user: str, query: str, k: int, pool: int, fusion: str, weights=(0.5, 0.5), near: list | None = None) -> list[int]:
    """Each list over every visible row (exact ``row_id in`` filter, no cutoff
    inside a tie), best first with ties by row ID, cut to the pool, fused.
    ``near`` collects whether the dense list has two scores closer than
    float32 rounding could tell apart in its pool (and just past it)."""
    visible = rag.visible(user)
    expr = f"row_id in [{', '.join(map(str, sorted(visible)))}]"
    no = rag.catalog.tenants.number("default")
    vec = rag.encoder.encode([query])
    full = [canonical(rag.backend.search(no, m, vectors=vec, texts=[query], expr=expr, limit=len(visible))[0]) for m in ("dense", "keyword")]
    if near is not None:
        top = [h.score for h in full[0][: pool + 1]]
        near.append(any(0 < a - b < 1e-5 for a, b in zip(top, top[1:])))
    lists = [f[:pool] for f in full]
    return [h.row_id for h in fuse(lists[0], lists[1], k, fusion, weights)]


QUERIES = [
    "hotel travel budget",
    "pension salary review",
    "laptop security training",
    "audit report",
    "badge",
    "hotel travel budget policy review",
    "pension salary audit report security",
    "laptop badge training leave",
]


@pytest.mark.parametrize("path", ["milvus", "local"])
@pytest.mark.parametrize("user", ["root", "h", "he"])
@pytest.mark.parametrize("fusion,weights", [("rrf", (0.5, 0.5)), ("weighted", (0.8, 0.2))])
def test_hybrid_with_pools_equals_the_exact_filtered_reference(world, user, fusion, weights, path) -> None:
    """On Milvus' path the reference's searches are the same computation: equal
    lists. Ranked in process (search/in_process.py), the dense scores are the same
    cosine in another float32 summation order, so two rows a few 1e-8 apart
    may swap: the lists must be equal wherever no such near-tie exists."""
    saved = world.searcher.local
    if path == "milvus":
        world.searcher.local = None
    checked = 0
    try:
        for q in QUERIES:
            for pool in (None, 10, 25, 100):
                got = [h.row_id for h in world.search(q, user=user, k=10, fusion=fusion, weights=weights, pool=pool)]
                near: list[bool] = []
                want = reference(world, user, q, 10, pool or default_pool(fusion, 10, 16384), fusion, weights, near)
                assert set(got) <= set(world.visible(user))
                if path == "milvus" or not near[0]:
                    assert got == want, (q, pool)
                    checked += 1
    finally:
        world.searcher.local = saved
    assert checked >= 5  # of 32 (this corpus of short texts is full of near-ties)


def test_pools_larger_than_k_change_what_fusion_sees(world) -> None:
    differs = 0
    for q in QUERIES:
        default = [h.row_id for h in world.search(q, user="root", k=10)]  # weighted fusion over the top 4k
        assert default == [h.row_id for h in world.search(q, user="root", k=10, fusion=DEFAULT_FUSION, weights=DEFAULT_WEIGHTS, pool=40)]
        rrf = [h.row_id for h in world.search(q, user="root", k=10, fusion="rrf")]
        assert rrf == [h.row_id for h in world.search(q, user="root", k=10, fusion="rrf", pool=10)]  # RRF's default pool is k
        differs += rrf != [h.row_id for h in world.search(q, user="root", k=10, fusion="rrf", pool=50)]
    assert differs > 0  # fusing more candidates changes some rankings
    with pytest.raises(ArgumentError):
        world.search("x", user="root", pool=0)


def test_a_callable_reranker_orders_verified_hits(world) -> None:
    seen = []

    def by_length(query, hits):
        seen.extend(h.row_id for h in hits)
        return [-len(h.text) for h in hits]

    hits = world.retrieve("hotel travel budget", user="h", k=5, candidates=20, rerank=by_length, merge_parents=False)
    assert [len(h.text) for h in hits] == sorted(len(h.text) for h in hits)
    assert set(seen) <= set(world.visible("h")) and len(seen) == 20


def test_a_cross_encoder_like_model_is_used_through_predict(world) -> None:
    class Model:  # the sentence-transformers CrossEncoder interface: predict(pairs) -> scores; also callable
        def __init__(self):
            self.pairs = []

        def predict(self, pairs):
            self.pairs.extend(pairs)
            return [p[1].count("hotel") for p in pairs]

        def __call__(self, *a):
            raise AssertionError("a model with predict() is not called directly")

    m = Model()
    hits = world.retrieve("hotel", user="he", k=5, candidates=30, rerank=m, merge_parents=False)
    counts = [h.text.count("hotel") for h in hits]
    assert counts == sorted(counts, reverse=True) and all(p[0] == "hotel" for p in m.pairs)
    with pytest.raises(ArgumentError):
        world.retrieve("hotel", user="he", rerank=42)
    with pytest.raises(ConfigError):
        world.retrieve("hotel", user="he", rerank=lambda q, hs: [1.0])
