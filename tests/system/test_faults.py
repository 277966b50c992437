"""Faults: a Milvus server killed in the middle of searches, and a permrag
process killed (SIGKILL) in the middle of an ingest or a delete."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from permrag import BackendError, PermRAG
from permrag.embed import HashEncoder

from ..conftest import kill_milvus_server, milvus_ids, start_milvus_server

ROOT = Path(__file__).resolve().parents[2]
DEPTS = ["eng", "hr", "sales", "legal"]
QUERIES = ["budget plan", "hiring review", "roadmap launch", "vendor audit"]
USERS = {"ann": ["eng"], "bob": ["hr", "sales"], "cyd": ["legal", "eng", "hr"]}


def _world(rag: PermRAG) -> None:
    rng = random.Random(9)
    words = ["budget", "plan", "hiring", "review", "roadmap", "launch", "vendor", "audit", "travel", "q3"]
    rag.add_documents([{"external_id": f"x{i}", "text": " ".join(rng.choice(words) for _ in range(6)) + f" n{i}", "attrs": {"dept": DEPTS[i % 4]}} for i in range(400)])
    for user, depts in USERS.items():
        rag.policy.add_role(f"r-{user}")
        for d in depts:
            rag.policy.grant(f"r-{user}", f"dept:{d}")
        rag.policy.assign(user, f"r-{user}")


def _ranked(hits) -> list[tuple[str, float]]:
    return [(h.external_id, h.score) for h in hits]


def same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    """Equal top-k up to the order of rows whose scores tie (a restarted
    server searches sealed segments, which may break ties differently)."""
    if len(got) != len(want) or any(abs(g[1] - w[1]) > 1e-4 for g, w in zip(got, want)):
        return False
    by_score: dict[float, set[str]] = {}
    for ext, score in want:
        by_score.setdefault(round(score, 4), set()).add(ext)
    last = round(want[-1][1], 4) if want else None
    for ext, score in got:
        key = round(score, 4)
        if ext not in by_score.get(key, ()) and key != last:  # a tie at the cut may swap rows in
            return False
    return True


def test_server_killed_mid_search_raises_then_recovers_without_reingest(own_milvus_server, tmp_path):
    server = own_milvus_server
    port = server.listen_port
    rag = PermRAG.open(tmp_path / "home", milvus_uri=f"http://127.0.0.1:{port}", encoder=HashEncoder(64), consistency="Strong")
    _world(rag)
    reference = {(u, q): _ranked(rag.search(q, user=u, k=10, mode="dense")) for u in USERS for q in QUERIES}
    assert all(len(v) == 10 for v in reference.values())

    outcomes: list[tuple[float, str, object]] = []
    stop = threading.Event()

    def searcher(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            u, q = rng.choice(list(USERS)), rng.choice(QUERIES)
            try:
                got = _ranked(rag.search(q, user=u, k=10, mode="dense"))
                outcomes.append((time.monotonic(), "ok", (got, reference[(u, q)])))
            except Exception as exc:  # everything is recorded and judged below
                outcomes.append((time.monotonic(), "error", exc))
                time.sleep(0.01)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(1 for o in outcomes if o[1] == "ok") < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_at = time.monotonic()
    kill_milvus_server(server)
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(60)

    before = [o for o in outcomes if o[0] < killed_at]
    errors = [o[2] for o in outcomes if o[1] == "error"]
    assert len(before) >= 10 and errors, "searches ran on both sides of the kill"
    # never partial, never unfiltered: a search either returned exactly the
    # reference top-10 or raised BackendError
    for _, kind, value in outcomes:
        if kind == "ok":
            got, want = value
            assert same_ranking(got, want), (got, want)
        else:
            assert isinstance(value, BackendError), repr(value)
    assert [o for o in outcomes if o[0] > killed_at + 0.5 and o[1] == "ok"] == []

    # restart on the same port and data folder: the same PermRAG answers again
    restarted = start_milvus_server(Path(server.config.base_data_dir), port)
    try:
        deadline, got = time.monotonic() + 180, None
        while got is None:
            try:
                got = {(u, q): _ranked(rag.search(q, user=u, k=10, mode="dense")) for u, q in reference}
            except BackendError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        for key, want in reference.items():
            assert same_ranking(got[key], want), (key, got[key], want)
    finally:
        rag.close()
        restarted.stop()


def _crash(point: str, home: Path, uri: str = "", collection: str = "permrag") -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.crash_worker", point, str(home), uri, collection],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, f"the worker was not killed: rc={proc.returncode}\n{proc.stderr[-2000:]}"


def _consistent(rag: PermRAG) -> None:
    """No Milvus row without a live catalog entry, no live row missing from Milvus."""
    assert milvus_ids(rag) == set(rag.catalog.live_ids())
    assert rag.catalog.by_state("pending") == [] and rag.catalog.by_state("deleted") == []


@pytest.mark.parametrize("backend", ["lite", "server"])
def test_sigkill_mid_ingest_is_repaired_on_reopen(backend, tmp_path, request):
    uri = request.getfixturevalue("milvus_server") if backend == "server" else ""
    home = tmp_path / "home"
    collection = f"crash_{uuid.uuid4().hex[:8]}" if uri else "permrag"
    _crash("ingest", home, uri, collection)

    rag = PermRAG.open(home, milvus_uri=uri or None, encoder=HashEncoder(64), collection=collection, consistency="Strong")
    try:
        report = rag.last_repair
        # batch 1 of the second ingest was published; batch 2 reached Milvus
        # but not the catalog: it is what the reopen removed
        assert report is not None and report.pending_removed == 50
        live = {r.external_id for r in rag.rows(rag.catalog.live_ids())}
        assert live == {f"a{i}" for i in range(100)} | {f"b{i}" for i in range(50)}
        _consistent(rag)
        assert rag.reconcile(full=True).repaired is False  # nothing left to repair
        # the same documents can be ingested again, and are searchable
        rag.add_documents([{"external_id": f"b{i}", "text": f"quarterly budget b {i}", "attrs": {"dept": "eng"}} for i in range(50, 150)])
        rag.policy.add_role("eng")
        rag.policy.grant("eng", "dept:eng")
        rag.policy.assign("eve", "eng")
        hits = rag.search("quarterly budget", user="eve", k=300, mode="dense")
        assert len(hits) == 250
        _consistent(rag)
    finally:
        rag.close()


def test_sigkill_mid_delete_is_finished_on_reopen(tmp_path):
    home = tmp_path / "home"
    _crash("delete", home)
    rag = PermRAG.open(home, encoder=HashEncoder(64))
    try:
        assert rag.last_repair is not None and rag.last_repair.deleted_purged == 10
        assert len(rag.catalog.live_ids()) == 90
        _consistent(rag)
    finally:
        rag.close()


def test_reconcile_command_reports_the_repair(tmp_path):
    import json

    from click.testing import CliRunner

    from permrag.cli import main

    home = tmp_path / "home"
    _crash("ingest", home)
    res = CliRunner().invoke(main, ["--home", str(home), "reconcile", "--full", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{") :])
    assert report == {"pending_removed": 50, "deleted_purged": 0, "orphans_removed": 0, "missing": [], "full": True}
    res = CliRunner().invoke(main, ["--home", str(home), "reconcile"], catch_exceptions=False)
    assert res.exit_code == 0 and "0 rows of interrupted ingests removed" in res.output and "not scanned" in res.output


def test_reconcile_leaves_a_running_writers_batch_alone(tmp_path):
    """A second process opening the store mid-ingest must not take the first
    one's pending batch for a crashed one."""
    from permrag.catalog import row_spec

    home = tmp_path / "home"
    a = PermRAG.open(home, encoder=HashEncoder(64))
    a.add_documents([{"external_id": "x0", "text": "hello"}])
    batch = a.catalog.prepare([row_spec({"external_id": "x1"})])
    a.backend.insert(a.catalog.tenants.number("default"), [{"row_id": batch.row_ids[0], "tenant": "default", "external_id": "x1", "vclass": 0, "text": "hi", "dense": [0.1] * 64}])
    b = PermRAG.open(home, encoder=HashEncoder(64), catalog_only=True)
    assert b.last_repair is None and len(b.catalog.by_state("pending")) == 1
    b.close()
    a.catalog.publish(batch)  # still publishable: nobody took it away
    assert a.catalog.by_state("pending") == []
    a.close()


def test_an_abandoned_batch_cannot_be_published(tmp_path):
    from permrag import CatalogError
    from permrag.catalog import row_spec

    rag = PermRAG.open(tmp_path / "home", catalog_only=True)
    batch = rag.catalog.prepare([row_spec({"external_id": "x1"})])
    rag.catalog.journal.abandon(batch)
    assert rag.reconcile().pending_removed == 1
    with pytest.raises(CatalogError, match="cancelled by a reconcile"):
        rag.catalog.publish(batch)
    assert rag.catalog_version == 0 and rag.catalog.live_ids() == type(rag.catalog.live_ids())()


_BUILD_AND_RANK = """
import json, sys
from permrag import PermRAG
from permrag.embed import HashEncoder
from tests.system.test_faults import QUERIES, USERS, _ranked, _world
rag = PermRAG.open(sys.argv[1], encoder=HashEncoder(64))
_world(rag)
rag.backend.flush(rag.catalog.tenants.number("default"))
print(json.dumps({f"{u}|{q}": _ranked(rag.search(q, user=u, k=10, mode="dense")) for u in USERS for q in QUERIES}))
rag.close()
"""


def test_a_torn_lite_index_file_is_rebuilt_on_open(tmp_path):
    """Milvus Lite writes index sidecars in place from a background thread, so
    a SIGKILL can leave one torn; the next open must rebuild it from the
    segments and answer exactly as before, not fail to load forever."""
    import json

    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-c", _BUILD_AND_RANK, str(home)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {k: [tuple(x) for x in v] for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    assert all(len(v) == 10 for v in before.values())
    files = sorted(home.rglob("*.idx"))
    sizes = {f: f.stat().st_size for f in files}
    assert len(files) >= 2  # the root's and the tenant's
    for i, f in enumerate(files):  # one empty, the others cut mid-array
        with open(f, "r+b") as fh:
            fh.truncate(0 if i == 0 else sizes[f] // 2)

    rag = PermRAG.open(home, encoder=HashEncoder(64))  # this process has not opened the file yet: a cold load
    try:
        after = {f"{u}|{q}": _ranked(rag.search(q, user=u, k=10, mode="dense")) for u in USERS for q in QUERIES}
        assert after == before
        _consistent(rag)
    finally:
        rag.close()
    import numpy as np

    rebuilt = sorted(home.rglob("*.idx"))
    assert rebuilt  # rebuilt whole: every index file reads back (FLAT indexes are .npy arrays)
    for f in rebuilt:
        with open(f, "rb") as fh:
            assert np.load(fh, allow_pickle=False).ndim == 2


def test_a_lite_load_failure_without_index_files_still_raises(tmp_path):
    from permrag.backends.lite_files import load_collection

    class Broken:
        calls = 0

        def load_collection(self, name):
            Broken.calls += 1
            raise RuntimeError("segment data unreadable")

    with pytest.raises(RuntimeError, match="segment data unreadable"):
        load_collection(Broken(), "permrag_t1", str(tmp_path / "milvus.db"))
    assert Broken.calls == 1  # nothing to remove: not retried, the real error raised


def test_the_repair_touches_only_the_failing_collections_files(tmp_path):
    """Two stores on one Milvus Lite file: a torn index of one store's
    collection never costs the other store its index files."""
    from permrag.backends.lite_files import load_collection

    lite = tmp_path / "milvus.db"
    for coll in ("storea_t1", "storeb_t1"):
        d = lite / "collections" / coll / "partitions" / "_default" / "indexes"
        d.mkdir(parents=True)
        (d / "data_1.dense.flat.idx").write_bytes(b"x")
        (d / "data_1.vclass.inverted.sidx").write_bytes(b"x")
        (d.parent / "data_1.parquet").write_bytes(b"segment")

    class TornOnce:
        calls: list[str] = []

        def load_collection(self, name):
            TornOnce.calls.append(name)
            if len(TornOnce.calls) == 1:
                raise RuntimeError("No data left in file")

    load_collection(TornOnce(), "storea_t1", str(lite))
    assert TornOnce.calls == ["storea_t1", "storea_t1"]
    assert not list((lite / "collections" / "storea_t1").rglob("*idx"))
    assert len(list((lite / "collections" / "storeb_t1").rglob("*idx"))) == 2  # the other store's, untouched
    assert (lite / "collections" / "storea_t1" / "partitions" / "_default" / "data_1.parquet").exists()  # data stays
