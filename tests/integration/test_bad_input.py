"""Bad input everywhere: a clear PermragError, and nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest

from permrag import BackendError, CatalogError, ConfigError, PermRAG, PermragError, UnknownTenantError
from permrag.embed import HashEncoder

from ..conftest import milvus_ids


def _state(rag: PermRAG) -> tuple:
    """Everything a failed call must leave as it was."""
    return (
        rag.catalog_version,
        rag.policy_version,
        len(rag.catalog.live_ids()),
        len(rag.catalog.by_state("pending")),
        rag.policy.export_csv(),
    )


@pytest.fixture
def store(tmp_path):
    rag = PermRAG.open(tmp_path / "home", encoder=HashEncoder(64))
    rag.add_documents([{"external_id": f"d{i}", "text": f"budget plan {i}", "attrs": {"dept": "eng"}} for i in range(20)])
    rag.policy.add_role("eng")
    rag.policy.grant("eng", "dept:eng")
    rag.policy.assign("ann", "eng")
    yield rag
    rag.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query": ""}, "non-empty"),
        ({"query": "   "}, "non-empty"),
        ({"query": "x" * 10_001}, "at most"),
        ({"k": 0}, "k must be"),
        ({"k": -3}, "k must be"),
        ({"k": 10**9}, "k must be"),
        ({"k": True}, "k must be"),
        ({"k": 2.5}, "k must be"),
        ({"mode": "sql"}, "mode must be"),
        ({"fusion": "max"}, "fusion must be"),
        ({"weights": (1.0, -1.0)}, "weights"),
        ({"user": ""}, "user must be"),
        ({"user": None}, "user must be"),
        ({"tenant": ""}, "tenant must be"),
    ],
)
def test_bad_search_arguments(store, kwargs, message):
    args = {"query": "budget", "user": "ann", "k": 5} | kwargs
    before = _state(store)
    with pytest.raises(PermragError, match=message):
        store.search(args.pop("query"), **args)
    assert _state(store) == before


def test_unknown_tenant_is_an_error_and_unknown_user_sees_nothing(store):
    with pytest.raises(UnknownTenantError, match="unknown tenant 'acmee'"):
        store.search("budget", user="ann", tenant="acmee")
    with pytest.raises(UnknownTenantError):
        store.recommend(np.ones((1, 64)), users=["ann"], tenant="acmee")
    assert store.search("budget", user="nobody", k=5) == []
    assert len(store.search("budget", user="ann", k=5)) == 5


def test_oversized_or_invalid_documents_write_nothing(store):
    before = _state(store)
    n_milvus = len(milvus_ids(store))
    good = [{"external_id": f"n{i}", "text": "fine"} for i in range(5)]
    bad_batches = [
        good + [{"external_id": "huge", "text": "x" * 2_000_001}],
        good + [{"external_id": "", "text": "no id"}],
        good + [{"external_id": "n0", "text": "twice"}],
        good + [{"external_id": "d3", "text": "already there"}],
        good + [{"external_id": "t", "text": 42}],
        good + [{"external_id": "a", "text": "bad attrs", "attrs": {"dept": {"nested": 1}}}],
        good + [{"external_id": "c", "text": "control \x00 char", "tenant": "bad\ntenant"}],
        good + [{"external_id": "s", "text": "derived from a row that does not exist", "derived_from": ["nope"]}],
    ]
    for docs in bad_batches:
        with pytest.raises(CatalogError):
            store.add_documents(docs)
        assert _state(store) == before
    with pytest.raises(CatalogError):
        store.add_documents({"external_id": "x", "text": "a mapping, not a list"})
    assert len(milvus_ids(store)) == n_milvus
    # the limit is an option
    small = PermRAG.open(store.settings.home / "other", encoder=HashEncoder(64), max_document_chars=10, catalog_only=False)
    with pytest.raises(CatalogError, match="max_document_chars"):
        small.add_documents([{"external_id": "x", "text": "eleven chars"}])
    small.close()


def test_wrong_vector_dimensions(store, tmp_path):
    with pytest.raises(PermragError, match="shape"):
        store.search_many(["budget"], user="ann", vectors=np.ones((1, 32)))
    with pytest.raises(PermragError, match="finite"):
        store.search_many(["budget"], user="ann", vectors=np.full((1, 64), np.nan))
    with pytest.raises(PermragError, match=r"shape \(1, 64\)"):
        store.recommend(np.ones((1, 63)), users=["ann"])
    before = _state(store)
    store.close()
    # the same store reopened with an encoder of another dimension
    other = PermRAG.open(store.settings.home, encoder=HashEncoder(32))
    with pytest.raises(ConfigError, match="64-dim"):
        other.add_documents([{"external_id": "new", "text": "budget"}])
    with pytest.raises(ConfigError, match="64-dim"):
        other.search("budget", user="ann")
    assert _state(other) == before
    other.close()


class _BrokenEncoder:
    name = "broken"
    dim = 16

    def __init__(self, result):
        self.result = result

    def encode(self, texts):
        return self.result(len(texts))


@pytest.mark.parametrize(
    "result, message",
    [
        (lambda n: np.ones((n, 15)), "shape"),
        (lambda n: np.ones((n + 1, 16)), "shape"),
        (lambda n: np.full((n, 16), np.inf), "infinite"),
        (lambda n: 1 / 0, "encoder failed"),
    ],
)
def test_a_broken_encoder_writes_nothing(tmp_path, result, message):
    rag = PermRAG.open(tmp_path / "home", encoder=_BrokenEncoder(result))
    before = _state(rag)
    with pytest.raises(ConfigError, match=message):
        rag.add_documents([{"external_id": "a", "text": "text"}])
    assert _state(rag) == before
    rag.close()


def test_corrupt_home_folder(tmp_path):
    home = tmp_path / "file-home"
    home.write_text("not a folder")
    with pytest.raises(ConfigError, match="not a folder"):
        PermRAG.open(home)

    garbage = b"this is not a database\x00" * 100
    home = tmp_path / "bad-sqlite"
    home.mkdir()
    (home / "permrag.db").write_bytes(garbage)
    with pytest.raises(ConfigError, match="cannot open the permrag database"):
        PermRAG.open(home)
    assert (home / "permrag.db").read_bytes() == garbage  # nothing was written over it

    with pytest.raises(ConfigError, match="does not exist"):
        PermRAG.open(tmp_path / "missing", create=False)


def test_corrupt_milvus_file_raises_and_leaves_the_catalog_alone(tmp_path):
    home = tmp_path / "home"
    rag = PermRAG.open(home, encoder=HashEncoder(64))
    rag.policy.add_role("eng")
    rag.close()
    (home / "milvus.db").write_bytes(b"\x00garbage" * 4096)
    rag = PermRAG.open(home, encoder=HashEncoder(64))
    before = _state(rag)
    with pytest.raises(PermragError):
        rag.add_documents([{"external_id": "a", "text": "text"}])
    assert _state(rag) == before
    rag.close()


def test_unreachable_milvus_server_raises_backend_error_and_writes_nothing(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rag = PermRAG.open(tmp_path / "home", milvus_uri=f"http://127.0.0.1:{port}", encoder=HashEncoder(8))
    rag.policy.add_role("r")
    before = _state(rag)
    with pytest.raises(BackendError):
        rag.add_documents([{"external_id": "a", "text": "text"}])
    assert _state(rag) == before
    rag.close()


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_a_store_of_another_schema_is_refused_and_left_as_it_was(store_kind, tmp_path, request):
    """A database written by another permrag schema (here: its version counter
    moved on and one table it no longer has) is refused at open, and the open
    adds nothing to it: neither the table nor a counter."""
    from sqlalchemy import inspect, text

    from permrag.storage import db

    url = request.getfixturevalue("pg_url") if store_kind == "postgres" else f"sqlite:///{tmp_path / 'permrag.db'}"
    PermRAG.open(tmp_path / "home", database_url=url, catalog_only=True).close()
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE permrag_meta SET value = 999 WHERE key = 'schema_version'"))
        conn.execute(text("DELETE FROM permrag_meta WHERE key = 'placement_version'"))
        conn.execute(text("DROP TABLE permrag_sync"))
    with pytest.raises(ConfigError, match="schema 999"):
        PermRAG.open(tmp_path / "home", database_url=url, catalog_only=True)
    with engine.connect() as conn:
        assert "permrag_sync" not in inspect(conn).get_table_names()
        assert dict(conn.execute(text("SELECT key, value FROM permrag_meta")).all()).get("placement_version") is None
        assert conn.execute(text("SELECT value FROM permrag_meta WHERE key = 'schema_version'")).scalar_one() == 999
    engine.dispose()
