"""Writers of one store in several processes that create the same new key at
the same moment: a store setting (the layout every process records at open,
the cost model a probe stores, the encoder) and a folder sync's record of
what it wrote; and the first open of a fresh database, which makes its
tables. Read-then-write on a key or a table that is not there yet must never
fail on it, on PostgreSQL (where an UPDATE that finds nothing locks nothing)
as on SQLite; the last writer's value stays."""

from __future__ import annotations

import multiprocessing as mp
import uuid
from pathlib import Path

import pytest

from permrag import PermRAG
from permrag.embed import HashEncoder
from permrag.storage import db
from permrag.storage.create import init_schema

from ..conftest import milvus_ids

KEYS = 40
PROCS = 4


def _race(target, args, n: int = PROCS) -> list[tuple[int, str]]:
    """``n`` spawned processes run ``target(*args(me), barrier, out)``; what each put on ``out``, by process."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args(me), barrier, out)) for me in range(n)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return got


def _set_settings(url: str, me: int, rowwise: bool, barrier, out) -> None:
    """Each key: read it, wait for every process, write it (as layout_placement does at open)."""
    try:
        engine = db.make_engine(url)
        for i in range(KEYS):
            key = f"race-{i}"
            with db.transaction(engine, "test") as conn:
                db.get_setting(conn, key)
                barrier.wait(timeout=60)
                if rowwise:
                    db.upsert_rowwise(conn, db.settings, ("key",), [{"key": key, "value": f"{me}:{i}"}])
                else:
                    db.set_setting(conn, key, f"{me}:{i}")
        engine.dispose()
        out.put((me, "ok"))
    except BaseException as exc:  # reported to the test, not lost in the child
        barrier.abort()
        out.put((me, f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("store", ["sqlite", "postgres", "postgres-rowwise"])
def test_processes_writing_one_new_setting_at_once_all_succeed(store, tmp_path, request):
    url = request.getfixturevalue("pg_url") if store.startswith("postgres") else f"sqlite:///{tmp_path / 'permrag.db'}"
    engine = db.make_engine(url)
    init_schema(engine)
    got = _race(_set_settings, lambda me: (url, me, store.endswith("rowwise")))
    assert got == [(me, "ok") for me in range(PROCS)]
    with db.reading(engine, "test") as conn:
        for i in range(KEYS):
            assert db.get_setting(conn, f"race-{i}") in {f"{me}:{i}" for me in range(PROCS)}
    engine.dispose()


def test_two_processes_syncing_one_folder_at_once_both_succeed(tmp_path, pg_url, milvus_server):
    """Two workers of one store (PostgreSQL, one Milvus server) sync the same
    folder at the same moment, three times with every file changed between:
    neither fails, and the store then equals the folder: one row a file,
    its latest text, in the catalog and in Milvus alike."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(30):
        (folder / f"f{i:02d}.txt").write_text(f"budget travel note {i} round 0")
    collection = f"race_{uuid.uuid4().hex[:10]}"
    got = _race(_sync_worker, lambda me: (str(tmp_path / f"w{me}"), pg_url, milvus_server, collection, str(folder), me, 3), n=2)
    assert sorted(got) == [(me, "ok") for me in range(2)], got
    rag = PermRAG.open(tmp_path / "main", database_url=pg_url, milvus_uri=milvus_server, collection=collection, encoder=HashEncoder(32), consistency="Strong")
    try:
        live = rag.catalog.live_ids()
        docs = {r.row_id: r.document for r in rag.rows(live)}
        assert sorted(docs.values()) == sorted(f"{folder.name}/{f.name}" for f in folder.iterdir())  # one row a file, none twice
        assert milvus_ids(rag) == set(live)
        no = rag.catalog.tenants.number("default")
        stored = rag.backend.client().query(rag.backend.name(no), filter="row_id >= 0", output_fields=["row_id", "text"], consistency_level="Strong")
        assert {docs[h["row_id"]]: h["text"] for h in stored} == {f"{folder.name}/{f.name}": f.read_text() for f in folder.iterdir()}
        again = rag.sync_folder(folder)
        assert again.unchanged == 30 and not (again.added or again.changed or again.deleted or again.failed)
    finally:
        rag.close()


def _sync_worker(home: str, url: str, uri: str, collection: str, folder: str, me: int, rounds: int, barrier, out) -> None:
    try:
        rag = PermRAG.open(home, database_url=url, milvus_uri=uri, collection=collection, encoder=HashEncoder(32), consistency="Strong")
        files = sorted(Path(folder).iterdir())
        for r in range(rounds):
            if r and me == 0:
                for f in files:
                    f.write_text(f.read_text().replace(f"round {r - 1}", f"round {r}"))
            barrier.wait(timeout=120)  # the files are written; both sync now
            report = rag.sync_folder(folder)
            assert not report.failed, report.describe()
            barrier.wait(timeout=300)  # both done before the next change
        rag.close()
        out.put((me, "ok"))
    except BaseException as exc:
        barrier.abort()
        out.put((me, f"{type(exc).__name__}: {exc}"))


def _record_worker(home: str, url: str, me: int, barrier, out) -> None:
    """A folder sync's record step, as two syncs of one folder reach it together."""
    from permrag.ingest.sync import FolderSync

    try:
        rag = PermRAG.open(home, database_url=url, catalog_only=True)
        sync = FolderSync(rag.ingester)
        for r in range(KEYS):
            barrier.wait(timeout=60)
            sync.record("default", "/docs", {f"f{j}.txt": (f"c{me}-{r}", f"m{me}-{r}") for j in range(r % 7, r % 7 + 20)})
        rag.close()
        out.put((me, "ok"))
    except BaseException as exc:
        barrier.abort()
        out.put((me, f"{type(exc).__name__}: {exc}"))


def test_processes_recording_one_folders_sync_at_once_all_succeed(tmp_path, pg_url):
    """What two syncs of one folder record, written at the same moment
    (PostgreSQL): no writer fails on the key, each file keeps one writer's hashes."""
    from permrag.ingest.sync import FolderSync

    PermRAG.open(tmp_path / "main", database_url=pg_url, catalog_only=True).close()
    got = _race(_record_worker, lambda me: (str(tmp_path / f"w{me}"), pg_url, me))
    assert got == [(me, "ok") for me in range(PROCS)]
    rag = PermRAG.open(tmp_path / "main", database_url=pg_url, catalog_only=True)
    try:
        state = FolderSync(rag.ingester).state("default", "/docs")
        last = KEYS - 1
        assert set(state) == {f"f{j}.txt" for r in range(KEYS) for j in range(r % 7, r % 7 + 20)}
        for content, meta in state.values():
            assert content[0] == "c" and meta == "m" + content[1:]  # one writer's pair, never a mix
        assert all(state[f"f{j}.txt"][0].endswith(f"-{last}") for j in range(last % 7, last % 7 + 20))  # the last round's
    finally:
        rag.close()


def _open_fresh(url: str, me: int, barrier, out) -> None:
    try:
        barrier.wait(timeout=60)
        rag = PermRAG.open(Path(url.rsplit("#", 1)[1]) / f"w{me}", database_url=url.rsplit("#", 1)[0], catalog_only=True)
        rag.policy.add_role(f"r{me}")
        rag.close()
        out.put((me, "ok"))
    except BaseException as exc:
        barrier.abort()
        out.put((me, f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_processes_opening_a_fresh_database_at_once_all_succeed(store, tmp_path, request):
    """Workers started together against a database no permrag has used (its
    tables, counters and store id made by whichever comes first): each opens
    it and writes; all see one store."""
    url = request.getfixturevalue("pg_url") if store == "postgres" else f"sqlite:///{tmp_path / 'permrag.db'}"
    got = _race(_open_fresh, lambda me: (f"{url}#{tmp_path}", me))
    assert got == [(me, "ok") for me in range(PROCS)]
    rag = PermRAG.open(tmp_path / "main", database_url=url, catalog_only=True)
    try:
        assert sorted(rag.policy.roles()) == [f"r{me}" for me in range(PROCS)]
    finally:
        rag.close()


def test_a_made_store_opens_while_another_process_holds_its_write_lock(tmp_path):
    """Opening a store whose tables are made only reads them: a writer
    holding SQLite's write lock (another process mid-transaction) does not
    stop the open, nor does the open wait for it."""
    import sqlite3

    PermRAG.open(tmp_path, catalog_only=True).close()
    writer = sqlite3.connect(tmp_path / "permrag.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        rag = PermRAG.open(tmp_path, catalog_only=True)
        assert rag.policy.roles() == []
        rag.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_switching_to_wal_waits_out_a_lock_sqlite_answers_at_once(tmp_path):
    """SQLite refuses ``PRAGMA journal_mode=WAL`` at once ("database is
    locked", its busy handler not asked) while another connection holds the
    file: the switch is retried until the lock goes, and raises only once
    its wait is over."""
    import sqlite3
    import threading
    import time

    from permrag.storage.sqlite_wal import to_wal

    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("PRAGMA journal_mode=WAL")  # what the switch meets: no waiting of SQLite's own
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        to_wal(other.cursor(), wait_s=0.2)  # still held when the wait is over
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    to_wal(other.cursor(), wait_s=10)
    assert time.monotonic() - started >= 0.2
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    release.join()
    holder.close()
    other.close()
