"""The versions read and the audit insert of every search run on driver
connections of their own (permrag/storage/direct.py). These tests check what the
engine's pool gave them and what they must keep: a connection the server
dropped is replaced without failing the search; a forked child never uses its
parent's sessions; an audit write that fails fails the search; the record is
committed before the search returns; SQLite's checkpointer follows those
writes. Each search is compared with the casbin oracle.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import sqlalchemy as sa

from permrag import BackendError, PermRAG
from permrag.embed import HashEncoder
from permrag.storage import db, direct
from permrag.storage.create import init_schema

from ..conftest import PG_ADMIN_URL, Oracle
from ..system.test_multiprocess import Other

DEPTS = ("eng", "hr", "fin")


def make_store(home, database_url=None) -> tuple[PermRAG, Oracle]:
    opts = {"database_url": database_url} if database_url else {}
    rag = PermRAG.open(home, encoder=HashEncoder(32), **opts)
    oracle = Oracle()
    docs = [{"external_id": f"r{i}", "text": f"quarterly budget note {i}", "attrs": {"dept": DEPTS[i % 3]}} for i in range(24)]
    rag.add_documents(docs)
    for d in docs:
        oracle.add_row({"tenant": "default", **d})
    for role in DEPTS:
        rag.policy.add_role(role)
    rag.policy.grant("eng", "dept:eng")
    oracle.allow("eng", "default", "dept:eng")
    rag.policy.assign_user("ann", "eng")
    oracle.assign("ann", "eng", "default")
    return rag, oracle


def found(rag: PermRAG) -> set[str]:
    return {h.external_id for h in rag.search("quarterly budget", user="ann", k=50, mode="dense")}  # k over the store's size


def audited(url: str) -> int:
    """Search records as a new connection of another engine sees them (committed ones only)."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM permrag_audit WHERE event = 'search'")).scalar_one())
    finally:
        engine.dispose()


def terminate_others(name: str) -> int:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name}).all())
    finally:
        admin.dispose()


def test_every_search_is_committed_to_the_audit_before_it_returns(tmp_path, pg_url):
    rag, oracle = make_store(tmp_path / "a", pg_url)
    quick = direct.for_engine(rag._engine)
    assert quick is not None
    before = audited(pg_url)
    for n in range(1, 6):
        assert found(rag) == oracle.visible_external_ids("ann", "default")
        assert audited(pg_url) == before + n  # another connection sees it at once
    assert quick.opened == 1  # one connection served every read and insert of one thread
    rag.close()
    assert terminate_others(pg_url.rsplit("/", 1)[1]) == 0  # close() closed it (and the pool's)


def test_a_search_after_the_server_dropped_every_connection_succeeds_at_the_new_version(tmp_path, pg_url):
    rag, oracle = make_store(tmp_path / "a", pg_url)
    other = Other(tmp_path / "b", pg_url)  # a real second process changes the policy
    try:
        assert found(rag) == oracle.visible_external_ids("ann", "default")
        quick = direct.for_engine(rag._engine)
        opened = quick.opened
        before = audited(pg_url)
        name = pg_url.rsplit("/", 1)[1]
        for step in range(3):
            assert terminate_others(name) >= 1  # our idle direct connection among them
            sel = ("dept:hr", "dept:fin", "dept:eng")[step]
            if step < 2:
                assert "error" not in other("policy.grant", "eng", sel)
                oracle.allow("eng", "default", sel)
            else:
                assert "error" not in other("policy.revoke", "eng", sel)
                oracle.revoke("eng", "default", sel)
            assert found(rag) == oracle.visible_external_ids("ann", "default")
            assert audited(pg_url) == before + step + 1
        assert quick.opened >= opened + 3  # each dropped connection was replaced
    finally:
        other.close()
        rag.close()


def test_a_forked_child_opens_its_own_connections(tmp_path, pg_url):
    rag, oracle = make_store(tmp_path / "a", pg_url)
    expected = oracle.visible_external_ids("ann", "default")
    assert found(rag) == expected
    quick = direct.for_engine(rag._engine)
    parent_pid = quick._idle[0].info.backend_pid
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            got = sorted(found(rag))
            mine = quick._idle[0].info.backend_pid
            os.write(write, json.dumps({"found": got, "backend": mine}).encode())
        except BaseException as exc:
            os.write(write, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        answer = json.loads(f.read())
    os.waitpid(child, 0)
    assert "error" not in answer, answer
    assert set(answer["found"]) == expected
    assert answer["backend"] != parent_pid  # not the parent's session
    for _ in range(3):  # the parent's session is intact and still its own
        assert found(rag) == expected
        assert quick._idle[0].info.backend_pid == parent_pid
    rag.close()


REFUSE = {
    "postgresql": [
        "CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse BEFORE INSERT ON permrag_audit FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    ],
    "sqlite": ["CREATE TRIGGER refuse BEFORE INSERT ON permrag_audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END"],
}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_audit_write_that_fails_fails_the_search(tmp_path, request, backend):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    rag, oracle = make_store(tmp_path / "a", url)
    assert found(rag) == oracle.visible_external_ids("ann", "default")
    count = len(rag.audit.query(limit=1000))
    with rag._engine.begin() as conn:
        for stmt in REFUSE[backend]:
            conn.exec_driver_sql(stmt)
    for _ in range(2):
        with pytest.raises(BackendError, match="audit refused"):
            found(rag)
    with rag._engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse" + (" ON permrag_audit" if backend == "postgresql" else ""))
    assert found(rag) == oracle.visible_external_ids("ann", "default")
    assert len(rag.audit.query(limit=1000)) == count + 1  # the refused searches left nothing
    rag.close()


def live_frames(wal) -> int:
    """Frames of the current log in a SQLite WAL file: those after the header
    whose salts match it. A checkpointed log is restarted by the next write
    (new salts, written from the start), so this counts what is not yet reset,
    unlike the file's size, which keeps its high-water mark."""
    data = wal.read_bytes()
    if len(data) < 32:
        return 0
    page = int.from_bytes(data[8:12], "big")
    salts = data[16:24]
    frames, at = 0, 32
    while at + 24 + page <= len(data) and data[at + 8 : at + 16] == salts:
        frames, at = frames + 1, at + 24 + page
    return frames


@pytest.mark.slow  # a subprocess, a stress run or a timed wait: left out by make test-fast
def test_sqlite_checkpoints_after_audited_searches_alone(tmp_path):
    """Searches alone commit audit records (on their own connections): the
    checkpointer follows them, so the log restarts and stays short. Control:
    with the checkpointer stopped the log only grows."""
    rag, oracle = make_store(tmp_path / "a")
    ckpt = db._CHECKPOINTERS[rag._engine]
    wal = tmp_path / "a" / "permrag.db-wal"

    def search(times: int) -> None:
        for _ in range(times):
            assert found(rag) == oracle.visible_external_ids("ann", "default")

    def short_after_quiet() -> int:
        # A quiet moment lets the checkpointer copy the log back; the next
        # search's audit write then restarts it. Polled: a loaded machine may
        # delay the thread, never forever.
        deadline = time.monotonic() + 20
        while True:
            time.sleep(4 * db.Checkpointer.INTERVAL)
            search(1)
            frames = live_frames(wal)
            if frames <= 8 or time.monotonic() > deadline:
                return frames

    runs = ckpt.runs
    search(300)
    assert short_after_quiet() <= 8, "the log never restarted: the checkpointer did not follow the searches"
    assert ckpt.runs >= runs + 1
    ckpt.close()
    before = live_frames(wal)
    search(300)
    grown = live_frames(wal)
    assert grown >= before + 300, (before, grown)  # each audited search wrote at least one frame
    time.sleep(4 * db.Checkpointer.INTERVAL)
    search(1)
    assert live_frames(wal) > grown  # nothing restarts it now
    rag.close()


def test_an_in_memory_database_uses_the_engine():
    engine = sa.create_engine("sqlite://")
    assert direct.for_engine(engine) is None  # every connection of it is another database
    engine.dispose()


def test_threads_searching_at_once_each_get_a_connection_and_every_search_is_audited(tmp_path, pg_url):
    from concurrent.futures import ThreadPoolExecutor

    rag, oracle = make_store(tmp_path / "a", pg_url)
    expected = oracle.visible_external_ids("ann", "default")
    before = audited(pg_url)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: found(rag), range(200)))
    assert all(r == expected for r in results)
    assert audited(pg_url) == before + 200
    assert 1 <= direct.for_engine(rag._engine).opened <= direct.KEEP  # kept, not opened per search
    rag.close()


def test_a_store_dropped_without_close_lets_its_engine_and_connections_go(tmp_path):
    import gc
    import weakref

    rag, oracle = make_store(tmp_path / "a")
    assert found(rag) == oracle.visible_external_ids("ann", "default")  # the direct connections exist now
    quick = direct.for_engine(rag._engine)
    assert quick is not None and quick._idle
    engine = weakref.ref(rag._engine)
    thread = db._CHECKPOINTERS[rag._engine]._thread
    del rag, quick
    gc.collect()
    assert engine() is None  # nothing of direct.py keeps it
    if thread is not None:
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql+psycopg2", "postgresql+psycopg"])
def test_rows_inserted_on_the_driver_are_what_sqlalchemy_inserts(tmp_path, request, backend):
    """An ingest's rows go in by one driver executemany (direct.insert_many),
    their stored attrs built as JSON text (journal.stored_json). The same rows
    through SQLAlchemy's insert must store the same text, byte for byte, and
    read back equal; so must insert_many serialising the JSON itself."""
    from permrag.catalog.journal import ROW_COLUMNS, stored_json
    from permrag.catalog.rows import RowRecord
    from permrag.domain.acl import parse_acl

    url = with_driver(request.getfixturevalue("pg_url"), backend) if backend != "sqlite" else f"sqlite:///{tmp_path}/c.db"
    engine = db.make_engine(url)
    init_schema(engine)
    acl = parse_acl({"allow": ["user:ann", {"principal": "group:x", "expires_at": 4102444800.5}], "deny": ["user:eve"], "folder": "/eng/ops"})
    recs = [
        RowRecord(1, "t", "plain", {}),
        RowRecord(2, "t", 'quo"te\\', {"dept": 'a "b" \\c', "tags": ["é", "中文", "😀"]}, parent="doc"),
        RowRecord(3, "t", "acl", {"n": "3"}, acl=acl),
        RowRecord(4, "t", "acl-only", {}, acl=parse_acl({"allow": ["role:r"], "inherit": False})),
        RowRecord(5, "t", "derived", {"x": "y"}, derived_from=(1, 2)),
    ]

    def row(r: RowRecord, off: int, attrs: object, derived: object) -> tuple:
        return (r.row_id + off, r.tenant, r.external_id, None, attrs, r.parent, derived, "pending", r.vclass, None)

    with engine.begin() as conn:
        conn.execute(db.rows.insert(), [dict(zip(ROW_COLUMNS, row(r, 0, r.stored_attrs(), list(r.derived_from) or None))) for r in recs])
        as_text = [row(r, 100, stored_json(r, {}), json.dumps(list(r.derived_from)) if r.derived_from else None) for r in recs]
        direct.insert_many(conn, db.rows, ROW_COLUMNS, as_text, as_text=("attrs", "derived_from"))
        direct.insert_many(conn, db.rows, ROW_COLUMNS, [row(r, 200, r.stored_attrs(), list(r.derived_from) or None) for r in recs])
    t = db.rows.c
    with engine.connect() as conn:
        raw = {int(i): (a, d) for i, a, d in conn.execute(sa.select(t.row_id, sa.cast(t.attrs, sa.Text), sa.cast(t.derived_from, sa.Text)))}
        read = {int(i): (a, d) for i, a, d in conn.execute(sa.select(t.row_id, t.attrs, t.derived_from))}
    for r in recs:
        assert raw[r.row_id + 100] == raw[r.row_id] == raw[r.row_id + 200]
        assert read[r.row_id + 100] == read[r.row_id] == (r.stored_attrs(), list(r.derived_from) or None)
    assert raw[1][1] is None and raw[5][1] is not None  # no derivation: SQL NULL, as SQLAlchemy writes it
    db.dispose(engine)


def with_driver(url: str, driver: str) -> str:
    """``url`` (a PostgreSQL URL of any driver) with ``driver`` (``postgresql+psycopg``, …)."""
    return driver + url[url.index("://") :]


HOSTILE = ["plain", 'quo"te', "back\\slash", '\\"', "a,b", "{braces}", "NULL", "null", "", " spaced ", "é中文😀", "tab\tand\nnewline", "'single'"]


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+psycopg"])
def test_arrays_sent_as_text_read_back_every_value(pg_url, driver):
    """On PostgreSQL the bulk statements send a column's values as one array in
    its text form (direct.pg_array), built by permrag, not by the driver.
    Hostile strings (quotes, backslashes, commas, braces, the word NULL, the
    empty string) and big or negative integers must reach the server as they
    were, with both drivers; a value of another type goes to the driver."""
    engine = db.make_engine(with_driver(pg_url, driver))
    ints = [0, -1, 2**62, None, 7]
    try:
        with engine.connect() as conn:
            assert direct.pg_array(HOSTILE) != HOSTILE and direct.pg_array(ints) != ints  # both as text
            assert conn.exec_driver_sql("SELECT %(a)s::TEXT[]", {"a": direct.pg_array(HOSTILE)}).scalar_one() == HOSTILE
            assert conn.exec_driver_sql("SELECT %(a)s::BIGINT[]", {"a": direct.pg_array(ints)}).scalar_one() == ints
            assert conn.exec_driver_sql("SELECT %(a)s::TEXT[]", {"a": direct.pg_array([])}).scalar_one() == []
            other = [1.5, True]
            assert direct.pg_array(other) is other  # the driver sends those
    finally:
        db.dispose(engine)


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+psycopg"])
def test_rows_of_hostile_names_are_found_and_updated_in_bulk(tmp_path, pg_url, driver):
    """The lookups by name (rows.one_of: ``= ANY(array)``) and the bulk update
    (direct.update_many: ``UPDATE … FROM unnest(arrays)``) find each row of a
    hostile name, and only it, with both drivers."""
    from permrag.catalog.rows import named_rows

    engine = db.make_engine(with_driver(pg_url, driver))
    init_schema(engine)
    t = db.rows.c
    try:
        with engine.begin() as conn:
            values = [(i + 1, "t", name, None, "{}", None, None, "pending", 0, None) for i, name in enumerate(HOSTILE)]
            from permrag.catalog.journal import ROW_COLUMNS

            direct.insert_many(conn, db.rows, ROW_COLUMNS, values, as_text=("attrs",))
            direct.update_many(conn, db.rows, ["row_id"], ["state", "live_key"], [{"row_id": i + 1, "state": "live", "live_key": name} for i, name in enumerate(HOSTILE)])
        with engine.connect() as conn:
            stored = {r.external_id: (int(r.row_id), r.state, r.live_key) for r in conn.execute(sa.select(t.row_id, t.external_id, t.state, t.live_key))}
            assert stored == {name: (i + 1, "live", name) for i, name in enumerate(HOSTILE)}
            for i, name in enumerate(HOSTILE):
                assert [int(r.row_id) for r in named_rows(conn, "t", [name], parents=[], columns=[t.row_id])] == [i + 1], name
            both = named_rows(conn, "t", ["NULL", "null", "missing"], parents=[], columns=[t.row_id])
            assert sorted(int(r.row_id) for r in both) == [HOSTILE.index("NULL") + 1, HOSTILE.index("null") + 1]
    finally:
        db.dispose(engine)
