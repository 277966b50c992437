"""Ingest, chunking, delete/update, reopen, backend failure and the verify step."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pyroaring import FrozenBitMap

from permrag import BackendError, CatalogError, PermRAG
from permrag.embed import HashEncoder, RandomEncoder
from permrag.search import Filter
from permrag.search.execute import Executor

from .conftest import milvus_ids

LONG = " ".join(f"sentence{i} about the quarterly budget." for i in range(120))


@pytest.fixture
def lite(tmp_path):
    rag = PermRAG.open(tmp_path / "home", encoder=HashEncoder(32), chunk_size=300, chunk_overlap=30)
    yield rag
    rag.close()


def setup_policy(rag: PermRAG) -> None:
    p = rag.policy
    p.add_role("all")
    p.grant("all", "*")
    p.assign("root", "all")
    p.add_role("memo")
    p.grant("memo", "doc:memo")
    p.assign("mia", "memo")


def test_long_documents_become_chunks_that_keep_their_parent(lite) -> None:
    ids = lite.add_documents([{"external_id": "memo", "text": LONG, "attrs": {"dept": "fin"}}, {"external_id": "short", "text": "hello"}])
    recs = lite.rows(ids)
    chunks = [r for r in recs if r.parent == "memo"]
    assert len(chunks) == len(ids) - 1 > 5
    assert all(r.external_id.startswith("memo#") and r.attrs == {"dept": "fin"} for r in chunks)
    setup_policy(lite)
    assert set(lite.visible("mia")) == {r.row_id for r in chunks}  # doc:memo selects every chunk
    hits = lite.search("quarterly budget", user="mia", k=50, mode="keyword")
    assert {h.row_id for h in hits} <= set(lite.visible("mia")) and hits and all(h.parent == "memo" for h in hits)
    assert all(len(h.text) <= 300 for h in hits)


def test_delete_and_replace_keep_everything_in_step(lite) -> None:
    lite.add_documents([{"external_id": "memo", "text": LONG}, {"external_id": "a", "text": "alpha budget"}])
    setup_policy(lite)
    before = len(lite.visible("root"))
    assert lite.delete(["memo"]) == before - 1
    assert len(lite.visible("root")) == 1 and len(lite.visible("mia")) == 0
    assert milvus_ids(lite) == set(lite.visible("root"))
    assert [h.external_id for h in lite.search("budget", user="root", k=10)] == ["a"]
    ids = lite.add_documents([{"external_id": "a", "text": "gamma forecast"}], replace=True)
    assert milvus_ids(lite) == set(ids) == set(lite.visible("root"))
    assert lite.search("gamma", user="root", k=1, mode="keyword")[0].text == "gamma forecast"
    assert lite.delete(["no-such"]) == 0


def test_reopen_searches_without_reingesting(tmp_path) -> None:
    home = tmp_path / "h"
    with PermRAG.open(home, encoder=HashEncoder(32)) as rag:
        rag.add_documents([{"external_id": f"d{i}", "text": f"doc {i} budget"} for i in range(20)])
        setup_policy(rag)
        first = [h.row_id for h in rag.search("budget", user="root", k=5, mode="dense")]
    with PermRAG.open(home, encoder=HashEncoder(32)) as again:
        assert [h.row_id for h in again.search("budget", user="root", k=5, mode="dense")] == first
    with pytest.raises(Exception, match="64-dim|32-dim"):
        with PermRAG.open(home, encoder=HashEncoder(64)) as wrong:
            wrong.search("budget", user="root", k=5)


def test_a_milvus_failure_writes_nothing(tmp_path) -> None:
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(32), milvus_uri="http://127.0.0.1:9")
    with pytest.raises(BackendError):
        rag.add_documents([{"external_id": "x", "text": "hello"}])
    assert rag.catalog_version == 0 and rag.catalog.by_state("pending") == []
    rag.close()


def test_bad_documents_write_nothing(lite) -> None:
    lite.add_documents([{"external_id": "ok", "text": "fine"}])
    version = lite.catalog_version
    for docs in ([{"external_id": "n", "text": ""}], [{"external_id": "n"}], [{"external_id": "n", "text": "t"}, {"external_id": "ok", "text": "dup"}]):
        with pytest.raises(CatalogError):
            lite.add_documents(docs)
    assert lite.catalog_version == version and milvus_ids(lite) == set(lite.catalog.tenant_rows("default"))


def test_progress_is_reported(lite) -> None:
    seen = []
    lite.add_documents([{"external_id": f"d{i}", "text": f"t {i}"} for i in range(25)], batch_size=10, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(10, 25), (20, 25), (25, 25)]


def test_verify_drops_hits_a_filter_let_through(lite, caplog) -> None:
    """Simulate a backend that ignores the ID part of a filter: the plan claims
    to be exact but filters nothing. Verify must drop, log and count."""
    from dataclasses import replace

    lite.add_documents([{"external_id": f"d{i}", "text": f"budget {i}"} for i in range(30)])
    setup_policy(lite)
    visible = FrozenBitMap(list(lite.catalog.tenant_rows("default"))[:5])
    snap = replace(lite.snapshot("root"), visible=visible)
    lying = Filter("default", "", "ranges", True, 5, 5, 0, 0, 0.0)
    vec = lite.encoder.encode(["budget"])
    ex = Executor(lite.store, lite.catalog.tenants.number("default"), lite.catalog.rows.records, lite.stats)
    with caplog.at_level(logging.WARNING, logger="permrag.security"):
        out = ex.run(lying, snap, "dense", vec, ["budget"], 10)
    assert {h.row_id for h in out[0]} <= set(visible)
    assert lite.stats["dropped_hits"] > 0
    assert any("outside the caller's bitmap" in r.message for r in caplog.records)


def test_hnsw_index_recall(tmp_path) -> None:
    rag = PermRAG.open(tmp_path / "h", encoder=RandomEncoder(64), index="HNSW")
    docs = [{"external_id": f"d{i}", "text": f"doc {i}", "attrs": {"g": f"g{i % 10}"}} for i in range(3000)]
    rag.add_documents(docs)
    p = rag.policy
    p.add_role("r")
    p.grant("r", "g:g1")
    p.grant("r", "g:g2")
    p.assign("u", "r")
    vecs = rag.encoder.encode([d["text"] for d in docs])
    ids = rag.rows(rag.visible("u"))
    by_ext = {d["external_id"]: v for d, v in zip(docs, vecs)}
    recalls = []
    for i in range(30):
        q = f"query {i}"
        qv = rag.encoder.encode([q])[0]
        exact = {r.row_id for r in sorted(ids, key=lambda r: -float(by_ext[r.external_id] @ qv))[:10]}
        got = {h.row_id for h in rag.search(q, user="u", k=10, mode="dense")}
        recalls.append(len(got & exact) / 10)
    rag.close()
    assert np.mean(recalls) >= 0.99
