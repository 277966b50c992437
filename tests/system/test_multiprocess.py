"""Several processes on one policy store (PostgreSQL): every read and every
change runs against the stored versions, and no writer's change is lost.

A second process is a real process (``tests/helpers/policy_worker.py``), with
its own in-memory copy of the policy and catalog that the test deliberately
lets go stale before it acts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from permrag import PermRAG

from ..conftest import oracle_selector_match

ROOT = Path(__file__).resolve().parents[2]


class Other:
    """A second process acting on the same store."""

    def __init__(self, home: Path, db_url: str, *store: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.policy_worker", str(home), db_url, *store],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}, self.proc.stderr.read()

    def __call__(self, call: str, *args, **kwargs):
        self.proc.stdin.write(json.dumps({"call": call, "args": list(args), "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture
def two(tmp_path, pg_url):
    rag = PermRAG.open(tmp_path / "a", database_url=pg_url, catalog_only=True)
    rag.add_documents([{"external_id": f"x{i}", "attrs": {"dept": ["eng", "hr", "fin"][i % 3], "lvl": str(i % 2)}} for i in range(12)])
    for r in ("eng", "hr", "staff", "x", "y"):
        rag.policy.add_role(r)
    rag.policy.grant("eng", "dept:eng")
    rag.policy.assign_user("ann", "eng")
    other = Other(tmp_path / "b", pg_url)
    assert other("visible", "ann")["ok"]  # the other process has loaded its copy now
    yield rag, other
    other.close()
    rag.close()


def names(rag: PermRAG, user: str) -> set[str]:
    return {r.external_id for r in rag.rows(rag.visible(user))}


def test_a_deny_from_a_stale_process_is_never_skipped(two):
    rag, other = two
    assert other("policy.deny", "eng", "lvl:1") == {"ok": True}
    assert rag.policy.revoke("eng", "lvl:1") is None  # this process revokes it; the other still has it in memory
    # the other process denies again: its copy says "already there", the store says not
    assert other("policy.deny", "eng", "lvl:1") == {"ok": True}
    assert all(n not in names(rag, "ann") for n in ("x3", "x9"))
    assert other("visible", "ann")["ok"] == sorted(rag.visible("ann"))


def test_revoke_and_unassign_of_what_another_process_granted(two):
    rag, other = two
    other("visible", "ann")
    rag.policy.grant("hr", "dept:hr")
    rag.policy.assign_user("bob", "hr")
    assert other("policy.revoke", "hr", "dept:hr") == {"ok": None}
    assert other("policy.unassign_user", "bob", "hr") == {"ok": None}
    assert rag.policy.rules("hr") == [] and rag.policy.roles_of("bob") == []
    assert names(rag, "bob") == set()


def test_two_processes_cannot_build_a_cycle_together(two):
    rag, other = two
    other("visible", "ann")
    assert rag.policy.inherit("x", "y") is True
    got = other("policy.inherit", "y", "x")
    assert got["error"] == "RoleCycleError"
    # later changes keep working in both processes
    assert other("policy.inherit", "staff", "eng") == {"ok": True}
    assert rag.policy.inherit("hr", "staff") is True


def test_reads_answer_at_the_stored_version(two):
    rag, other = two
    assert len(other("visible", "ann")["ok"]) == 4
    rag.policy.grant("eng", "dept:hr")
    assert len(other("visible", "ann")["ok"]) == 8
    assert other("can_read", "ann", "x1") == {"ok": True}
    assert other("explain", "ann", "x1")["ok"]["visible"] is True
    assert other("who_can_see", "x1") == {"ok": {"users": ["ann"], "roles": ["eng"]}}
    rag.policy.revoke("eng", "dept:hr")
    assert other("can_read", "ann", "x1") == {"ok": False}
    assert other("who_can_see", "x1") == {"ok": {"users": [], "roles": []}}


def test_concurrent_publishes_never_hide_a_row_from_a_deny(two, tmp_path, pg_url):
    """A publishes, the other process publishes, A publishes again: A's copy
    must hold the other's rows, or a deny on their attribute would miss them."""
    rag, other = two
    rag.policy.add_role("doc-reader")
    rag.policy.grant("doc-reader", "doc:theirs")  # allowed by name (SQL) …
    rag.policy.deny("doc-reader", "lvl:secret")  # … denied by attribute (index)
    rag.policy.assign_user("cyd", "doc-reader")
    rag.add_documents([{"external_id": "mine-1", "attrs": {"lvl": "1"}}])
    assert other("add_documents", [{"external_id": "theirs", "attrs": {"lvl": "secret"}}])["ok"]
    rag.add_documents([{"external_id": "mine-2", "attrs": {"lvl": "1"}}])
    assert "theirs" in {r.external_id for r in rag.rows(rag.catalog.tenant_rows("default"))}
    assert names(rag, "cyd") == set()
    fresh = PermRAG.open(tmp_path / "fresh", database_url=pg_url, catalog_only=True)
    assert fresh.visible("cyd") == rag.visible("cyd")
    fresh.close()


# ---------------------------------------------------------------- the stress test
SECONDS = int(os.environ.get("PERMRAG_STRESS_SECONDS", "15"))  # longer runs: PERMRAG_STRESS_SECONDS=300
MIN_OPS = 300  # each worker's floor of operations, however slow the machine: the counts asserted below need them


class Model:
    """The policy as the two processes' change logs describe it, version by version."""

    def __init__(self) -> None:
        self.allow: set[tuple[str, str]] = set()
        self.deny: set[tuple[str, str]] = set()
        self.users: set[tuple[str, str]] = set()

    def apply(self, c: dict) -> None:
        key = (c["role"], c.get("sel") or c.get("user"))
        if c["op"] == "grant":
            self.allow.add(key)
        elif c["op"] == "deny":
            self.deny.add(key)
        elif c["op"] == "revoke":
            self.allow.discard(key)
            self.deny.discard(key)
        elif c["op"] == "assign":
            self.users.add((c["user"], c["role"]))
        elif c["op"] == "unassign":
            self.users.discard((c["user"], c["role"]))

    def visible(self, user: str, rows: dict[str, dict], matched: dict[str, set[str]] | None = None) -> set[str]:
        """Rows the user may read; ``matched`` caches selector → rows (the oracle's own matcher)."""
        matched = {} if matched is None else matched

        def rows_of(sel: str) -> set[str]:
            if sel not in matched:
                matched[sel] = {e for e, a in rows.items() if oracle_selector_match({"tenant": "acme", "external_id": e, "attrs": a}, "acme", sel)}
            return matched[sel]

        roles = {r for u, r in self.users if u == user}
        allow = set().union(*(rows_of(s) for r, s in self.allow if r in roles))
        deny = set().union(*(rows_of(s) for r, s in self.deny if r in roles))
        return allow - deny


def check_store(logs: list[list[dict]], v0: int, initial: dict[str, dict], fresh: PermRAG) -> dict[str, int]:
    """One store's logs (from every process writing it) against the model the
    logs themselves describe; returns what was checked."""
    changes = sorted((r for log in logs for r in log if r["kind"] == "change"), key=lambda r: r["v"])
    versions = [c["v"] for c in changes]
    # no lost update: every change has a version of its own, and together they are every version
    assert versions == list(range(v0 + 1, v0 + 1 + len(changes))), "two changes claimed one version, or one was lost"
    rows = dict(initial)  # acme's rows: a row of globex, or of another store, is never permitted here
    for log in logs:
        for r in log:
            if r["kind"] == "ingest" and r["tenant"] == "acme":
                rows.update(r["rows"])
    m = Model()
    state = {v0: (set(), set(), set())}
    for c in changes:
        m.apply(c)
        state[c["v"]] = (set(m.allow), set(m.deny), set(m.users))
    cache: dict[tuple[int, str], set[str]] = {}
    matched: dict[str, set[str]] = {}
    searches = [r for log in logs for r in log if r["kind"] == "search"]
    for s in searches:
        key = (s["v"], s["user"])
        if key not in cache:
            mv = Model()
            mv.allow, mv.deny, mv.users = state[s["v"]]
            cache[key] = mv.visible(s["user"], rows, matched)
        leaked = set(s["rows"]) - cache[key]
        assert not leaked, f"{s['user']} at version {s['v']} got rows not permitted then: {sorted(leaked)[:5]}"
    # afterwards every process agrees with a from-scratch compile
    for fin in (next(r for r in log if r["kind"] == "final") for log in logs):
        assert fin["v"] == fresh.policy_version == (versions[-1] if versions else v0)
        for user, got in fin["visible"].items():
            assert set(got) == {r.external_id for r in fresh.rows(fresh.visible(user, "acme"))} == m.visible(user, rows), user
    return {
        "changes": len(changes),
        "revokes": sum(1 for c in changes if c["op"] == "revoke"),
        "ingests": sum(1 for log in logs for r in log if r["kind"] == "ingest"),
        "globex_ingests": sum(1 for log in logs for r in log if r["kind"] == "ingest" and r["tenant"] == "globex"),
        "rows": len(rows) - len(initial),
        "searches": len(searches),
        "with_rows": sum(1 for s in searches if s["rows"]),
    }


def test_two_processes_ingest_change_and_search_for_a_while(tmp_path, pg_url, milvus_server):
    """Two processes write one store (PostgreSQL) in two tenants while a third
    process writes a second store on the same Milvus server, for SECONDS (15 s by default)."""
    from permrag.embed import HashEncoder

    from ..helpers.stress_worker import ROLES

    collection = f"stress_{uuid.uuid4().hex[:8]}"
    setup = PermRAG.open(tmp_path / "setup", database_url=pg_url, milvus_uri=milvus_server, collection=collection, encoder=HashEncoder(32))
    initial = {f"s{i}": {"dept": f"d{i % 6}", "lvl": str(1 + i % 3)} for i in range(60)}
    setup.add_documents([{"external_id": e, "text": "budget hiring roadmap", "tenant": "acme", "attrs": a} for e, a in initial.items()])
    for r in ROLES:
        setup.policy.add_role(r, tenant="acme")
    v0 = setup.policy_version
    setup.close()
    outs = [tmp_path / f"w{i}.jsonl" for i in range(3)]
    # workers 0 and 1 share the PostgreSQL store; worker 2 is another store (its own SQLite catalog
    # and collection) on the same Milvus: any of the shared store's rows in its results is a leak
    stores = [(pg_url, collection, "p0"), (pg_url, collection, "p1"), ("", f"{collection}_other", "q")]
    procs = []
    for i, (db_url, coll, prefix) in enumerate(stores):
        peers = ",".join(str(o) for j, o in enumerate(outs) if j != i)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.helpers.stress_worker", str(tmp_path / f"h{i}"), db_url, milvus_server, coll, str(i + 1), str(SECONDS), str(outs[i]), prefix, peers, str(MIN_OPS)],
                cwd=ROOT,
                stderr=open(tmp_path / f"w{i}.err", "w"),
            )
        )
    t0 = time.monotonic()
    for i, proc in enumerate(procs):
        assert proc.wait(SECONDS + 300) == 0, (tmp_path / f"w{i}.err").read_text()[-3000:]
    assert time.monotonic() - t0 >= SECONDS
    logs = [[json.loads(line) for line in out.read_text().splitlines()] for out in outs]

    fresh = PermRAG.open(tmp_path / "fresh", database_url=pg_url, catalog_only=True)
    shared = check_store(logs[:2], v0, initial, fresh)
    fresh.close()
    other = PermRAG.open(tmp_path / "h2", milvus_uri=milvus_server, collection=f"{collection}_other", catalog_only=True)
    alone = check_store(logs[2:], 0, {}, other)
    other.close()
    assert shared["changes"] >= 100 and shared["revokes"] >= 10 and shared["ingests"] >= 20 and shared["with_rows"] >= 100
    assert shared["globex_ingests"] >= 3 and alone["with_rows"] >= 20
    print(f"\nshared store, 2 processes, {SECONDS} s: {shared}; other store on the same Milvus: {alone}; leaks 0, lost updates 0")
