"""A store given no layout chooses one, and its placement keeper
(placement/keeper.py) moves the rows a later policy left outside their
partitions in the background: every search before, during and after equals
brute force, on Milvus Lite and on a real server; the keepers of two
processes sharing one store (PostgreSQL, server) move each row once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from permrag import PermRAG
from permrag.embed import HashEncoder
from permrag.errors import ConfigError
from permrag.placement.covis import LAYOUT_SETTING
from permrag.placement.keeper import LEASE
from permrag.placement.layout import DEFAULT_GROUPS
from permrag.storage import db

from ..helpers.reference import assert_top_k
from ..integration.test_covis import assert_covisible, make_policy
from ..integration.test_layout import QUERIES, docs_for

ROOT = Path(__file__).resolve().parents[2]
USERS = ["u-eng", "u-fin", "u-big", "u-glob", "u-all", "acl-1", "nobody"]


def _opts(kind: str, request, **more):
    opts = dict(encoder=HashEncoder(48), local_rows=0, **more)
    if kind == "server":
        opts.update(milvus_uri=request.getfixturevalue("milvus_server"), consistency="Strong")
    return opts


def expected(rag: PermRAG, users=USERS) -> dict[str, set[str]]:
    """Each user's readable documents, by external id (a row move changes row IDs, not these)."""
    return {u: {r.external_id for r in rag.rows(rag.visible(u))} for u in users}


def assert_exact(rag: PermRAG, vecs, readable: dict[str, set[str]], k: int = 10) -> None:
    for user, docs in readable.items():
        for q in QUERIES:
            qv = rag.encoder.encode([q])[0]
            qv = qv / np.linalg.norm(qv)
            ref = {e: float(vecs[e] @ qv) for e in docs}
            hits = rag.search(q, user=user, k=k, mode="dense")
            assert {h.external_id for h in hits} <= docs, user
            assert_top_k([h.external_id for h in hits], ref, k)


def stored_layout(rag: PermRAG) -> dict:
    with rag._engine.connect() as conn:
        return json.loads(db.get_setting(conn, LAYOUT_SETTING))


@pytest.mark.parametrize("kind", ["lite", "server"])
def test_a_store_given_no_layout_chooses_one_and_other_processes_take_it(kind, tmp_path, request) -> None:
    collection = f"k_{uuid.uuid4().hex[:10]}"
    rag = PermRAG.open(tmp_path / "h", collection=collection, **_opts(kind, request, repartition_every=0))
    try:
        assert stored_layout(rag) == {"groups": DEFAULT_GROUPS[kind], "group_by": "visibility+acl"}
        make_policy(rag)  # roles before the rows: each class goes to its signature's group at once
        docs = docs_for(600)
        rag.add_documents(docs, batch_size=300)
        no = rag.catalog.tenants.number("default")
        assert rag.backend.grouping(no).groups == DEFAULT_GROUPS[kind]
        assert_covisible(rag, DEFAULT_GROUPS[kind])  # every row in its signature's group
        vecs = dict(zip((d["external_id"] for d in docs), rag.encoder.encode([d["text"] for d in docs])))
        assert_exact(rag, vecs, expected(rag))
    finally:
        rag.close()
    script = "import sys, json; from permrag import PermRAG; r = PermRAG.open(sys.argv[1], collection=sys.argv[2], milvus_uri=sys.argv[3] or None, encoder='hash');"
    script += "p = r.catalog.allocator.placement; print(json.dumps([p.groups, p.acls])); r.close()"
    uri = request.getfixturevalue("milvus_server") if kind == "server" else ""
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "h"), collection, uri], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [DEFAULT_GROUPS[kind], True]  # another process, no options: the recorded layout


@pytest.mark.parametrize("index", ["HNSW", "IVF_FLAT"])
def test_a_store_with_an_ann_index_given_no_layout_stays_flat(index, tmp_path) -> None:
    """Each partition's segments carry an index of their own, and a search pays for
    every segment it names: an ANN store given no layout keeps one partition, and
    records it (no keeper: nothing to move). An explicit layout still wins."""
    with PermRAG.open(tmp_path / "h", encoder=HashEncoder(48), index=index) as rag:
        assert stored_layout(rag) == {"groups": 0, "group_by": "class"}
        assert rag.keeper is None
        rag.add_documents(docs_for(50))
        assert rag.backend.grouping(rag.catalog.tenants.number("default")) is None
    with PermRAG.open(tmp_path / "g", encoder=HashEncoder(48), index=index, partitions=8, partition_by="visibility+acl", repartition_every=0) as rag:
        assert stored_layout(rag) == {"groups": 8, "group_by": "visibility+acl"}
        rag.add_documents(docs_for(50))
        assert rag.backend.grouping(rag.catalog.tenants.number("default")).groups == 8


@pytest.mark.parametrize("kind", ["lite", "server"])
def test_the_keeper_moves_what_a_late_policy_left_behind_while_searches_stay_exact(kind, tmp_path, request) -> None:
    collection = f"k_{uuid.uuid4().hex[:10]}"
    docs = docs_for(1200)
    with PermRAG.open(tmp_path / "h", collection=collection, **_opts(kind, request, repartition_every=0)) as rag:
        rag.add_documents(docs, batch_size=400)
        make_policy(rag)  # after the rows: most classes sit in the group of the empty signature
        readable = expected(rag)
        misplaced = rag.repartition(dry_run=True).misplaced_rows
        assert misplaced > 500
    vecs = {d["external_id"]: v / (v @ v) ** 0.5 for d, v in zip(docs, HashEncoder(48).encode([d["text"] for d in docs]))}
    rag = PermRAG.open(tmp_path / "h", collection=collection, **_opts(kind, request, repartition_every=0.2))
    try:
        assert rag.keeper is not None
        rounds, deadline = 0, time.monotonic() + 180
        while rag.keeper.settled != rag.policy_version and time.monotonic() < deadline:  # searched while the rows move (and their old copies go)
            assert_exact(rag, vecs, readable)
            rounds += 1
        assert rag.keeper.runs == 1 and rag.keeper.moved_rows == misplaced, (rag.keeper.runs, rag.keeper.moved_rows, misplaced)
        assert rounds >= 1
        assert rag.repartition(dry_run=True).misplaced_rows == 0
        assert_covisible(rag, DEFAULT_GROUPS[kind])
        assert_exact(rag, vecs, readable)
        with rag._engine.connect() as conn:
            assert json.loads(db.get_setting(conn, LEASE) or "{}") == {}  # given back
        rag.policy.assign("u-new", "eng")  # a membership changes no signature: nothing to move
        time.sleep(1.0)
        assert rag.keeper.moved_rows == misplaced and rag.keeper.settled == rag.policy_version
    finally:
        rag.close()
    assert not rag.keeper._thread.is_alive()


def test_a_lease_another_process_holds_keeps_this_keeper_off_until_it_expires(tmp_path) -> None:
    home = tmp_path / "h"
    with PermRAG.open(home, encoder=HashEncoder(48), local_rows=0, repartition_every=0) as rag:
        rag.add_documents(docs_for(300), batch_size=300)
        make_policy(rag)
        misplaced = rag.repartition(dry_run=True).misplaced_rows
        assert misplaced > 0
        with db.transaction(rag._engine, "test") as conn:
            db.set_setting(conn, LEASE, json.dumps({"holder": "someone-else", "until": time.time() + 3600}))
    rag = PermRAG.open(home, encoder=HashEncoder(48), local_rows=0, repartition_every=3600)  # looks by hand below
    try:
        keeper = rag.keeper
        assert keeper.look() is False  # the first look only notes the version
        assert keeper.look() is True and keeper.runs == 0 and keeper.settled is None  # quiet, misplaced rows, but another holds the lease
        assert rag.repartition(dry_run=True).misplaced_rows == misplaced
        with db.transaction(rag._engine, "test") as conn:
            db.set_setting(conn, LEASE, json.dumps({"holder": "someone-else", "until": time.time() - 1}))  # its holder died
        assert keeper.look() is True and keeper.runs == 1 and keeper.moved_rows == misplaced
        assert keeper.look() is False  # settled
    finally:
        rag.close()


def test_repartition_every_is_checked_and_zero_turns_the_keeper_off(tmp_path) -> None:
    for bad in (-1, float("nan"), float("inf"), "60", True, None):
        with pytest.raises(ConfigError, match="repartition_every"):
            PermRAG.open(tmp_path / "x", encoder=HashEncoder(48), repartition_every=bad)
    with PermRAG.open(tmp_path / "a", encoder=HashEncoder(48), repartition_every=0) as rag:
        assert rag.keeper is None
    with PermRAG.open(tmp_path / "b", encoder=HashEncoder(48), partitions=0) as rag:
        assert rag.keeper is None  # one partition: nothing to place
    with PermRAG.open(tmp_path / "c", encoder=HashEncoder(48)) as rag:
        assert rag.keeper is not None and rag.keeper.every == 300.0


WORKER = """
import json, sys, time
from permrag import PermRAG
from permrag.embed import HashEncoder
home, db_url, uri, collection = sys.argv[1:5]
rag = PermRAG.open(home, database_url=db_url, milvus_uri=uri, encoder=HashEncoder(48), collection=collection, consistency="Strong", local_rows=0, repartition_every=0.2)
readable = json.load(open(sys.argv[5]))
deadline = time.monotonic() + 240
while time.monotonic() < deadline:
    for user, docs in readable.items():
        got = {h.external_id for h in rag.search("budget w3", user=user, k=20, mode="dense")}
        assert got <= set(docs), ("leak", user, sorted(got - set(docs)))
        assert len(got) == min(20, len(docs)), ("short", user, len(got))
    if rag.keeper.settled is not None and rag.keeper.settled == rag.policy_version:
        break
print(json.dumps({"moved": rag.keeper.moved_rows, "runs": rag.keeper.runs, "settled": rag.keeper.settled is not None}))
rag.close()
"""


def test_keepers_of_two_processes_move_each_row_once(tmp_path, pg_url, milvus_server) -> None:
    collection = f"k_{uuid.uuid4().hex[:10]}"
    home = tmp_path / "h"
    opts = dict(database_url=pg_url, milvus_uri=milvus_server, encoder=HashEncoder(48), collection=collection, consistency="Strong", local_rows=0, repartition_every=0)
    with PermRAG.open(home, **opts) as rag:
        rag.add_documents(docs_for(1500), batch_size=500)
        make_policy(rag)
        misplaced = rag.repartition(dry_run=True).misplaced_rows
        assert misplaced > 500
        (tmp_path / "readable.json").write_text(json.dumps({u: sorted(d) for u, d in expected(rag).items()}))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(home), pg_url, milvus_server, collection, str(tmp_path / "readable.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    done = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all(d["settled"] for d in done)
    assert sum(d["moved"] for d in done) == misplaced, done  # each row moved once, by one of them
    with PermRAG.open(home, **opts) as rag:
        assert rag.repartition(dry_run=True).misplaced_rows == 0
        assert_covisible(rag, DEFAULT_GROUPS["server"])


def test_a_store_dropped_without_close_is_collected_and_its_keeper_stops(tmp_path) -> None:
    import gc
    import weakref

    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(48), repartition_every=0.05)
    rag.add_documents(docs_for(50))
    make_policy(rag)
    assert rag.search(QUERIES[0], user="u-all", k=5, mode="dense")
    thread, store = rag.keeper._thread, weakref.ref(rag)
    deadline = time.monotonic() + 120
    while (rag.keeper.runs == 0 or rag.keeper.settled != rag.policy_version) and time.monotonic() < deadline:
        time.sleep(0.05)  # the keeper has looked and moved meanwhile (while it moves, it holds its store)
    assert rag.keeper.runs == 1 and thread.is_alive()
    del rag
    deadline = time.monotonic() + 10
    while store() is not None and time.monotonic() < deadline:  # (a look in progress holds it for a moment)
        gc.collect()
        time.sleep(0.01)
    assert store() is None  # the keeper holds its store weakly
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.parametrize("kind,mover", [("lite", "other"), ("server", "other"), ("lite", "same"), ("server", "same")])
def test_an_answer_short_of_rows_moved_after_its_snapshot_is_asked_again(kind, mover, tmp_path, request) -> None:
    """Another store object (as another process would) or the same one (as its
    placement keeper's thread does) moves the rows right after this search took
    its snapshot: the old IDs have left Milvus, so the first answer comes back
    short; it is asked again at the versions of now."""
    collection = f"k_{uuid.uuid4().hex[:10]}"
    opts = _opts(kind, request, repartition_every=0, collection=collection)
    a = PermRAG.open(tmp_path / "h", **opts)
    b = None
    try:
        docs = docs_for(400)
        a.add_documents(docs, batch_size=400)
        make_policy(a)
        readable = expected(a)
        b = PermRAG.open(tmp_path / "h", **opts) if mover == "other" else None
        take, moved, by = a.access.snapshot_of, [], b or a

        def racing(*args, **kw):
            snap = take(*args, **kw)
            if not moved:
                moved.append(by.repartition())  # after this snapshot, before its Milvus search
            return snap

        a.access.snapshot_of = racing
        vecs = {d["external_id"]: v / np.linalg.norm(v) for d, v in zip(docs, a.encoder.encode([d["text"] for d in docs]))}
        before = a.stats["searches:again"]
        assert_exact(a, vecs, {"u-fin": readable["u-fin"]})
        assert moved and moved[0].moved_rows > 0
        assert a.stats["searches:again"] > before  # the first answer was short, and asked again
        hits = a.search(QUERIES[1], user="u-big", k=10, mode="dense")
        assert hits.complete and len(hits) == 10
    finally:
        a.close()
        if b is not None:
            b.close()


def test_keepers_of_two_stores_on_one_milvus_move_only_their_own_rows(tmp_path, milvus_server) -> None:
    """Two stores (two catalogs, two collections) on one Milvus server, each with
    a late policy and a keeper: both keepers run at once, searches of each store
    stay exact while they do, each moves exactly its own misplaced rows, and each
    collection ends holding exactly its store's live rows — no keeper touched the
    other store's collection."""
    stores: dict[str, PermRAG] = {}
    try:
        misplaced, readable, vecs = {}, {}, {}
        for name, seed in (("a", 3), ("b", 4)):
            docs = docs_for(600, seed=seed)
            opts = dict(encoder=HashEncoder(48), local_rows=0, milvus_uri=milvus_server, consistency="Strong", collection=f"k{name}_{uuid.uuid4().hex[:8]}")
            with PermRAG.open(tmp_path / name, **opts, repartition_every=0) as rag:
                rag.add_documents(docs, batch_size=300)
                make_policy(rag)
                misplaced[name] = rag.repartition(dry_run=True).misplaced_rows
                readable[name] = expected(rag)
            assert misplaced[name] > 100
            vecs[name] = {d["external_id"]: v / (v @ v) ** 0.5 for d, v in zip(docs, HashEncoder(48).encode([d["text"] for d in docs]))}
            stores[name] = PermRAG.open(tmp_path / name, **opts, repartition_every=0.2)
        deadline = time.monotonic() + 180
        while any(r.keeper.settled != r.policy_version for r in stores.values()) and time.monotonic() < deadline:
            for name, rag in stores.items():
                assert_exact(rag, vecs[name], readable[name])
        for name, rag in stores.items():
            assert rag.keeper.settled == rag.policy_version, f"store {name} did not settle"
            assert rag.keeper.moved_rows == misplaced[name], (name, rag.keeper.moved_rows, misplaced[name])
            assert rag.repartition(dry_run=True).misplaced_rows == 0
            no = rag.catalog.tenants.number("default")
            # (settled once the moved rows' old copies are dropped, after their grace)
            assert rag.backend.all_ids(no) == set(rag.catalog.tenant("default").rows), f"store {name}: its collection holds rows it does not have"
            assert_exact(rag, vecs[name], readable[name])
    finally:
        for rag in stores.values():
            rag.close()
