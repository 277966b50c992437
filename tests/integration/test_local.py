"""Small visible sets ranked in process (search/in_process.py): exact against brute
force and against the Milvus path, no Milvus search once the rows are read, no
row outside the snapshot, forged rows dropped, bounded memory, and correct
after another process replaced, deleted and re-permissioned rows — on Milvus
Lite and on a real server."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from permrag import ConfigError, PermRAG
from permrag.embed import HashEncoder
from permrag.search.in_process import InProcessRanker

from ..conftest import open_backend
from ..helpers.reference import assert_top_k, text_scores

ROOT = Path(__file__).resolve().parents[2]
ENC = HashEncoder(48)
WORDS = [f"w{i}" for i in range(300)] + ["budget", "roadmap", "hiring"]
DEPTS = ["eng", "hr", "sales", "legal", "ops"]
QUERIES = ["budget w1 w2", "roadmap hiring", "w7", "w100 w101 w102 w103"]


def _docs(n: int, seed: int = 4) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        d = {"external_id": f"d{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))), "tenant": "acme", "attrs": {"dept": DEPTS[i % 5], "lvl": str(i % 3)}}
        if i % 11 == 0:  # document ACLs cut across classes
            d["acl"] = {"allow": [f"user:acl-{i % 4}"]}
        docs.append(d)
    return docs


@pytest.fixture(scope="module", params=["lite", "server"])
def world(request, tmp_path_factory):
    rag = open_backend(request.param, tmp_path_factory.mktemp(f"local-{request.param}"), request, encoder=ENC)
    docs = _docs(1200)
    rag.add_documents(docs)
    p = rag.policy
    for d in DEPTS:
        p.add_role(d, tenant="acme")
        p.grant(d, f"dept:{d}", tenant="acme")
        p.assign_user(f"u-{d}", d, tenant="acme")
    p.add_role("eng-l1", tenant="acme")
    p.grant("eng-l1", "dept:eng", tenant="acme")
    p.deny("eng-l1", "lvl:0", tenant="acme")
    p.assign_user("narrow", "eng-l1", tenant="acme")
    text = {d["external_id"]: d["text"] for d in docs}
    yield rag, text
    rag.close()


USERS = ["u-eng", "narrow", "acl-0", "acl-3", "u-hr"]


def reference(rag: PermRAG, text: dict[str, str], user: str, query: str) -> dict[int, float]:
    """Exact cosine of every visible row, from the texts the test wrote."""
    return text_scores(rag, ENC, text, user, query, "acme")


class Calls:
    """Counts what the backend is asked (wraps the real methods; nothing is faked)."""

    def __init__(self, backend) -> None:
        self.backend, self.n = backend, {"search": 0, "stored": 0}
        self.real = {name: getattr(backend, name) for name in self.n}
        for name in self.n:
            setattr(backend, name, self._counting(name))

    def _counting(self, name):
        def call(*a, **kw):
            self.n[name] += 1
            return self.real[name](*a, **kw)

        return call

    def restore(self) -> None:
        for name, fn in self.real.items():
            setattr(self.backend, name, fn)


@pytest.mark.parametrize("user", USERS)
def test_in_process_ranking_equals_brute_force_and_the_milvus_path(world, user) -> None:
    rag, text = world
    assert rag.plan(user, "acme").kind == "filter"
    before = rag.stats["local_searches"]
    for q in QUERIES:
        ref = reference(rag, text, user, q)
        for k in (1, 10, 60):
            local = rag.search(q, user=user, tenant="acme", k=k, mode="dense")
            assert_top_k([h.row_id for h in local], ref, k)
            assert all(abs(h.score - ref[h.row_id]) < 1e-5 for h in local)
            assert {h.row_id for h in local} <= set(rag.visible(user, "acme"))
            saved, rag.searcher.local = rag.searcher.local, None
            try:
                milvus = rag.search(q, user=user, tenant="acme", k=k, mode="dense")
            finally:
                rag.searcher.local = saved
            assert [h.external_id for h in local] == [h.external_id for h in milvus] or _tied(local, milvus)
            assert [h.text for h in local] == [text[h.external_id] for h in local]
    assert rag.stats["local_searches"] - before == len(QUERIES) * 3
    assert rag.stats["dropped_hits"] == 0


def test_each_search_takes_one_route_decided_once(world) -> None:
    """Deny, in process or Milvus is decided once per search (search/execute.py
    ``Route``) and the search goes that way: a small dense set ranks here, the
    same search without in-process ranking asks Milvus, a user who sees nothing
    reaches no backend."""
    rag, _ = world
    user = USERS[1]
    counts = lambda: {k: rag.stats[f"route:{k}"] for k in ("deny", "here", "milvus")}  # noqa: E731
    local, searches = rag.stats["local_searches"], rag.stats["milvus_searches"]
    start = counts()
    rag.search("budget", user=user, tenant="acme", k=5, mode="dense")
    assert counts()["here"] == start["here"] + 1 and rag.stats["local_searches"] == local + 1 and rag.stats["milvus_searches"] == searches
    saved, rag.searcher.local = rag.searcher.local, None
    try:
        rag.search("budget", user=user, tenant="acme", k=5, mode="dense")
    finally:
        rag.searcher.local = saved
    assert counts()["milvus"] == start["milvus"] + 1 and rag.stats["milvus_searches"] > searches
    searches = rag.stats["milvus_searches"]
    assert rag.search("budget", user="nobody-at-all", tenant="acme", k=5, mode="dense") == []
    assert counts()["deny"] == start["deny"] + 1 and rag.stats["milvus_searches"] == searches and rag.stats["local_searches"] == local + 1


def _tied(a, b) -> bool:
    return len(a) == len(b) and all(abs(x.score - y.score) < 1e-5 for x, y in zip(a, b))


def test_once_read_a_visible_set_costs_no_milvus_call(world) -> None:
    rag, text = world
    calls = Calls(rag.backend)
    try:
        rag.searcher.local.clear()
        first = rag.search("budget w1", user="u-sales", tenant="acme", k=10, mode="dense")
        assert calls.n == {"search": 0, "stored": 1}  # one primary-key read of the visible rows
        for q in QUERIES:
            hits = rag.search(q, user="u-sales", tenant="acme", k=10, mode="dense")
            assert_top_k([h.row_id for h in hits], reference(rag, text, "u-sales", q), 10)
        assert calls.n == {"search": 0, "stored": 1}
        # a second user whose rows are cached already (a subset of u-sales') reads nothing either
        rag.policy.add_role("sales-l2", tenant="acme")
        rag.policy.grant("sales-l2", "dept:sales", tenant="acme")
        rag.policy.deny("sales-l2", "lvl:1", tenant="acme")
        rag.policy.assign_user("sally", "sales-l2", tenant="acme")
        hits = rag.search("budget w1", user="sally", tenant="acme", k=10, mode="dense")
        assert_top_k([h.row_id for h in hits], reference(rag, text, "sally", "budget w1"), 10)
        assert calls.n == {"search": 0, "stored": 1}
        # hybrid: the dense half in process, the keyword half in Milvus
        if rag.backend.capabilities.bm25:
            rag.search("budget w1", user="u-sales", tenant="acme", k=10, mode="hybrid")
            assert calls.n == {"search": 1, "stored": 1}
        assert len(first) == 10
    finally:
        calls.restore()


def test_sets_larger_than_local_rows_go_to_milvus(world) -> None:
    rag, text = world
    saved = rag.searcher.local
    rag.searcher.local = InProcessRanker(max_rows=50)
    calls = Calls(rag.backend)
    try:
        assert len(rag.visible("u-eng", "acme")) > 50
        hits = rag.search("budget w1", user="u-eng", tenant="acme", k=10, mode="dense")
        assert calls.n["search"] >= 1 and calls.n["stored"] == 0
        assert_top_k([h.row_id for h in hits], reference(rag, text, "u-eng", "budget w1"), 10)
    finally:
        calls.restore()
        rag.searcher.local = saved


class CountingPlanner:
    """The store's real planner, with its calls counted."""

    def __init__(self, real) -> None:
        self.real, self.calls = real, 0

    def plan(self, *a, **kw):
        self.calls += 1
        return self.real.plan(*a, **kw)


def test_a_set_ranked_in_process_is_not_planned(world) -> None:
    """Choosing a filter form costs more than ranking 100s of rows, so a dense
    search ranked in process plans none; hybrid (its keyword half is a Milvus
    search) and sets over local_rows are planned as before; every result is
    brute-force exact."""
    rag, text = world
    saved_planner, saved_local = rag.searcher.planner, rag.searcher.local
    counting = CountingPlanner(saved_planner())
    rag.searcher.planner = lambda: counting
    rag.searcher._plans.clear()
    try:
        rag.policy.add_role("ops-l2", tenant="acme")  # a fresh bitmap: no cached plan
        rag.policy.grant("ops-l2", "dept:ops", tenant="acme")
        rag.policy.deny("ops-l2", "lvl:2", tenant="acme")
        rag.policy.assign_user("olga", "ops-l2", tenant="acme")
        for q in QUERIES:
            hits = rag.search(q, user="olga", tenant="acme", k=10, mode="dense")
            assert_top_k([h.row_id for h in hits], reference(rag, text, "olga", q), 10)
            assert {h.row_id for h in hits} <= set(rag.visible("olga", "acme"))
        assert counting.calls == 0
        if rag.backend.capabilities.bm25:
            rag.search("budget w1", user="olga", tenant="acme", k=10, mode="hybrid")
            assert counting.calls == 1
        rag.searcher.local = InProcessRanker(max_rows=50)
        hits = rag.search("budget w1", user="olga", tenant="acme", k=10, mode="dense")
        assert_top_k([h.row_id for h in hits], reference(rag, text, "olga", "budget w1"), 10)
        assert counting.calls >= 1
    finally:
        rag.searcher.planner, rag.searcher.local = saved_planner, saved_local


@pytest.mark.parametrize("backend", ["lite", "server"])
def test_in_process_plan_of_a_dropped_collection_finds_nothing(backend, tmp_path, request) -> None:
    """Dropped behind permrag's back, a tenant's collection holds no row to
    return: a small set's dense search gives none and never asks Milvus for an
    unfiltered search (an in-process plan carries no filter)."""
    rag = open_backend(backend, tmp_path / "h", request, encoder=ENC)
    rag.add_documents(_docs(200))
    rag.policy.add_role("eng", tenant="acme")
    rag.policy.grant("eng", "dept:eng", tenant="acme")
    rag.policy.assign_user("e", "eng", tenant="acme")
    assert len(rag.search("budget", user="e", tenant="acme", k=5, mode="dense")) == 5
    no = rag.catalog.tenants.number("acme")
    rag.backend.client().drop_collection(rag.backend.name(no))
    calls = Calls(rag.backend)
    try:
        assert len(rag.search("budget", user="e", tenant="acme", k=5, mode="dense")) == 0
        assert calls.n["search"] == 0
        # not read back yet: the read-back (beside the collection check) fails on the
        # dropped collection, and the check's answer decides: nothing, not an error
        rag.searcher.local.clear()
        assert len(rag.search("budget", user="e", tenant="acme", k=5, mode="dense")) == 0
        assert calls.n["search"] == 0
    finally:
        calls.restore()
        rag.close()


def test_forged_stored_rows_are_dropped_in_process_too(world, caplog) -> None:
    """A row whose tenant or external id as stored in Milvus disagrees with the
    catalog is dropped and logged, as on the Milvus path."""
    rag, text = world
    saved = rag.searcher.local
    rag.searcher.local = InProcessRanker()
    backend = rag.backend
    real = backend.stored

    def forged(tenant_no, row_ids, fields=("text", "dense"), **kw):
        out = real(tenant_no, row_ids, fields, **kw)
        ids = sorted(out)
        out[ids[0]] = {**out[ids[0]], "tenant": "other"}
        out[ids[1]] = {**out[ids[1]], "external_id": "forged"}
        return out

    backend.stored = forged
    before = rag.stats["mismatched_hits"]
    try:
        with caplog.at_level(logging.WARNING, logger="permrag.security"):
            n = len(rag.visible("u-ops", "acme"))
            hits = rag.search("budget", user="u-ops", tenant="acme", k=n, mode="dense")
        assert len(hits) == n - 2 and all(h.external_id in text and h.tenant == "acme" for h in hits)
        assert rag.stats["mismatched_hits"] - before == 2
        assert any("disagree with the catalog" in r.message for r in caplog.records)
        # k smaller than the set: the search ranks past the dropped rows and still returns k
        top = rag.search("budget", user="u-ops", tenant="acme", k=5, mode="dense")
        assert len(top) == 5 and "forged" not in {h.external_id for h in top}
    finally:
        backend.stored = real
        rag.searcher.local = saved


def test_the_cache_stays_within_its_budget(world) -> None:
    rag, text = world
    saved = rag.searcher.local
    small = rag.searcher.local = InProcessRanker(cache_mb=0.05)  # about 200 rows of 48 dims with texts
    try:
        for user in USERS + [f"u-{d}" for d in DEPTS]:
            for q in QUERIES[:2]:
                hits = rag.search(q, user=user, tenant="acme", k=10, mode="dense")
                assert_top_k([h.row_id for h in hits], reference(rag, text, user, q), 10)
            used = small.memory()
            assert used["bytes"] <= used["budget_bytes"] and used["copy_bytes"] <= used["copy_budget_bytes"]
    finally:
        rag.searcher.local = saved


def test_local_rows_must_be_a_non_negative_integer(tmp_path) -> None:
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(ConfigError, match="local_rows"):
            PermRAG.open(tmp_path / "h", encoder=ENC, local_rows=bad)
    with PermRAG.open(tmp_path / "h", encoder=ENC, local_rows=0) as rag:
        rag.add_documents(_docs(40))
        rag.policy.add_role("eng", tenant="acme")
        rag.policy.grant("eng", "dept:eng", tenant="acme")
        rag.policy.assign_user("e", "eng", tenant="acme")
        assert len(rag.search("budget", user="e", tenant="acme", k=5, mode="dense")) == 5
        assert rag.stats["local_searches"] == 0 and rag.stats["milvus_searches"] >= 1


def test_cache_mb_is_checked_sets_the_budget_and_is_reported(tmp_path) -> None:
    for bad in (0, -5, 1.5, "512", True, None):
        with pytest.raises(ConfigError, match="cache_mb"):
            PermRAG.open(tmp_path / "h", encoder=ENC, cache_mb=bad)
    with PermRAG.open(tmp_path / "h", encoder=ENC, cache_mb=1) as rag:
        docs = _docs(200)
        rag.add_documents(docs)
        rag.policy.add_role("eng", tenant="acme")
        rag.policy.grant("eng", "dept:eng", tenant="acme")
        rag.policy.assign_user("e", "eng", tenant="acme")
        hits = rag.search("budget", user="e", tenant="acme", k=5, mode="dense")
        assert_top_k([h.row_id for h in hits], text_scores(rag, ENC, {d["external_id"]: d["text"] for d in docs}, "e", "budget", "acme"), 5)
        used = rag.cache_memory()
        assert used["budget_bytes"] == 2**20 and 0 < used["bytes"] <= used["budget_bytes"]
        assert used["rows"] == len(rag.visible("e", "acme")) and used["sets"] == 1


CHANGER = textwrap.dedent(
    """
    import sys
    from permrag import PermRAG
    from permrag.embed import HashEncoder
    home, db, uri, coll = sys.argv[1:5]
    with PermRAG.open(home, database_url=db, milvus_uri=uri, collection=coll, encoder=HashEncoder(48), consistency="Strong") as rag:
        rag.add_documents([{"external_id": "d0", "text": "budget budget replaced text", "tenant": "acme", "attrs": {"dept": "eng", "lvl": "0"}}], replace=True)
        rag.delete(["d5"], tenant="acme")
        rag.update_metadata("d10", tenant="acme", attrs={"dept": "hr", "lvl": "1"})
        rag.add_documents([{"external_id": "new1", "text": "budget w1 fresh row", "tenant": "acme", "attrs": {"dept": "eng", "lvl": "2"}}])
    """
)


@pytest.mark.parametrize("read", ["by-search", "background"])
def test_another_process_replacing_deleting_and_moving_rows(read, tmp_path, pg_url, milvus_server) -> None:
    """Process A fills its cache (read back by a search, or — for a set over
    ``local_rows`` — in the background); process B (PostgreSQL, same Milvus
    server) replaces, deletes, re-permissions and adds rows; A's next searches
    equal brute force over the new state and never return a retired row."""
    coll = f"c_{uuid.uuid4().hex[:10]}"
    sizes = {"local_rows": 5, "prefetch_rows": 10_000} if read == "background" else {}
    rag = PermRAG.open(tmp_path / "a", database_url=pg_url, milvus_uri=milvus_server, collection=coll, encoder=ENC, consistency="Strong", **sizes)
    docs = _docs(200)
    rag.add_documents(docs)
    rag.policy.add_role("eng", tenant="acme")
    rag.policy.grant("eng", "dept:eng", tenant="acme")
    rag.policy.assign_user("e", "eng", tenant="acme")
    text = {d["external_id"]: d["text"] for d in docs}
    for q in QUERIES:
        rag.search(q, user="e", tenant="acme", k=40, mode="dense")  # the cache now holds every eng row
        assert rag.searcher.local.wait(60)
    old_ids = {r.row_id for r in rag.rows(rag.visible("e", "acme"))}
    assert rag.stats["local_searches"] >= len(QUERIES) - (read == "background")
    done = subprocess.run([sys.executable, "-c", CHANGER, str(tmp_path / "b"), pg_url, milvus_server, coll], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text.update({"d0": "budget budget replaced text", "new1": "budget w1 fresh row"})
    now = {r.external_id: r.row_id for r in rag.rows(rag.visible("e", "acme"))}
    assert "d0" in now and "new1" in now and "d5" not in now and "d10" not in now
    retired = old_ids - set(now.values())
    assert len(retired) == 3  # d0's old row, d5, d10
    local_before = rag.stats["local_searches"]
    for q in QUERIES + ["budget budget replaced"]:
        hits = rag.search(q, user="e", tenant="acme", k=40, mode="dense")
        assert_top_k([h.row_id for h in hits], reference(rag, text, "e", q), 40)
        assert not {h.row_id for h in hits} & retired
        assert all(h.text == text[h.external_id] for h in hits)
        assert rag.searcher.local.wait(60)
    assert rag.stats["local_searches"] - local_before >= len(QUERIES)  # the new set ranked in process too
    assert rag.stats["dropped_hits"] == 0
    rag.close()


def test_warm_loads_every_collection_and_reads_back_what_will_be_ranked(tmp_path) -> None:
    """After ``warm()`` a new process's first searches read nothing back and
    make no Milvus call, and still equal brute force."""
    home = tmp_path / "h"
    docs = _docs(300)
    with PermRAG.open(home, encoder=ENC) as rag:
        rag.add_documents(docs)
        rag.add_documents([{**d, "tenant": "beta"} for d in _docs(30, seed=9)])
        for t in ("acme", "beta"):
            rag.policy.add_role("eng", tenant=t)
            rag.policy.grant("eng", "dept:eng", tenant=t)
            rag.policy.assign_user("e", "eng", tenant=t)
    text = {d["external_id"]: d["text"] for d in docs}
    with PermRAG.open(home, encoder=ENC, local_rows=100) as rag:  # acme (300 rows) is too big to read whole
        steps = rag.warm(users=["e"], tenant="acme")
        assert set(steps) == {"connect", "encoder", "collections", "users"}
        calls = Calls(rag.backend)
        try:
            for q in QUERIES:
                hits = rag.search(q, user="e", tenant="acme", k=10, mode="dense")
                assert_top_k([h.row_id for h in hits], reference(rag, text, "e", q), 10)
                assert len(rag.search(q, user="e", tenant="beta", k=3, mode="dense")) == 3
            assert calls.n == {"search": 0, "stored": 0}
        finally:
            calls.restore()
    with PermRAG.open(home, encoder=ENC, local_rows=0) as rag:  # nothing is read back when nothing is ranked in process
        calls = Calls(rag.backend)
        try:
            rag.warm(users=["e"], tenant="acme")
            assert calls.n["stored"] == 0
        finally:
            calls.restore()


@pytest.mark.parametrize("backend", ["lite", "server"])
def test_two_stores_on_one_milvus_never_share_read_back_rows(backend, tmp_path, request) -> None:
    """Two stores (catalogs) on one Milvus, in one process, each with a tenant
    "acme" — tenant number 1 in both — rank in process side by side: each
    answers from its own rows only, equal to brute force over them."""
    uri = request.getfixturevalue("milvus_server") if backend == "server" else str(tmp_path / "shared.db")
    stores, texts = [], []
    for name in ("one", "two"):
        rag = PermRAG.open(tmp_path / name, milvus_uri=uri, collection=f"{name}_{uuid.uuid4().hex[:6]}", encoder=ENC, consistency="Strong")
        docs = [{**d, "external_id": f"{name}-{d['external_id']}"} for d in _docs(150, seed=len(stores) + 11)]
        rag.add_documents(docs)
        rag.policy.add_role("eng", tenant="acme")
        rag.policy.grant("eng", "dept:eng", tenant="acme")
        rag.policy.assign_user("e", "eng", tenant="acme")
        assert rag.catalog.tenants.number("acme") == 1
        stores.append(rag)
        texts.append({d["external_id"]: d["text"] for d in docs})
    try:
        for _ in range(2):  # the second round answers from the read-back rows
            for (name, rag), text in zip(zip(("one", "two"), stores), texts):
                for q in QUERIES:
                    hits = rag.search(q, user="e", tenant="acme", k=20, mode="dense")
                    assert hits and all(h.external_id.startswith(f"{name}-") and h.text == text[h.external_id] for h in hits)
                    assert_top_k([h.row_id for h in hits], reference(rag, text, "e", q), 20)
        assert all(r.stats["local_searches"] >= 2 * len(QUERIES) and r.stats["dropped_hits"] == 0 for r in stores)
    finally:
        for rag in stores:
            rag.close()


def test_a_larger_set_is_read_back_in_the_background(world) -> None:
    """A set over ``local_rows`` (up to ``prefetch_rows``): its first search goes
    to Milvus and queues a background read; once read, its searches make no
    Milvus call and no read, and equal brute force — the dense half of hybrid
    too. A policy change makes a new set: Milvus again, then in process again,
    exact on the new state throughout."""
    rag, text = world
    saved = rag.searcher.local
    rag.searcher.local = local = InProcessRanker(max_rows=50, prefetch_rows=1_000)
    calls = Calls(rag.backend)
    try:
        rag.policy.add_role("eng-all", tenant="acme")
        rag.policy.grant("eng-all", "dept:eng", tenant="acme")
        rag.policy.assign_user("erin", "eng-all", tenant="acme")
        assert 50 < len(rag.visible("erin", "acme")) <= 1_000
        hits = rag.search("budget w1", user="erin", tenant="acme", k=10, mode="dense")
        assert_top_k([h.row_id for h in hits], reference(rag, text, "erin", "budget w1"), 10)
        assert calls.n["search"] >= 1  # not read yet: Milvus' filtered search
        assert local.wait(60) and local.prefetched == 1 and calls.n["stored"] >= 1
        before = dict(calls.n)
        for q in QUERIES:
            hits = rag.search(q, user="erin", tenant="acme", k=10, mode="dense")
            assert_top_k([h.row_id for h in hits], reference(rag, text, "erin", q), 10)
        assert calls.n == before  # ranked in process: no search, no read
        if rag.backend.capabilities.bm25:
            rag.search("budget w1", user="erin", tenant="acme", k=10, mode="hybrid")
            assert calls.n == {"search": before["search"] + 1, "stored": before["stored"]}  # the keyword half only
        # a policy change: a new bitmap, not built yet (its rows are) — exact on the new state throughout
        rag.policy.deny("eng-all", "lvl:0", tenant="acme")
        hidden = {r.row_id for r in rag.rows(rag.visible("u-eng", "acme"))} - set(rag.visible("erin", "acme"))
        assert hidden
        searched = calls.n["search"]
        for i, q in enumerate(QUERIES):
            hits = rag.search(q, user="erin", tenant="acme", k=10, mode="dense")
            assert_top_k([h.row_id for h in hits], reference(rag, text, "erin", q), 10)
            assert not {h.row_id for h in hits} & hidden
            assert i == 0 or calls.n["search"] == searched  # the first may go to Milvus (its rows are cached: the build is quick); then in process
            assert local.wait(60)
            searched = calls.n["search"]
        assert local.prefetched == 2
    finally:
        calls.restore()
        local.close()
        rag.searcher.local = saved


def test_sets_over_prefetch_rows_or_the_cache_are_never_read_back(world) -> None:
    rag, text = world
    saved = rag.searcher.local
    calls = Calls(rag.backend)
    try:
        for local in (InProcessRanker(max_rows=50, prefetch_rows=100), InProcessRanker(max_rows=50, cache_mb=0.01, prefetch_rows=1_000)):
            rag.searcher.local = local
            for q in QUERIES:
                hits = rag.search(q, user="u-eng", tenant="acme", k=10, mode="dense")
                assert_top_k([h.row_id for h in hits], reference(rag, text, "u-eng", q), 10)
            assert local.wait(60) and local.prefetched == 0
            local.close()
        assert calls.n["stored"] == 0 and calls.n["search"] >= 2 * len(QUERIES)
    finally:
        calls.restore()
        rag.searcher.local = saved


def test_close_stops_the_background_reader(tmp_path) -> None:
    rag = PermRAG.open(tmp_path / "h", encoder=ENC, local_rows=5, prefetch_rows=10_000)
    rag.add_documents(_docs(300))
    rag.policy.add_role("eng", tenant="acme")
    rag.policy.grant("eng", "*", tenant="acme")
    rag.policy.assign_user("e", "eng", tenant="acme")
    assert len(rag.search("budget", user="e", tenant="acme", k=5, mode="dense")) == 5  # allow-all, 300 rows: queued
    worker = rag.searcher.local._worker
    assert worker is not None
    rag.close()  # while it reads, or after
    assert not worker.is_alive()
    with PermRAG.open(tmp_path / "h", encoder=ENC, local_rows=0) as off:
        assert off.searcher.local.prefetch_rows == 0  # local_rows=0: nothing ranked in process, nothing read in the background
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ConfigError, match="prefetch_rows"):
            PermRAG.open(tmp_path / "h", encoder=ENC, prefetch_rows=bad)


def test_a_forked_child_gets_fresh_locks_and_no_reader() -> None:
    """Forked while the parent's reader held the cache lock, a child can still use
    its cache (the lock, and the thread holding it, do not exist in the child)."""
    import os
    import time

    local = InProcessRanker(max_rows=10, prefetch_rows=1_000)
    with local._lock:  # as the background reader holds it mid-update
        pid = os.fork()
        if pid == 0:  # the child: must not block on the parent's lock
            code = 0 if local.wait(2) and local._worker is None else 3
            local.clear()
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child blocked on the parent's cache lock")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


def _round(rag, text, users, ranker, rounds: int, after=None) -> None:
    """Each user searches in turn, ``rounds`` times; every answer is brute-force exact and
    the cache stays within its budget."""
    for _ in range(rounds):
        for user in users:
            hits = rag.search("budget w1", user=user, tenant="acme", k=10, mode="dense")
            assert_top_k([h.row_id for h in hits], reference(rag, text, user, "budget w1"), 10)
            ranker.wait()
            used = ranker.memory()
            assert used["bytes"] <= used["budget_bytes"] and used["copy_bytes"] <= used["copy_budget_bytes"]
            if after is not None:
                after(user)


def _bytes_per_row(rag, user: str) -> float:
    probe = InProcessRanker()
    snap = rag.access.snapshot(user, "acme")
    probe.prefill(rag.backend, rag.catalog.tenants.number("acme"), snap.visible, snap.tenant_rows)
    used = probe.memory()
    return used["bytes"] / used["rows"]


def test_the_sets_of_many_users_share_their_rows(world) -> None:
    """Overlapping visible sets hold each row once: the cache's rows are the union of the sets."""
    rag, text = world
    saved = rag.searcher.local
    ranker = rag.searcher.local = InProcessRanker()
    try:
        users = ["u-eng", "narrow", "acl-0", "acl-1", "u-hr"]
        _round(rag, text, users, ranker, 1)
        tenant = rag.catalog.tenant_rows("acme")
        union = set()
        for u in users:
            union |= set(rag.visible(u, "acme") & tenant)
        assert sum(len(rag.visible(u, "acme") & tenant) for u in users) > len(union)  # the sets overlap
        assert ranker.memory()["rows"] == len(union)
    finally:
        rag.searcher.local = saved


def test_users_in_turn_keep_what_fits_and_read_nothing_again(world) -> None:
    """A round of users whose sets do not fit the cache together: the sets searched
    recently stay, the others go to Milvus without being read back again — no set takes
    turns in the cache — and every answer stays exact."""
    rag, text = world
    saved = rag.searcher.local
    per_row = _bytes_per_row(rag, "u-eng")
    sizes = {u: len(rag.visible(u, "acme") & rag.catalog.tenant_rows("acme")) for u in [f"u-{d}" for d in DEPTS]}
    budget_rows = 2.5 * max(sizes.values())  # two sets fit, not three
    ranker = rag.searcher.local = InProcessRanker(max_rows=1, prefetch_rows=10_000, cache_mb=budget_rows * per_row / 2**20)
    calls = Calls(rag.backend)
    try:
        users = [f"u-{d}" for d in DEPTS]
        _round(rag, text, users, ranker, 1)  # each set's first search goes to Milvus and queues its background read
        assert ranker.prefetched == 2 and ranker.memory()["sets"] == 2
        calls.n.update(search=0, stored=0)
        local = rag.stats["local_searches"]
        _round(rag, text, users, ranker, 2)
        assert calls.n["stored"] == 0  # nothing read back again
        assert rag.stats["local_searches"] - local == 2 * 2  # the two sets kept are ranked in process
        assert calls.n["search"] == 2 * 3  # the three others ask Milvus
    finally:
        calls.restore()
        rag.searcher.local = saved


@pytest.mark.parametrize("copy_mb", [0, 128], ids=["ranked-from-the-arena", "ranked-from-copies"])
def test_a_cache_too_small_for_the_round_evicts_the_least_recent_and_stays_exact(world, monkeypatch, copy_mb) -> None:
    """With no set protected (RECENT_S = 0), a round larger than the cache rebuilds the
    arena around the sets searched last: every answer exact, memory within budget,
    and the sets kept across a rebuild ranked from the new arena."""
    import permrag.search.in_process as in_process

    rag, text = world
    monkeypatch.setattr(in_process, "RECENT_S", 0.0)
    saved = rag.searcher.local
    per_row = _bytes_per_row(rag, "u-eng")
    ranker = rag.searcher.local = InProcessRanker(cache_mb=600 * per_row / 2**20, copy_mb=copy_mb)  # two department sets of 240 rows fit, not three
    users = [f"u-{d}" for d in DEPTS] + ["narrow", "acl-2"]
    try:
        _round(rag, text, users, ranker, 2)
        assert ranker.memory()["rows"] * per_row <= ranker.budget
        assert ranker.memory()["sets"] < len(users)  # sets were evicted to make room
    finally:
        rag.searcher.local = saved
