"""A bulk ingest on a PostgreSQL catalog: the planner knows the store it
plans for, and the catalog holds what the same ingest gives on SQLite.

The lookups by name of every write (catalog/rows.py ``named``) were planned
with the statistics of an empty or much smaller table (never analyzed, or
analyzed while the rows were pending): a few rows expected for the tenant,
so every slice of names read all of the tenant's rows, more with each
batch. catalog/planstats.py analyzes after writes that changed a fifth of
the table; these tests read the planner's estimates (EXPLAIN, not run) after
an ingest in batches, and compare the store, reloaded from the database,
with the same ingest on SQLite and with the documents themselves.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from permrag import PermRAG
from permrag.catalog.rows import named

pytestmark = pytest.mark.postgres

N = 12_000  # documents; plus one chunk row for each of the first CHUNKED
CHUNKED = 1_500
TEAMS = 40
NAMES = 1_000  # names per lookup, as the write path slices them (db.IN_CHUNK)


def documents(first: int, n: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for i in range(first, first + n):
        doc: dict[str, Any] = {"external_id": f"d{i}", "tenant": "acme", "attrs": {"team": f"t{i % TEAMS}"}}
        if i % 10 == 3:
            doc["acl"] = {"allow": [f"user:u{i % 7}"]}
        docs.append(doc)
        if i < CHUNKED:
            docs.append({"external_id": f"d{i}/part", "tenant": "acme", "parent": f"d{i}", "attrs": {"team": f"t{i % TEAMS}"}})
    return docs


def ingest(home, url: str | None) -> tuple[PermRAG, list[int]]:
    rag = PermRAG.open(home, database_url=url, catalog_only=True, create=True)
    ids = rag.add_documents(documents(0, N), batch_size=4096)
    return rag, ids


def estimate(conn, sql: str) -> float:
    plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return float(plan[0]["Plan"]["Plan Rows"])


def stored(rag: PermRAG) -> dict[str, tuple]:
    """Every live row as the database holds it (a fresh read, not this process's cache)."""
    live = sorted(rag.catalog.rows.ids())
    recs = rag.catalog.rows.records(live)
    return {r.external_id: (r.row_id, r.attrs, r.parent, r.vclass, r.acl.to_json() if r.acl else None) for r in recs.values()}


def test_bulk_ingest_plans_with_fresh_statistics_and_matches_sqlite(tmp_path, pg_url):
    # psycopg 3, which a postgresql:// URL gets when installed: its pending rows go by COPY
    # (direct.py; other tests' stores use psycopg2 and the statement of column arrays)
    pg, pg_ids = ingest(tmp_path / "pg", pg_url.replace("+psycopg2", "+psycopg"))
    assert pg._engine.dialect.driver == "psycopg"
    lite, lite_ids = ingest(tmp_path / "lite", None)
    try:
        rows = N + CHUNKED
        names = [f"d{i}" for i in range(0, 2 * NAMES, 2)]  # those under CHUNKED have a chunk
        engine = pg._engine
        with engine.connect() as conn:
            tenant_rows = estimate(conn, "SELECT row_id FROM permrag_rows WHERE tenant = 'acme'")
            by_name, by_parent = (estimate(conn, str(s.compile(engine, compile_kwargs={"literal_binds": True}))) for s in named("acme", names, dialect="postgresql"))
            real_parent = conn.exec_driver_sql("SELECT count(*) FROM permrag_rows WHERE tenant = 'acme' AND live_key IS NOT NULL AND parent = ANY(%(p)s)", {"p": names}).scalar()
        # never analyzed, the planner expected a handful of rows here (5 of 13,500)
        assert rows / 2 <= tenant_rows <= rows * 2, tenant_rows
        assert pg.catalog.stats.runs >= 1
        assert by_name >= NAMES / 2, by_name  # every name is a live row
        assert real_parent == sum(int(n[1:]) < CHUNKED for n in names) and by_parent >= real_parent / 4, (by_parent, real_parent)

        # the same ingest on SQLite: the same row IDs, and the same rows as stored
        assert pg_ids == lite_ids and len(pg_ids) == rows
        pg.catalog.load()  # the persisted index, read back
        assert stored(pg) == stored(lite)
        indexes = [rag.catalog.tenant("acme") for rag in (pg, lite)]
        assert [dict(i.values("team")) for i in indexes][0] == dict(indexes[1].values("team"))
        assert dict(indexes[0].classes) == dict(indexes[1].classes)
        expected = {r["external_id"] for r in documents(0, N) if r["attrs"]["team"] == "t5"}  # brute force over the documents
        got = {rec.external_id for rec in pg.catalog.rows.records(indexes[0].values("team")["t5"]).values()}
        assert got == expected

        # a small write afterwards: nothing analyzed for it; its IDs still match (block records kept)
        runs = pg.catalog.stats.runs
        assert pg.add_documents(documents(N, 20)) == lite.add_documents(documents(N, 20))
        assert pg.catalog.stats.runs == runs
    finally:
        pg.close()
        lite.close()
