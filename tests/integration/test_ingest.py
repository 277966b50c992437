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

from ..conftest import milvus_ids

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
    ex = Executor(lite.backend, lite.catalog.tenants.number("default"), lite.catalog.rows.records, lite.stats)
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


def test_chunk_ids_and_texts_over_the_limits_write_nothing(tmp_path) -> None:
    """A chunk's id (``<id>#<n>``) must fit MAX_ID and its text MAX_TEXT_BYTES
    (UTF-8): either refused, the whole call writes nothing; just within both, it goes in."""
    from permrag.backends import MAX_TEXT_BYTES
    from permrag.domain.names import MAX_ID

    with PermRAG.open(tmp_path / "h", encoder=HashEncoder(32), chunk_size=300, chunk_overlap=30) as rag:
        n = len(rag.ingester.chunker.chunks(LONG))
        assert 10 < n <= 100
        fits, over = "d" * (MAX_ID - 3), "d" * (MAX_ID - 2)  # ids up to <id>#99 / <id>#10 and more
        with pytest.raises(CatalogError, match="chunk id"):
            rag.add_documents([{"external_id": "first", "text": "fine"}, {"external_id": over, "text": LONG}])
        assert rag.catalog_version == 0 and milvus_ids(rag) == set()
        ids = rag.add_documents([{"external_id": fits, "text": LONG}])
        assert [r.external_id for r in rag.rows(ids)][-1] == f"{fits}#{n - 1}"
    # sized in tokens (the hash encoder's words), a chunk of few tokens can be many bytes
    with PermRAG.open(tmp_path / "w", encoder=HashEncoder(32), chunk_size=10_000, chunk_overlap=0, chunk_unit="tokens") as rag:
        word = "\u00e9" * 8  # 16 bytes in UTF-8, one token
        over = " ".join([word] * (MAX_TEXT_BYTES // 17 + 1))  # 17 bytes a word with its space
        assert len(over.encode()) > MAX_TEXT_BYTES and len(over) * 4 > MAX_TEXT_BYTES
        with pytest.raises(CatalogError, match=f"over {MAX_TEXT_BYTES} bytes"):
            rag.add_documents([{"external_id": "ok", "text": "fine"}, {"external_id": "big", "text": over}])
        assert rag.catalog_version == 0 and milvus_ids(rag) == set()
        edge = " ".join([word] * (MAX_TEXT_BYTES // 17))
        assert len(edge.encode()) <= MAX_TEXT_BYTES < len(edge) * 4  # just fits, though a count of characters could not tell
        rag.add_documents([{"external_id": "edge", "text": edge}, {"external_id": "ascii", "text": "a" * 16_000}])
        assert len(rag.catalog.tenant_rows("default")) == 2


def test_an_ingest_stopped_by_its_progress_callback_flushes_what_it_wrote(lite) -> None:
    """Milvus Lite's rows are flushed after each ingest (its BM25 statistics
    for unflushed rows depend on the filter); a callback that raises after
    the first batch leaves that batch written and flushed."""
    store = lite.backend
    real, flushes = store.flush, []
    store.flush = lambda no: (flushes.append(no), real(no))[1]

    def stop(done: int, total: int) -> None:
        if done >= 10:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            lite.add_documents([{"external_id": f"d{i}", "text": f"note {i} about budgets"} for i in range(25)], batch_size=10, progress=stop)
        assert len(flushes) == 1
        assert len(lite.catalog.tenant_rows("default")) == 10 and milvus_ids(lite) == set(lite.catalog.tenant_rows("default"))
    finally:
        store.flush = real


def test_vectors_encoded_in_slices_for_progress_are_in_the_texts_order(lite, monkeypatch) -> None:
    """With a progress callback a batch is encoded in slices, longest texts
    first; every row still gets its own text's vector (the hash encoder is
    exact per text), and progress counts rows encoded."""
    monkeypatch.setattr("permrag.ingest.ingest.ENCODE_STEP", 7)
    texts = [f"{'word ' * ((i * 7919) % 23)}text {i}" for i in range(40)]
    seen = []
    vectors = lite.ingester._encode(texts, seen.append)
    assert np.array_equal(vectors, lite.ingester.binding.encode(texts))
    assert seen == [7, 14, 21, 28, 35]
    ids = lite.add_documents([{"external_id": f"d{i}", "text": t} for i, t in enumerate(texts)], progress=lambda d, t: None)
    stored = {
        r["row_id"]: np.asarray(r["dense"], dtype=np.float32)
        for r in lite.backend.client().query(lite.backend.name(lite.catalog.tenants.number("default")), filter="row_id >= 0", output_fields=["row_id", "dense"])
    }
    assert all(np.allclose(stored[i], v, atol=1e-6) for i, v in zip(ids, lite.ingester.binding.encode(texts)))
