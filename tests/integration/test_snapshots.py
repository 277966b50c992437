"""Every search compares the stored versions with its own before it starts
(access/state.py). These tests change the policy and the rows from *another
process* (a real one, on PostgreSQL and the Milvus server) and check that
the next search of this process never answers from what it held: every
result equals the casbin oracle's visible rows at the stored version, each
search is audited once at the version it answered at, and a database that
cannot be read makes the search raise — on both search paths (ranked in
process, and Milvus with the planner's filter).
"""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from permrag import BackendError, PermRAG
from permrag.embed import HashEncoder

from ..conftest import PG_ADMIN_URL, Oracle
from ..system.test_multiprocess import Other

DIM = 32
DEPTS = ("eng", "hr", "fin")


def row(i: int) -> dict:
    return {"external_id": f"r{i}", "text": f"quarterly budget note {i}", "attrs": {"dept": DEPTS[i % 3]}}


@pytest.fixture(params=["in process", "milvus"])
def pair(request, tmp_path, pg_url, milvus_server):
    """This process (``rag``), another process on the same store (``other``: PostgreSQL
    and the server's collection), and the casbin oracle that every change is also made in.
    This process ranks the visible rows in process (search/in_process.py) or asks Milvus
    with the planner's filter. (Hybrid search needs BM25: not on a 2.3 server.)"""
    collection = f"snap_{uuid.uuid4().hex[:8]}"
    rag = PermRAG.open(tmp_path / "a", database_url=pg_url, milvus_uri=milvus_server, collection=collection, encoder=HashEncoder(DIM), local_rows=10_000 if request.param == "in process" else 0)
    oracle = Oracle()
    docs = [row(i) for i in range(30)]
    rag.add_documents(docs)
    for d in docs:
        oracle.add_row({"tenant": "default", **d})
    for role in ("eng", "hr"):
        rag.policy.add_role(role)
    rag.policy.grant("eng", "dept:eng")
    oracle.allow("eng", "default", "dept:eng")
    rag.policy.assign_user("ann", "eng")
    oracle.assign("ann", "eng", "default")
    other = Other(tmp_path / "b", pg_url, milvus_server, collection, str(DIM))
    yield rag, other, oracle
    other.close()
    rag.close()


def found(rag: PermRAG, mode: str) -> tuple[set[str], int]:
    hits = rag.search("quarterly budget", user="ann", k=50, mode=mode)  # k over the store's size: every visible row
    return {h.external_id for h in hits}, hits.policy_version


def searches(rag: PermRAG) -> list[dict]:
    return [r for r in rag.audit_log(user="ann", limit=1000) if r["event"] == "search"]


def test_a_search_after_another_process_changed_the_policy_answers_at_the_new_version(pair):
    mode = "dense"
    rag, other, oracle = pair
    assert found(rag, mode)[0] == oracle.visible_external_ids("ann", "default")  # warm
    before = len(searches(rag))
    changes = [
        (("policy.grant", "eng", "dept:hr"), lambda: oracle.allow("eng", "default", "dept:hr")),
        (("policy.revoke", "eng", "dept:eng"), lambda: oracle.revoke("eng", "default", "dept:eng")),
        (("policy.assign_user", "ann", "hr"), lambda: oracle.assign("ann", "hr", "default")),
        (("policy.deny", "hr", "dept:hr"), lambda: oracle.allow("hr", "default", "dept:hr", "deny")),
        (("policy.unassign_user", "ann", "hr"), lambda: oracle.unassign("ann", "hr", "default")),
    ]
    for _n, ((call, *args), mirror) in enumerate(changes, 1):
        assert "error" not in other(call, *args)
        mirror()
        stored = rag.access.versions()["policy_version"]  # what the other process committed (read apart)
        got, at = found(rag, mode)
        assert at == stored  # answered at the version the other process committed
        assert got == oracle.visible_external_ids("ann", "default")
        again, at_again = found(rag, mode)  # nothing moved since
        assert again == got and at_again == stored
    audited = searches(rag)
    assert len(audited) == before + 2 * len(changes)  # each search audited once
    assert [r["policy_version"] for r in audited[: 2 * len(changes)]][::2] == sorted({r["policy_version"] for r in audited[: 2 * len(changes)]}, reverse=True)


def test_rows_another_process_added_and_deleted_are_searched_at_the_new_catalog_version(pair):
    rag, other, oracle = pair
    before = found(rag, "dense")[0]
    assert before == oracle.visible_external_ids("ann", "default")
    new = [row(i) for i in range(30, 36)]
    assert "error" not in other("add_documents", new)
    for d in new:
        oracle.add_row({"tenant": "default", **d})
    stored = rag.access.versions()["catalog_version"]
    got = found(rag, "dense")[0]
    assert rag.catalog.version == stored  # searched at the new catalog
    assert before <= got <= oracle.visible_external_ids("ann", "default")
    deadline = time.monotonic() + 30
    while got != oracle.visible_external_ids("ann", "default") and time.monotonic() < deadline:
        time.sleep(0.2)  # Bounded consistency: rows another process inserted arrive within the server's bound (README)
        got = found(rag, "dense")[0]
    assert got == oracle.visible_external_ids("ann", "default")
    assert "error" not in other("delete", "r0")
    del oracle.rows[("default", "r0")]
    assert found(rag, "dense")[0] == oracle.visible_external_ids("ann", "default")  # a deleted row: gone at once


def test_a_database_that_cannot_be_read_makes_the_search_raise(pair, pg_url):
    rag, other, oracle = pair
    assert found(rag, "dense")[0] == oracle.visible_external_ids("ann", "default")
    rag.audit = False  # (the audit write would fail too: the version check alone must make it raise)
    name = pg_url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
        with pytest.raises(BackendError):
            found(rag, "dense")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert found(rag, "dense")[0] == oracle.visible_external_ids("ann", "default")
