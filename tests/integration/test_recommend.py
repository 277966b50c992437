"""Recommendations share one search per distinct bitmap; similar() and
add_generated() refuse what the caller may not read."""

from __future__ import annotations

import pytest

from permrag import AccessDeniedError, PermRAG
from permrag.embed import RandomEncoder


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    rag = PermRAG.open(tmp_path_factory.mktemp("rec") / "h", encoder=RandomEncoder(32))
    rag.add_documents([{"external_id": f"d{i}", "text": f"item {i}", "attrs": {"team": f"t{i % 4}"}} for i in range(400)])
    p = rag.policy
    for t in range(4):
        p.add_role(f"t{t}")
        p.grant(f"t{t}", f"team:t{t}")
    users = []
    for i in range(12):  # three distinct role sets
        u = f"u{i}"
        for t in [(0,), (1, 2), (3,)][i % 3]:
            p.assign(u, f"t{t}")
        users.append(u)
    yield rag, users
    rag.close()


@pytest.mark.parametrize("path", ["local", "milvus"])
def test_one_search_per_distinct_bitmap(shop, path) -> None:
    rag, users = shop
    saved = rag.searcher.local
    if path == "milvus":
        rag.searcher.local = None
    try:
        searches = _one_search_per_bitmap(rag, users)
    finally:
        rag.searcher.local = saved
    assert searches == 3  # five users, three distinct bitmaps: one search each, in Milvus or ranked in process


def _one_search_per_bitmap(rag, users) -> int:
    vecs = RandomEncoder(32).encode([f"taste of {u}" for u in users])
    before = rag.stats["milvus_searches"] + rag.stats["local_searches"]
    recs = rag.recommend(vecs, users=users, k=5)
    searches = rag.stats["milvus_searches"] + rag.stats["local_searches"] - before
    for u, v in zip(users, vecs):
        solo = rag.search_many(["x"], user=u, k=5, mode="dense", vectors=v[None, :])[0]
        assert [h.row_id for h in recs[u]] == [h.row_id for h in solo]
        assert {h.row_id for h in recs[u]} <= set(rag.visible(u))
    out = rag.recommend(RandomEncoder(32).encode(["a"]), users=["stranger"], k=5)
    assert out == {"stranger": []}
    return searches


def test_similar_refuses_an_unreadable_seed(shop) -> None:
    rag, users = shop
    with pytest.raises(AccessDeniedError):
        rag.similar("d1", user="u0")  # u0 sees team t0 only; d1 is t1
    hits = rag.similar("d4", user="u0", k=5)
    assert len(hits) == 5 and "d4" not in {h.external_id for h in hits}
    assert {h.row_id for h in hits} <= set(rag.visible("u0"))


def test_generated_rows_need_every_source(shop) -> None:
    rag, users = shop
    # u1 reads teams t1 and t2; u4 too; u2 reads t3 only.
    (gid,) = rag.add_generated("summary of d1 and d2", sources=["d1", "d2"], user="u1", external_id="sum-1")
    assert gid in rag.visible("u1") and gid in rag.visible("u4")
    assert gid not in rag.visible("u0")  # sees neither source
    p = rag.policy
    p.add_role("only-t1")
    p.grant("only-t1", "team:t1")
    p.assign("partial", "only-t1")  # sees d1 but not d2
    assert gid not in rag.visible("partial")
    assert rag.explain("partial", "sum-1").decision == "derived"
    assert "sum-1" not in {h.external_id for h in rag.search("summary of d1 and d2", user="partial", k=50, mode="dense")}
    with pytest.raises(AccessDeniedError):
        rag.add_generated("leak", sources=["d1", "d3"], user="u1")  # d3 is team t3
    assert rag.row("sum-1").derived_from
