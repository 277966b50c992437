"""Permissioned search is exact (equals a brute-force top-k over the visible
rows) and never returns a row outside the caller's bitmap — on Milvus Lite
and on a real Milvus server."""

from __future__ import annotations

import random
import uuid
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from permrag import PermRAG, PermragError, UnsupportedError
from permrag.embed import HashEncoder
from permrag.search import LITE, Planner

from ..conftest import examples
from ..helpers.reference import assert_top_k, dense_scores

WORDS = [f"w{i}" for i in range(400)] + ["budget", "hiring", "apple", "merger", "secret", "roadmap"]
N_ROWS = 2000
FRACTIONS = {"p0001": 2, "p001": 20, "p01": 200, "p05": 1000}  # group → rows (0.1 %, 1 %, 10 %, 50 %)


def make_corpus(seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    groups = [g for g, n in FRACTIONS.items() for _ in range(n)]
    groups += ["rest"] * (N_ROWS - len(groups))
    rng.shuffle(groups)
    docs = []
    for i, g in enumerate(groups):
        docs.append(
            {
                "external_id": f"r{i}",
                "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))),
                "tenant": "acme",
                "attrs": {"grp": g, "dept": rng.choice(["eng", "hr", "sales", "legal"]), "lvl": rng.choice(["1", "2", "3"])},
            }
        )
    for i in range(300):
        docs.append({"external_id": f"o{i}", "text": " ".join(rng.choice(WORDS) for _ in range(8)), "tenant": "other", "attrs": {"grp": "p05"}})
    return docs


@pytest.fixture(scope="module", params=["lite", "server"])
def corpus(request, tmp_path_factory):
    from ..conftest import open_backend

    home = tmp_path_factory.mktemp(f"search-{request.param}")
    rag = open_backend(request.param, home, request, encoder=HashEncoder(64))
    docs = make_corpus()
    rag.add_documents(docs)
    p = rag.policy
    for g in FRACTIONS:
        p.add_role(g, tenant="acme")
        p.grant(g, f"grp:{g}", tenant="acme")
        p.assign(f"user-{g}", g, tenant="acme")
    p.add_role("everyone", tenant="acme")
    p.grant("everyone", "*", tenant="acme")
    p.assign("user-all", "everyone", tenant="acme")
    p.add_role("other-all", tenant="other")
    p.grant("other-all", "*", tenant="other")
    p.assign("outsider", "other-all", tenant="other")
    enc = rag.encoder
    vecs = {d["external_id"]: v for d, v in zip(docs, enc.encode([d["text"] for d in docs]))}
    yield rag, docs, vecs, request.param
    rag.close()


def dense_reference(rag: PermRAG, vecs, user: str, query: str, tenant: str = "acme") -> dict[int, float]:
    """Exact cosine scores of every visible row (brute force)."""
    return dense_scores(rag, vecs, user, query, tenant)


@contextmanager
def through(rag: PermRAG, path: str):
    """Search ``path``: "local" (small visible sets ranked in process,
    search/in_process.py — the default) or "milvus" (every search asks Milvus)."""
    saved = rag.searcher.local
    if path == "milvus":
        rag.searcher.local = None
    try:
        yield
    finally:
        rag.searcher.local = saved


QUERIES = ["budget hiring w3 w17", "apple merger", "w100 w200 w300 roadmap", "secret", "w5"]


@pytest.mark.parametrize("path", ["local", "milvus"])
@pytest.mark.parametrize("user", ["user-p0001", "user-p001", "user-p01", "user-p05", "user-all"])
def test_dense_equals_brute_force_at_every_fraction(corpus, user, path) -> None:
    rag, docs, vecs, _ = corpus
    with through(rag, path):
        for q in QUERIES:
            for k in (1, 10, 50):
                hits = rag.search(q, user=user, tenant="acme", k=k, mode="dense")
                ref = dense_reference(rag, vecs, user, q)
                assert_top_k([h.row_id for h in hits], ref, k)
                assert all(abs(h.score - ref[h.row_id]) < 1e-5 for h in hits)  # Milvus' cosine, on either path
                assert all(h.tenant == "acme" and h.policy_version == rag.policy_version for h in hits)
    assert rag.stats["dropped_hits"] == 0


@pytest.mark.parametrize("user", ["user-p0001", "user-p001", "user-all"])
def test_an_exact_plan_without_ties_asks_milvus_once(corpus, user) -> None:
    """The tie check fetches one row past k: when it scores below the k-th,
    one search is enough (fetching exactly k made every search twice)."""
    rag, docs, vecs, _ = corpus
    assert rag.plan(user, "acme").exact
    rng = np.random.default_rng(3)
    with through(rag, "milvus"):
        _asks_once(rag, vecs, user, rng)


def _asks_once(rag, vecs, user, rng) -> None:
    for _ in range(5):
        q = rng.standard_normal(64).astype(np.float32)
        q /= np.linalg.norm(q)
        recs = rag.rows(rag.visible(user, "acme"))
        ref = {r.row_id: float(np.dot(vecs[r.external_id], q) / np.linalg.norm(vecs[r.external_id])) for r in recs}
        scores = sorted(ref.values(), reverse=True)
        before = rag.stats["milvus_searches"]
        hits = rag.search_many(["q"], user=user, tenant="acme", k=10, mode="dense", vectors=q[None, :])[0]
        assert_top_k([h.row_id for h in hits], ref, 10)
        if len(scores) > 10 and scores[9] - scores[10] > 1e-4:  # no tie at the cut
            assert rag.stats["milvus_searches"] - before == 1


def test_superset_plans_are_exact_too(corpus) -> None:
    rag, docs, vecs, backend = corpus
    with through(rag, "milvus"):  # superset plans are Milvus' (in process, every visible row is scored)
        _superset_exact(rag, docs, vecs)
    assert rag.stats["overfetch_discarded"] > 0 and rag.stats["dropped_hits"] == 0


def _superset_exact(rag, docs, vecs) -> None:
    p = rag.policy
    role = f"scatter-{uuid.uuid4().hex[:6]}"
    p.add_role(role, tenant="acme")
    rng = random.Random(1)
    for d in rng.sample([d for d in docs if d["tenant"] == "acme"], 60):
        p.grant(role, f"doc:{d['external_id']}", tenant="acme")
    p.grant(role, "dept:hr", tenant="acme")
    p.deny(role, "lvl:2", tenant="acme")
    p.assign("scattered", role, tenant="acme")
    saved = rag.planner
    rag.planner = Planner(replace(LITE, max_terms=3, max_ids=5))
    try:
        plan = rag.plan("scattered", "acme")
        assert plan.kind == "filter" and not plan.exact, plan.describe()
        for q in QUERIES:
            hits = rag.search(q, user="scattered", tenant="acme", k=10, mode="dense")
            assert_top_k([h.row_id for h in hits], dense_reference(rag, vecs, "scattered", q), 10)
    finally:
        rag.planner = saved


def _distinct(scores: list[float], n: int) -> bool:
    top = sorted(scores, reverse=True)[: n + 1]
    return len(top) > n and all(a - b > 1e-4 for a, b in zip(top, top[1:]))


@pytest.mark.parametrize("path", ["local", "milvus"])
def test_keyword_and_hybrid_are_exact(corpus, path) -> None:
    rag, docs, vecs, backend = corpus
    with through(rag, path):
        checked = _keyword_and_hybrid(rag, vecs)
    assert checked is None or checked >= 3  # None: no BM25 here, and keyword/hybrid raised


def _keyword_and_hybrid(rag, vecs) -> int | None:
    """Hybrid queries checked against the reference (None without BM25)."""
    if not rag.backend.capabilities.bm25:
        for mode in ("keyword", "hybrid"):
            with pytest.raises(UnsupportedError):
                rag.search("budget", user="user-p01", tenant="acme", mode=mode)
        return None
    user, k = "user-p05", 4  # small k: BM25 ties (equal lengths, one shared term) are rarer at the top
    vis = rag.visible(user, "acme")
    rng = random.Random(3)
    queries = QUERIES + [" ".join(rng.sample(WORDS, 6)) for _ in range(40)]
    hybrid_checked = 0
    for q in queries:
        # BM25 scores do not depend on the filter (rows are in sealed segments):
        # an unfiltered search over every row, filtered afterwards, is the reference.
        everything = rag.search(q, user="user-all", tenant="acme", k=N_ROWS, mode="keyword")
        kw_ref = {h.row_id: h.score for h in everything if h.row_id in vis}
        hits = rag.search(q, user=user, tenant="acme", k=k, mode="keyword")
        assert_top_k([h.row_id for h in hits], kw_ref, k)
        dense_ref = dense_reference(rag, vecs, user, q)
        # RRF ranks are only well defined where neither list ties in its top k.
        if not (_distinct(list(kw_ref.values()), k) and _distinct(list(dense_ref.values()), k)):
            continue
        dense = sorted(dense_ref.items(), key=lambda kv: -kv[1])[:k]
        kw = sorted(kw_ref.items(), key=lambda kv: -kv[1])[:k]
        rrf: dict[int, float] = {}
        for lst in (dense, kw):
            for rank, (rid, _) in enumerate(lst, start=1):
                rrf[rid] = rrf.get(rid, 0.0) + 1 / (60 + rank)
        got = rag.search(q, user=user, tenant="acme", k=k, mode="hybrid", fusion="rrf")
        assert_top_k([h.row_id for h in got], rrf, k, tol=1e-7)
        hybrid_checked += 1
        # weighted: min-max normalised top-k lists, 0.7 dense + 0.3 keyword
        wsum: dict[int, float] = {}
        for lst, w in ((dense, 0.7), (kw, 0.3)):
            lo, hi = lst[-1][1], lst[0][1]
            for rid, sc in lst:
                wsum[rid] = wsum.get(rid, 0.0) + w * ((sc - lo) / (hi - lo) if hi > lo else 1.0)
        weighted = rag.search(q, user=user, tenant="acme", k=k, mode="hybrid", fusion="weighted", weights=(0.7, 0.3), pool=k)
        assert_top_k([h.row_id for h in weighted], wsum, k, tol=1e-5)
    return hybrid_checked


def test_tenants_are_isolated(corpus) -> None:
    rag, *_ = corpus
    assert rag.search("w5 budget", user="outsider", tenant="acme", k=10, mode="dense") == []
    hits = rag.search("w5 budget", user="outsider", tenant="other", k=50, mode="dense")
    assert len(hits) == 50 and all(h.tenant == "other" for h in hits)
    hits = rag.search("w5 budget", user="user-p05", tenant="acme", k=200, mode="dense")
    assert all(h.tenant == "acme" and h.attrs["grp"] == "p05" for h in hits)
    assert rag.search("w5", user="nobody", tenant="acme", mode="dense") == []
    assert rag.plan("nobody", "acme").kind == "deny-all"


SEL = st.one_of(
    st.just("*"),
    st.sampled_from(["eng", "hr", "sales", "legal", "e*", "*s*"]).map(lambda v: f"dept:{v}"),
    st.sampled_from(["1", "2", "3", "*"]).map(lambda v: f"lvl:{v}"),
    st.sampled_from(list(FRACTIONS) + ["rest", "p0*"]).map(lambda v: f"grp:{v}"),
    st.integers(0, N_ROWS - 1).map(lambda i: f"doc:r{i}"),
)


@settings(max_examples=examples(15), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rules=st.lists(st.tuples(SEL, st.booleans()), min_size=1, max_size=6),
    query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join),
    k=st.integers(1, 40),
    path=st.sampled_from(["local", "milvus"]),
)
def test_no_row_outside_the_bitmap_in_any_mode(corpus, rules, query, k, path) -> None:
    rag, docs, vecs, backend = corpus
    with through(rag, path):
        _no_leak(rag, rules, query, k)


def _no_leak(rag, rules, query, k) -> None:
    role = f"h-{uuid.uuid4().hex[:8]}"
    user = f"u-{role}"
    p = rag.policy
    p.add_role(role, tenant="acme")
    for sel, allow in rules:
        (p.grant if allow else p.deny)(role, sel, tenant="acme")
    p.assign(user, role, tenant="acme")
    vis = rag.visible(user, "acme")
    plan = rag.plan(user, "acme")
    if plan.kind != "deny-all":
        # The filter itself, evaluated by Milvus over every row of the class groups the plan names
        # (every row of the tenant's collection if it names none):
        matched = rag.backend.all_ids(rag.catalog.tenants.number("acme"), plan.expr, getattr(plan, "groups", ()))
        assert matched == set(vis) if plan.exact else matched >= set(vis), plan.describe()
    else:
        assert len(vis) == 0
    modes = ["dense"] + (["keyword", "hybrid"] if rag.backend.capabilities.bm25 else [])
    for mode in modes:
        hits = rag.search(query, user=user, tenant="acme", k=k, mode=mode)
        assert {h.row_id for h in hits} <= set(vis), f"leak in mode {mode}"
        if mode != "keyword":
            assert len(hits) == min(k, len(vis)), f"shortfall in mode {mode}"
    p.remove_role(role, tenant="acme")
    assert rag.search(query, user=user, tenant="acme", k=k, mode="dense") == []
    assert rag.stats["dropped_hits"] == 0


def test_bad_search_arguments(corpus) -> None:
    rag, *_ = corpus
    for kwargs in ({"k": 0}, {"k": -3}, {"k": 10**9}, {"mode": "fuzzy"}, {"fusion": "max"}, {"weights": (1,)}):
        with pytest.raises(PermragError):
            rag.search("budget", user="user-all", tenant="acme", **kwargs)
    for q in ("", "   ", "x" * 20_000):
        with pytest.raises(PermragError):
            rag.search(q, user="user-all", tenant="acme")
    with pytest.raises(PermragError, match="shape"):
        rag.search_many(["q"], user="user-all", tenant="acme", mode="dense", vectors=np.zeros((1, 3)))


@pytest.mark.parametrize("mode", ["dense", "hybrid", "keyword"])
def test_a_search_reads_each_hits_record_once(tmp_path, monkeypatch, mode) -> None:
    """The verify step reads the records of the hits it checks, and the hits
    are built from those same records: a request asks the catalog for a
    hit's record once (on every route: in process, Milvus, hybrid fusion)."""
    from permrag.catalog.rows import Rows

    asked: list[int] = []
    real = Rows.records

    def counting(self, row_ids):
        ids = list(row_ids)
        asked.extend(ids)
        return real(self, ids)

    monkeypatch.setattr(Rows, "records", counting)
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(64))
    try:
        rag.add_documents([{"external_id": f"d{i}", "text": f"budget w{i} w{i % 7}", "attrs": {"d": str(i % 3)}} for i in range(60)])
        rag.policy.add_role("r")
        rag.policy.grant("r", "d:1")
        rag.policy.assign("u", "r")
        for local_rows in (None, 0):  # the in-process route, then Milvus only
            if local_rows == 0:
                rag.searcher.local = None
            rag.search("budget w4", user="u", k=5, mode=mode)  # warm: plans, caches
            asked.clear()
            hits = rag.search("budget w4", user="u", k=5, mode=mode)
            assert len(hits) == 5 and all(h.attrs["d"] == "1" for h in hits)
            for h in hits:
                assert asked.count(h.row_id) <= 1, (mode, local_rows, h.row_id, asked.count(h.row_id))
    finally:
        rag.close()


def test_the_plan_cache_keeps_the_plans_searched_most_recently(tmp_path, monkeypatch) -> None:
    """Past MAX_PLANS the least recently used plan goes, not every plan: a user
    who searches all the time keeps its plan while others come and go."""
    import permrag.search.searcher as searcher

    monkeypatch.setattr(searcher, "MAX_PLANS", 4)
    with PermRAG.open(tmp_path / "h", encoder=HashEncoder(16), partitions=0) as rag:
        rag.add_documents([{"external_id": f"d{i}", "text": f"doc {i}", "attrs": {"team": f"t{i}"}} for i in range(8)])
        for i in range(8):
            rag.policy.add_role(f"r{i}")
            rag.policy.grant(f"r{i}", f"team:t{i}")
            rag.policy.assign_user(f"u{i}", f"r{i}")
        hot = rag.access.snapshot("u0", "default")
        plan = rag.searcher.plan(hot)
        for i in range(1, 8):  # seven other users, the hot one between each
            rag.searcher.plan(rag.access.snapshot(f"u{i}", "default"))
            assert rag.searcher._cached(hot) is plan, f"the hot user's plan was dropped after user {i}"
        assert len(rag.searcher._plans) == 4
        assert rag.searcher._cached(rag.access.snapshot("u1", "default")) is None  # the coldest went
