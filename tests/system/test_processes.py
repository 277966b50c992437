"""Two processes share one policy store (PostgreSQL, or the SQLite file) and
one Milvus server. Each change committed in this process must hold for the
next search in the other: the number of searches served on a stale policy
version is measured and must be 0."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from permrag import PermRAG
from permrag.embed import HashEncoder

ROOT = Path(__file__).resolve().parents[2]
DEPTS = ["eng", "hr", "sales", "legal"]
USERS = ["ann", "bob", "cyd"]


def _start_worker(home: Path, db_url: str, uri: str, collection: str, tmp: Path) -> tuple[subprocess.Popen, Path, Path]:
    out, stop = tmp / "worker.jsonl", tmp / "stop"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.search_worker", str(home), db_url, uri, collection, str(out), str(stop), ",".join(USERS)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "worker.err", "w"),
    )
    deadline = time.monotonic() + 120
    while not Path(str(out) + ".ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"search worker did not start: {(tmp / 'worker.err').read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, out, stop


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_revoke_in_one_process_holds_for_the_next_search_in_the_other(store, tmp_path, request):
    uri = request.getfixturevalue("milvus_server")
    db_url = request.getfixturevalue("pg_url") if store == "postgres" else ""
    home = tmp_path / "home"
    collection = f"c_{uuid.uuid4().hex[:12]}"
    rag = PermRAG.open(home, database_url=db_url or None, milvus_uri=uri, collection=collection, encoder=HashEncoder(64), consistency="Strong")
    rng = random.Random(5)
    docs = [{"external_id": f"x{i}", "text": f"budget roadmap note {i}", "tenant": "acme", "attrs": {"dept": DEPTS[i % 4]}} for i in range(200)]
    rag.add_documents(docs)
    dept_of = {d["external_id"]: d["attrs"]["dept"] for d in docs}
    p = rag.policy
    grants: dict[str, set[str]] = {}
    for u in USERS:
        p.add_role(f"role-{u}", tenant="acme")
        p.assign(u, f"role-{u}", tenant="acme")
        grants[u] = set()
    # what each user may read, by policy version, as this test sets it
    allowed: dict[int, dict[str, set[str]]] = {p.version: {u: set() for u in USERS}}
    changes: list[tuple[float, int]] = []

    proc, out, stop = _start_worker(home, db_url, uri, collection, tmp_path)
    try:
        for _ in range(60):
            u = rng.choice(USERS)
            dept = rng.choice(DEPTS)
            if dept in grants[u]:
                p.revoke(f"role-{u}", f"dept:{dept}", tenant="acme")
                grants[u].discard(dept)
            else:
                p.grant(f"role-{u}", f"dept:{dept}", tenant="acme")
                grants[u].add(dept)
            changes.append((time.monotonic(), p.version))
            allowed[p.version] = {v: set(g) for v, g in grants.items()}
            time.sleep(rng.uniform(0.05, 0.2))
        time.sleep(0.5)
    finally:
        stop.touch()
        proc.wait(60)
        rag.close()
    assert proc.returncode == 0, (tmp_path / "worker.err").read_text()[-2000:]

    searches = [json.loads(line) for line in out.read_text().splitlines()]
    # The other process really searched throughout, with results.
    assert len(searches) >= 100
    assert sum(1 for s in searches if s["rows"]) >= 30
    after = [s for s in searches if s["t"] > changes[0][0]]
    assert len({s["v"] for s in after}) >= 20, "the other process saw too few of the changes to show anything"

    stale = 0
    for s in searches:
        newest = max((v for t, v in changes if t < s["t"]), default=0)
        if s["v"] < newest:
            stale += 1
        depts = allowed[s["v"]][s["user"]]
        leaked = [r for r in s["rows"] if dept_of[r] not in depts]
        assert not leaked, f"{s['user']} at version {s['v']} got {leaked}"
    assert stale == 0, f"{stale} of {len(searches)} searches ran on a stale policy version"
    print(f"\n{store}: {len(searches)} searches in the other process, {len(changes)} changes, stale: {stale}")
