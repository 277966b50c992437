"""The store round-trips on SQLite and PostgreSQL; the catalog behaves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pyroaring import BitMap

from permrag import CatalogError, DuplicateExternalIdError, PermRAG, UnknownRowError
from permrag.catalog import n_runs
from permrag.storage import db

from ..conftest import Oracle
from ..worlds import apply_world_policy, load_world, make_world


def roundtrip(open_store) -> int:
    """Write, close, reopen; returns how many users' bitmaps were compared."""
    world = make_world(7, n_rows=240)
    with open_store() as rag:
        rag.add_documents(world.docs[:120])
        apply_world_policy(rag, world)
        rag.add_documents(world.docs[120:])
        before = {(u, t): rag.visible(u, t) for t in world.tenants for u in world.users[t]}
        versions = (rag.policy_version, rag.catalog_version)
        csv_text = rag.policy.export_csv()
    assert any(len(b) for b in before.values())
    with open_store() as again:
        assert (again.policy_version, again.catalog_version) == versions
        assert again.policy.export_csv() == csv_text
        for (u, t), bm in before.items():
            assert again.visible(u, t) == bm
        # the reloaded persisted index equals one rebuilt from the rows
        snapshot = {t: again.catalog.tenant(t).rows for t in world.tenants}
        again.catalog.rebuild_index()
        for t in world.tenants:
            assert again.catalog.tenant(t).rows == snapshot[t]
        again.compiler.clear()
        for (u, t), bm in before.items():
            assert again.visible(u, t) == bm
    return len(before)


def test_roundtrip_sqlite(home) -> None:
    assert roundtrip(lambda: PermRAG.open(home, catalog_only=True)) > 0


@pytest.mark.postgres
def test_roundtrip_postgres(home, pg_url) -> None:
    assert roundtrip(lambda: PermRAG.open(home, database_url=pg_url, catalog_only=True)) > 0
    assert not (home / "permrag.db").exists()


@pytest.mark.postgres
def test_postgres_matches_casbin(home, pg_url) -> None:
    world = make_world(11, n_rows=200)
    oracle = Oracle()
    with PermRAG.open(home, database_url=pg_url, catalog_only=True) as rag:
        load_world(rag, world, oracle)
        for t in world.tenants:
            for u in world.users[t]:
                got = {r.external_id for r in rag.rows(rag.visible(u, t))}
                assert got == oracle.visible_external_ids(u, t)


def test_sync_sees_other_process_changes(home) -> None:
    a = PermRAG.open(home, catalog_only=True)
    b = PermRAG.open(home, catalog_only=True)
    a.add_documents([{"external_id": "x", "attrs": {"dept": "eng"}}])
    a.policy.add_role("eng")
    a.policy.grant("eng", "dept:eng")
    a.policy.assign("alice", "eng")
    assert b.refresh() is True
    assert len(b.visible("alice")) == 1
    a.policy.revoke("eng", "dept:eng")
    assert b.refresh() is True
    assert len(b.visible("alice")) == 0
    assert b.refresh() is False
    a.close()
    b.close()


def test_add_documents_validates_before_writing(rag) -> None:
    rag.add_documents([{"external_id": "a"}])
    version = rag.catalog_version
    bad_batches = [
        [{"external_id": "b"}, {"external_id": "a"}],  # duplicate of an existing row
        [{"external_id": "c"}, {"external_id": "c"}],  # duplicate in the batch
        [{"external_id": "d", "attrs": {"dept": {"nested": 3}}}],
        [{"external_id": "e", "attrs": {"doc": "x"}}],
        [{"external_id": "f", "attrs": {"bad name": "x"}}],
        [{"external_id": ""}],
        [{"external_id": "g", "derived_from": ["nope"]}],
        [{"external_id": "h", "tenant": "  "}],
        ["not a mapping"],
    ]
    for batch in bad_batches:
        with pytest.raises(CatalogError):
            rag.add_documents(batch)
    with pytest.raises(DuplicateExternalIdError, match="'a'"):
        rag.add_documents([{"external_id": "a"}])
    assert rag.catalog_version == version
    assert len(rag.catalog.tenant_rows("default")) == 1
    with pytest.raises(UnknownRowError):
        rag.row("b")


def test_rows_returns_records_in_order(rag) -> None:
    ids = rag.add_documents(
        [
            {"external_id": "a", "attrs": {"dept": "eng", "tags": ["x", "y"]}, "parent": "P"},
            {"external_id": "b", "tenant": "other"},
            {"external_id": "c", "derived_from": ["a"]},
        ]
    )
    recs = rag.rows(list(reversed(ids)))
    assert [r.external_id for r in recs] == ["c", "b", "a"]
    assert recs[2].attrs == {"dept": "eng", "tags": ["x", "y"]} and recs[2].parent == "P"
    assert recs[1].tenant == "other"
    assert recs[0].derived_from == ("a",)  # lineage by name: it outlives the row IDs of a replaced source
    with pytest.raises(UnknownRowError):
        rag.rows([max(ids) + 10_000])


def test_same_class_rows_get_contiguous_ids(home) -> None:
    docs = [{"external_id": f"d{i}", "attrs": {"dept": f"dep{i % 20}"}} for i in range(2000)]
    with PermRAG.open(home / "c", catalog_only=True) as rag:
        ids = rag.add_documents(docs)
        classes = [BitMap(i for i, d in zip(ids, docs) if d["attrs"]["dept"] == f"dep{k}") for k in range(20)]
        assert all(n_runs(bm) == 1 for bm in classes)  # one run per department
        more = rag.add_documents([{"external_id": f"e{i}", "attrs": {"dept": "dep3"}} for i in range(300)])
        # a class's blocks grow geometrically: 100 + 300 rows span at most 3 runs
        assert n_runs(classes[3] | BitMap(more)) <= 3
        union = BitMap.union(*classes[:5])
        assert n_runs(union) <= 5
    with PermRAG.open(home / "s", allocation="sequential", catalog_only=True) as seq:
        ids = seq.add_documents(docs)
        assert ids == list(range(ids[0], ids[0] + len(docs)))
        assert n_runs(BitMap(i for i, d in zip(ids, docs) if d["attrs"]["dept"] == "dep0")) == 100


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_class_blocks_taken_together_equal_one_class_at_a_time(home, request, database, monkeypatch) -> None:
    """A batch's classes take their row IDs in a few statements
    (``_take_blocks``); the IDs, class IDs and block records are what the
    class-at-a-time rule gives (the reference below): the rest of the current
    block first, then new blocks of twice the last size, of ``expected`` rows
    at least, cut from the row-ID counter in the classes' order."""
    import random

    from sqlalchemy import select

    from permrag.catalog import allocation

    monkeypatch.setattr(allocation, "MAX_BLOCK", 256)  # a large request spans several blocks
    extra = {"database_url": request.getfixturevalue("pg_url")} if database == "postgres" else {}
    rng = random.Random(5)
    blocks: dict[tuple[str, str], tuple[int, int, int]] = {}  # the reference: (next, end, size) per class
    cids: dict[tuple[str, str], int] = {}

    def reference(tenant: str, key: str, n: int, expected: int, counter: list[int]) -> list[int]:
        nxt, end, size = blocks.get((tenant, key), (0, 0, 0))
        ids: list[int] = []
        while len(ids) < n:
            if nxt < end:
                take = min(n - len(ids), end - nxt)
                ids += range(nxt, nxt + take)
                nxt += take
                continue
            need = max(n - len(ids), expected - len(ids))
            size = min(256, max(allocation.MIN_BLOCK, 2 * size, 1 << (need - 1).bit_length()))
            counter[0] += size
            end, nxt = counter[0], counter[0] - size
        blocks[(tenant, key)] = (nxt, end, size)
        return ids

    with PermRAG.open(home, catalog_only=True, **extra) as rag:
        engine, alloc = rag.catalog.engine, rag.catalog.allocator
        for _ in range(40):
            picked = sorted({(rng.choice("ab"), f"k{rng.randrange(10)}") for _ in range(rng.randint(1, 6))})
            wanted = [(t, k, rng.randint(1, 700), rng.choice([0, rng.randint(1, 1500)]), {"dept": k}, None) for t, k in picked]
            with db.transaction(engine, "allocating") as conn:
                counter = [db.read_counter(conn, "next_row_id")]
                got = alloc._take_blocks(conn, wanted)
                expect = [reference(t, k, n, e, counter) for t, k, n, e, *_ in wanted]
                assert db.read_counter(conn, "next_row_id") == counter[0]
            assert [ids for _, ids in got] == expect
            for (t, k, *_), (cid, _) in zip(wanted, got):
                assert cids.setdefault((t, k), cid) == cid  # a class keeps its ID
        assert len(set(cids.values())) == len(cids)  # and no two classes share one
        b = db.id_blocks.c
        with db.reading(engine, "reading") as conn:
            stored = {(t, k): (int(n), int(e), int(z)) for t, k, n, e, z in conn.execute(select(b.tenant, b.class_key, b.next_id, b.end_id, b.size))}
        assert stored == blocks


def test_policy_attrs_limit_classes(home) -> None:
    docs = [{"external_id": f"d{i}", "attrs": {"dept": f"dep{i % 4}", "title": f"t{i}"}} for i in range(400)]
    with PermRAG.open(home, policy_attrs=["dept"], catalog_only=True) as rag:
        ids = rag.add_documents(docs)
        assert n_runs(BitMap(i for i, d in zip(ids, docs) if d["attrs"]["dept"] == "dep1")) == 1


def _wal_growth(rag, rounds: int = 3, commits: int = 150, pause: float = 0.8) -> list[int]:
    """WAL file size after each round of small policy commits."""
    wal = Path(rag.settings.home) / "permrag.db-wal"
    sizes = []
    for _ in range(rounds):
        for i in range(commits):
            rag.policy.grant("r", f"dept:x{i}")
        for i in range(commits):
            rag.policy.revoke("r", f"dept:x{i}")
        time.sleep(pause)
        sizes.append(wal.stat().st_size)
    return sizes


@pytest.mark.slow  # a subprocess, a stress run or a timed wait: left out by make test-fast
def test_wal_checkpoints_run_off_the_write_path(home) -> None:
    """SQLite's automatic checkpoint (a sync inside whichever commit crosses
    1,000 pages) is off on every connection; the background checkpointer keeps
    the WAL from growing. Control: the same store with the checkpointer
    stopped, where the WAL grows round after round."""
    rag = PermRAG.open(home, catalog_only=True)
    rag.policy.add_role("r")
    with rag._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    ckpt = db._CHECKPOINTERS[rag._engine]
    kept = _wal_growth(rag)
    assert ckpt.runs >= 2
    # reused from the start after each checkpoint: bounded by about one round's writes (a loaded
    # machine may let one round outrun a checkpoint and raise the high-water mark a little)
    assert max(kept) <= 1.5 * kept[0], kept
    ckpt.close()
    grown = _wal_growth(rag)
    assert grown[0] < grown[1] < grown[2], grown
    assert grown[2] > 2 * max(kept), (kept, grown)
    rag.close()
    assert not (home / "permrag.db-wal").exists() or (home / "permrag.db-wal").stat().st_size == 0
    # everything committed is in the database after close
    again = PermRAG.open(home, catalog_only=True)
    assert again.policy.rules("r") == []
    assert again.policy.roles() == ["r"]
    again.close()


def _index_state(rag, tenants) -> dict:
    """Every bitmap of the catalog's in-memory index, as plain sets."""
    out = {}
    for t in tenants:
        idx = rag.catalog.tenant(t)
        out[t] = (
            set(idx.rows),
            {(a, v): set(bm) for a, per in idx.attrs.items() for v, bm in per.items() if len(bm)},
            {c: set(bm) for c, bm in idx.classes.items() if len(bm)},
        )
    return out


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_persisted_index_equals_a_rebuild_after_growth_replace_and_delete(home, request, database) -> None:
    """The persisted bitmaps (updated, emptied and created in batches by each
    publish and delete) reload to exactly what a rebuild from the rows gives."""
    extra = {"database_url": request.getfixturevalue("pg_url")} if database == "postgres" else {}

    def docs(lo: int, hi: int, tenant: str) -> list[dict]:
        return [{"external_id": f"d{i}", "tenant": tenant, "attrs": {"dept": f"x{i % 3}", "page": str(i)}} for i in range(lo, hi)]

    with PermRAG.open(home, catalog_only=True, **extra) as rag:
        rag.add_documents(docs(0, 40, "a") + docs(0, 10, "b") + [{"external_id": "solo", "tenant": "a", "attrs": {"dept": "only"}}])
        rag.add_documents(docs(40, 70, "a"))  # existing keys grow, new page keys appear
        rag.add_documents([{"external_id": "d1", "tenant": "a", "attrs": {"dept": "moved"}}], replace=True)
        rag.delete(["solo", "d2", "d3"], tenant="a")  # dept:only and two page keys become empty
        live = _index_state(rag, ["a", "b"])
    assert ("dept", "only") not in live["a"][1] and ("dept", "moved") in live["a"][1]
    assert len(live["a"][0]) == 70 - 2 and len(live["b"][0]) == 10
    with PermRAG.open(home, catalog_only=True, **extra) as again:
        persisted = _index_state(again, ["a", "b"])
        again.catalog.rebuild_index()
        assert persisted == _index_state(again, ["a", "b"]) == live


def test_a_store_dropped_without_close_ends_its_checkpointer(tmp_path) -> None:
    import gc

    rag = PermRAG.open(tmp_path / "h", catalog_only=True)
    rag.policy.add_role("r")  # a commit starts the thread
    thread = db._CHECKPOINTERS[rag._engine]._thread
    assert thread is not None and thread.is_alive()
    del rag
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    with PermRAG.open(tmp_path / "h", catalog_only=True) as again:  # nothing committed was lost
        assert again.policy.roles() == ["r"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_document_lookups_use_the_indexes_not_a_scan_of_live_rows(tmp_path, request, backend):
    """The lookups of every write (a replace's old rows, a new document's
    duplicates) and of ``rag.document``: by name through (tenant, live_key), by
    parent through (tenant, parent), one statement each. Written as one
    condition (``state = 'live'`` beside an OR, or an OR of the two forms),
    SQLite's planner picked the state or the tenant index and read every live
    row (a write's cost grew with the store). Checked on the plans, and on the
    rows found: equal to a filter in Python."""
    import sqlalchemy as sa

    from permrag.catalog.rows import named, named_rows

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    rag = PermRAG.open(tmp_path / "s", **({"database_url": url} if url else {}))
    docs = [{"external_id": f"d{i}", "text": "x", "attrs": {"dept": "eng"}} for i in range(30)]
    chunked = [{"external_id": f"c{i}#{j}", "parent": f"c{i}", "text": "y", "attrs": {}} for i in range(10) for j in range(3)]
    rag.add_documents(docs + chunked)
    rag.add_documents([{"external_id": "d3", "text": "again", "attrs": {}}], replace=True)  # a retired row beside a live one
    t = db.rows.c
    names = ["d1", "d3", "c2", "c7", "nope"]
    with rag._engine.connect() as conn:
        got = sorted(int(r.row_id) for r in named_rows(conn, "default", names))
        every = conn.execute(sa.select(t.row_id, t.external_id, t.parent, t.state, t.tenant)).all()
        if backend == "sqlite":
            by_name, by_parent = named("default", names)
            for stmt, index in ((by_name, "(tenant=? AND live_key=?)"), (by_parent, "ix_permrag_rows_parent (tenant=? AND parent=?)")):
                sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
                plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
                assert index in plan and "SCAN" not in plan, plan
    want = sorted(int(r.row_id) for r in every if r.state == "live" and r.tenant == "default" and (r.external_id in names or r.parent in names))
    assert got == want and len(want) == 2 + 6
    rag.close()


def test_layered_maps_equal_a_dict_and_every_snapshot_stays_as_it_was():
    """The index's per-attribute maps (catalog/layered.py): random sets and
    removals, across folds, equal a dict; each earlier snapshot still equals
    the dict it was made from (searches read them while writes go on)."""
    import random

    from permrag.catalog import layered
    from permrag.catalog.layered import Layered

    rng = random.Random(5)
    ref: dict[str, int] = {f"k{i}": i for i in range(300)}
    m: Layered[int] = Layered(dict(ref))
    snapshots = [(m, dict(ref))]
    folds = 0
    for step in range(400):
        changes: dict[str, int | None] = {}
        for _ in range(rng.randint(1, 40)):
            key = f"k{rng.randint(0, 600)}"
            changes[key] = None if rng.random() < 0.4 else step
        before = m
        m = m.changed(changes)
        folds += m._base is not before._base
        for k, v in changes.items():
            if v is None:
                ref.pop(k, None)
            else:
                ref[k] = v
        assert dict(m.items()) == ref and len(m) == len(ref) and sorted(m) == sorted(ref)
        probe = f"k{rng.randint(0, 600)}"
        assert (probe in m) == (probe in ref) and m.get(probe) == ref.get(probe)
        if step % 50 == 0:
            snapshots.append((m, dict(ref)))
    assert folds >= 3 and len(m._top) <= max(layered.MIN_LAYER, len(m._base) // 16)
    for snap, want in snapshots:
        assert dict(snap.items()) == want and len(snap) == len(want)
