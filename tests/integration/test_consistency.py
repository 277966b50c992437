"""Consistency as a contract (issue 38, points 1 and 2): every answer carries a
token of the versions it was computed under and says whether it is the exact
top-k of what the caller may read; ``at_least=token`` reads another
process's write (SQLite and PostgreSQL, two real processes).

References: casbin's ``enforce`` over the stored rules for what a user may
read, and the brute-force top-k over the visible rows (tests/helpers/reference.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from permrag import ArgumentError, PermRAG, StaleReadError
from permrag.access.consistency import make_token
from permrag.cli import main
from permrag.embed import HashEncoder

from ..helpers.reference import assert_top_k, dense_scores
from ..system.test_multiprocess import Other

DIM = 32
TEXTS = ["budget plan", "leave policy", "travel rules", "salary bands", "merger notes", "holiday calendar", "security review", "office move"]


def _docs() -> list[dict]:
    return [{"external_id": f"d{i}", "text": f"{TEXTS[i % len(TEXTS)]} {i}", "attrs": {"dept": ["eng", "hr", "fin"][i % 3], "lvl": str(i % 2)}} for i in range(30)]


def _open(path, db_url=None, **kw) -> PermRAG:
    return PermRAG.open(path, database_url=db_url, encoder=HashEncoder(DIM), create=True, **kw)


def _policy(rag: PermRAG) -> None:
    p = rag.policy
    for r in ("eng", "hr", "few"):
        p.add_role(r)
    p.grant("eng", "dept:eng")
    p.grant("hr", "dept:hr")
    p.grant("few", "doc:d1")
    p.grant("few", "doc:d2")
    p.assign_user("ann", "eng")
    p.assign_user("bob", "hr")
    p.assign_user("cy", "few")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("cons") / "home"
    rag = _open(home)
    rag.add_documents(_docs())
    _policy(rag)
    vectors = {d["external_id"]: rag.encoder.encode([d["text"]])[0] for d in _docs()}
    yield rag, vectors
    rag.close()


def _readable(rag: PermRAG, user: str) -> set[int]:
    e = rag.enforcer()
    return {r.row_id for r in rag.rows(rag.catalog.tenant("default").rows) if e.enforce(user, "default", r, "read")}


def _audits(rag: PermRAG) -> int:
    return len(rag.audit_log(limit=100000))


# ---------------------------------------------------------------------- tokens
def test_tokens_are_strict_and_bound_to_their_store(world, tmp_path) -> None:
    rag, _ = world
    tok = rag.consistency_token()
    hits = rag.search("budget", user="ann", k=3, at_least=tok)
    assert hits.consistency_token == tok and hits.policy_version == rag.policy_version and hits.catalog_version == rag.catalog_version
    other = PermRAG.open(tmp_path / "other", catalog_only=True, create=True)
    foreign = other.consistency_token()
    other.close()
    assert foreign.split(".")[1:3] != tok.split(".")[1:3] or foreign != tok
    head, p, c, mac = tok.split(".")
    bad = [
        foreign,
        "",
        "pr1",
        tok + " ",
        tok.upper(),
        f"{head}.{int(p) + 1}.{c}.{mac}",
        f"{head}.{p}.{c}.{'0' * 16}",
        f"pr2.{p}.{c}.{mac}",
        f"{head}.0{p}.{c}.{mac}",
        f"{head}.-1.{c}.{mac}",
        7,
        None and 1,
        b"pr1",
    ]
    before = _audits(rag)
    for token in bad:
        if token is None:
            continue
        with pytest.raises(ArgumentError):
            rag.search("budget", user="ann", k=3, at_least=token)
    assert _audits(rag) == before, "a refused read left an audit record"


def test_a_token_the_store_never_reaches_is_a_stale_read(world) -> None:
    rag, _ = world
    ahead = make_token(rag._engine, rag.policy_version + 5, rag.catalog_version)
    before, t0 = _audits(rag), time.monotonic()
    with pytest.raises(StaleReadError, match="nothing was answered"):
        rag.searcher.search_many(["budget"], user="ann", tenant="default", k=3, at_least=ahead, wait=0.3)
    assert 0.3 <= time.monotonic() - t0 < 2.0
    with pytest.raises(StaleReadError):
        rag.wait_for(ahead, wait=0.05)
    assert _audits(rag) == before


def test_a_write_token_is_reached_at_once_without_a_query(world, monkeypatch) -> None:
    """When this process already reflects the token, at_least costs no database read."""
    rag, _ = world
    tok = rag.consistency_token()
    calls = []
    monkeypatch.setattr(rag.access, "versions", lambda: calls.append(1) or {})
    rag.wait_for(tok)
    assert calls == []


# ---------------------------------------------------------------------- completeness
@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_completeness_against_brute_force(world, mode) -> None:
    """visible_rows is casbin's count; complete and reason follow the top-k (dense: ranked in
    process for a small set, hybrid: through Milvus' filter)."""
    rag, vectors = world
    for user, k in (("ann", 3), ("ann", 25), ("cy", 5), ("nobody", 4), ("bob", 10)):
        hits = rag.search("budget plan", user=user, k=k, mode=mode)
        seen = _readable(rag, user)
        assert hits.visible_rows == len(seen)
        assert {h.row_id for h in hits} <= seen
        if mode == "dense":
            assert_top_k([h.row_id for h in hits], dense_scores(rag, vectors, user, "budget plan"), k)
        assert hits.complete is True
        want = None if len(seen) >= k else ("deny_all" if not seen else "fewer_visible")
        assert (len(hits), hits.reason) == (min(k, len(seen)), want), (user, k)


def test_keyword_search_says_fewer_matches(world) -> None:
    rag, _ = world
    hits = rag.search("merger", user="ann", k=10, mode="keyword")
    matching = {r.row_id for r in rag.rows(_readable(rag, "ann")) if "merger" in rag.fetch(r.external_id, user="ann")[0].text}
    assert {h.row_id for h in hits} == matching and len(matching) < 10
    assert (hits.complete, hits.reason, hits.visible_rows) == (True, "fewer_matches", len(_readable(rag, "ann")))


def test_partitioned_store_and_retrieve_carry_the_fields(tmp_path) -> None:
    """A store grouped into partitions (the partition route) and multi-stage retrieval."""
    rag = _open(tmp_path / "g", partitions=4, partition_by="visibility")
    try:
        rag.add_documents(_docs())
        _policy(rag)
        for user in ("ann", "cy", "nobody"):
            hits = rag.search("budget", user=user, k=4, mode="hybrid")
            n = len(_readable(rag, user))
            assert (hits.visible_rows, len(hits), hits.complete) == (n, min(4, n), True)
            got = rag.retrieve("budget", user=user, k=4)
            assert got.visible_rows == n and got.consistency_token == hits.consistency_token
    finally:
        rag.close()


# ---------------------------------------------------------------------- faces
def test_every_face_carries_token_and_completeness(world) -> None:
    from permrag.integrations.langchain import as_retriever

    rag, _ = world
    lib = rag.search("leave policy", user="cy", k=5, mode="dense")
    want = lib.contract()
    assert want["reason"] == "fewer_visible" and want["visible_rows"] == 2

    docs = as_retriever(rag, user="cy", k=5, mode="dense").invoke("leave policy")
    assert docs and all({k: d.metadata[k] for k in want} == want for d in docs)
    docs = as_retriever(rag, user="cy", k=5, mode="dense", at_least=lib.consistency_token).invoke("leave policy")
    assert docs[0].metadata["consistency_token"] == lib.consistency_token

    from permrag.integrations.llamaindex import retriever as li_retriever

    nodes = li_retriever(rag, user="cy", k=5, mode="dense", at_least=lib.consistency_token).retrieve("leave policy")
    assert nodes and all({k: n.node.metadata[k] for k in want} == want for n in nodes)

    from mcp import Client

    from permrag.mcp.auth import Principal
    from permrag.mcp.server import build_server

    async def mcp() -> dict:
        async with Client(build_server(rag, principal=Principal("cy"))) as client:
            res = await client.call_tool("search", {"query": "leave policy", "k": 5, "mode": "dense", "at_least": lib.consistency_token})
            bad = await client.call_tool("search", {"query": "leave policy", "at_least": "pr1.x"})
            return {"ok": res.structured_content, "bad": bad.is_error, "text": bad.content[0].text}

    got = asyncio.run(mcp())
    assert {k: got["ok"][k] for k in ("consistency_token", "complete", "visible_rows", "reason")} == {k: want[k] for k in ("consistency_token", "complete", "visible_rows", "reason")}
    assert got["bad"] and "not a consistency token" in got["text"]


def test_cli_prints_the_contract_and_takes_at_least(world) -> None:
    rag, _ = world
    home = rag.settings.home
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, ["--home", str(home), *args], catch_exceptions=False)

    res = cli("consistency-token")
    assert res.exit_code == 0 and res.output.strip() == rag.consistency_token()
    tok = res.output.strip()
    res = cli("search", "leave policy", "--as", "cy", "--k", "5", "--mode", "dense", "--json", "--contract", "--at-least", tok)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {k: data[k] for k in ("consistency_token", "complete", "visible_rows", "reason")} == {"consistency_token": tok, "complete": True, "visible_rows": 2, "reason": "fewer_visible"}
    assert len(data["hits"]) == 2
    plain = json.loads(cli("search", "leave policy", "--as", "cy", "--mode", "dense", "--json").output)
    assert [h["consistency_token"] for h in plain] == [tok, tok]
    res = runner.invoke(main, ["--home", str(home), "search", "leave", "--as", "cy", "--at-least", "pr1.1.1.zz"])
    assert res.exit_code == 1 and res.output.startswith("error: at_least") and "Traceback" not in res.output


# ---------------------------------------------------------------------- read-your-writes across processes
@pytest.fixture
def ryw(tmp_path, db_url):
    rag = _open(tmp_path / "a", db_url)
    rag.add_documents(_docs())
    _policy(rag)
    vectors = {d["external_id"]: rag.encoder.encode([d["text"]])[0] for d in _docs()}
    other = Other(tmp_path / "b", rag.settings.database_url)
    yield rag, other, vectors
    other.close()
    rag.close()


def test_another_process_revoke_is_never_read_past_with_its_token(ryw) -> None:
    """The other process revokes and hands over its token; every at_least search here
    answers at or past that version and never shows the revoked rows — and a grant's
    token shows the granted rows at once (the exact top-k of what casbin allows)."""
    rag, other, vectors = ryw
    rng = np.random.default_rng(7)
    for i in range(6):
        sel = f"doc:d{int(rng.integers(0, 30))}"
        if i % 2 == 0:
            assert "error" not in other("policy.grant", "eng", sel)
        else:
            other("policy.revoke", "eng", sel)
        tok = other("consistency_token")["ok"]
        hits = rag.search("budget plan", user="ann", k=30, mode="dense", at_least=tok)
        assert hits.policy_version >= int(tok.split(".")[1])
        allowed = _readable(rag, "ann")
        assert {h.row_id for h in hits} == allowed  # k covers everything ann may read
        assert_top_k([h.row_id for h in hits], dense_scores(rag, vectors, "ann", "budget plan"), 30)


def test_at_least_waits_for_the_other_process_commit(ryw) -> None:
    """A token of a version not yet committed: the read waits, re-checking the stored
    versions, and answers once the other process commits it."""
    rag, other, _ = ryw
    target = make_token(rag._engine, rag.policy_version + 1, rag.catalog_version)
    out: dict = {}

    def read() -> None:
        t0 = time.monotonic()
        out["hits"] = rag.searcher.search_many(["budget"], user="ann", tenant="default", k=30, mode="dense", at_least=target, wait=10)[0]
        out["took"] = time.monotonic() - t0

    th = threading.Thread(target=read)
    th.start()
    time.sleep(0.4)
    assert "hits" not in out
    other("policy.revoke", "eng", "dept:eng")
    th.join(15)
    assert out["took"] >= 0.3 and out["hits"].policy_version == rag.policy_version
    assert list(out["hits"]) == [] and out["hits"].reason == "deny_all"


def test_permissioned_wrappers_take_at_least(ryw) -> None:
    """LangChain's and LlamaIndex's ``permissioned()`` take ``at_least`` (LangChain: as a
    field and per call): a token of a version not yet committed makes the wrapper wait
    for the other process's deny, and it then serves exactly what casbin allows; a bad
    token (or an unknown per-call option) is an error, and nothing is audited."""
    from langchain_core.documents import Document
    from llama_index.core.retrievers import BaseRetriever as LlamaRetriever
    from llama_index.core.schema import NodeWithScore, TextNode

    from permrag.integrations.langchain import permissioned as lc_permissioned
    from permrag.integrations.llamaindex import permissioned as li_permissioned

    from ..integration.test_langchain import ListRetriever

    class NodeList(LlamaRetriever):
        def __init__(self, nodes: list) -> None:
            self.nodes = nodes
            super().__init__()

        def _retrieve(self, query_bundle) -> list:
            return list(self.nodes)

    rag, other, _ = ryw
    metas = [{"external_id": d["external_id"], "tenant": "default"} for d in _docs()]
    lc_inner = ListRetriever(docs=[Document(page_content=m["external_id"], metadata=m) for m in metas], k=30)
    li_inner = NodeList([NodeWithScore(node=TextNode(id_=m["external_id"], text="x", metadata=m), score=1.0) for m in metas])

    def allowed() -> set[str]:
        mine = _readable(rag, "ann")
        return {r.external_id for r in rag.rows(rag.catalog.tenant("default").rows) if r.row_id in mine}

    lc = lc_permissioned(lc_inner, rag, user="ann", k=30)
    assert {d.metadata["external_id"] for d in lc.invoke("q", at_least=rag.consistency_token())} == allowed() != set()
    before = _audits(rag)
    for bad in (lambda: lc.invoke("q", at_least="pr1.x"), lambda: lc.invoke("q", mode="dense"), lambda: lc_permissioned(lc_inner, rag, user="ann", at_least="pr1.1.1.zz").invoke("q")):
        with pytest.raises(ArgumentError):
            bad()
    with pytest.raises(ArgumentError):
        li_permissioned(li_inner, rag, user="ann", at_least=7).retrieve("q")
    assert _audits(rag) == before, "a refused read left an audit record"

    target = make_token(rag._engine, rag.policy_version + 1, rag.catalog_version)
    readers = {
        "langchain, per call": lambda: [d.metadata["external_id"] for d in lc.invoke("q", at_least=target)],
        "langchain, field": lambda: [d.metadata["external_id"] for d in lc_permissioned(lc_inner, rag, user="ann", k=30, at_least=target).invoke("q")],
        "llamaindex": lambda: [n.node.node_id for n in li_permissioned(li_inner, rag, user="ann", k=30, at_least=target).retrieve("q")],
    }
    out: dict = {}
    threads = [threading.Thread(target=lambda n=n, f=f: out.__setitem__(n, f())) for n, f in readers.items()]
    for th in threads:
        th.start()
    time.sleep(0.4)
    assert out == {}, "a wrapper answered before the store reached its token"
    assert other("policy.deny", "eng", "doc:d3") == {"ok": True}
    for th in threads:
        th.join(15)
    want = allowed()
    assert "d3" not in want and want
    assert {n: set(v) for n, v in out.items()} == dict.fromkeys(readers, want)
