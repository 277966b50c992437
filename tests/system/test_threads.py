"""Thread safety (issue 13): many threads read bitmaps and search while another
thread changes the policy and ingests; every answer agrees with a
from-scratch model of the policy and catalog at the versions it reports."""

from __future__ import annotations

import random
import threading

from permrag import PermRAG
from permrag.embed import HashEncoder

from ..conftest import oracle_selector_match
from ..helpers.load import run_until

SECONDS = 12
DEPTS = ["a", "b", "c", "d"]
ROLES = ["r0", "r1", "r2", "r3"]
USERS = ["u0", "u1", "u2", "u3", "r1"]  # "r1": a user called like a role


def _visible(allow, deny, users, user, rows):
    roles = {r for u, r in users if u == user}
    a = [s for r, s in allow if r in roles]
    d = [s for r, s in deny if r in roles]
    return {
        ext
        for ext, attrs in rows
        if any(oracle_selector_match({"tenant": "default", "external_id": ext, "attrs": attrs}, "default", s) for s in a)
        and not any(oracle_selector_match({"tenant": "default", "external_id": ext, "attrs": attrs}, "default", s) for s in d)
    }


def test_readers_always_see_one_consistent_version(tmp_path):
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(32), audit="off")
    rows: list[tuple[str, dict]] = [(f"x{i}", {"dept": DEPTS[i % 4]}) for i in range(40)]
    rag.add_documents([{"external_id": e, "text": f"note {e}", "attrs": a} for e, a in rows])
    for r in ROLES:
        rag.policy.add_role(r)
    states: dict[tuple[int, int], tuple] = {}
    allow: set = set()
    deny: set = set()
    users: set = set()

    def record() -> None:
        states[(rag.policy_version, rag.catalog_version)] = (frozenset(allow), frozenset(deny), frozenset(users), len(rows))

    record()
    stop = threading.Event()
    seen: list[tuple] = []
    errors: list[BaseException] = []

    def writer() -> None:
        rng = random.Random(1)
        n = 40
        try:
            while not stop.is_set():
                op = rng.random()
                role, sel = rng.choice(ROLES), f"dept:{rng.choice(DEPTS)}"
                if op < 0.3:
                    if rag.policy.grant(role, sel):
                        allow.add((role, sel))
                elif op < 0.4:
                    if rag.policy.deny(role, sel):
                        deny.add((role, sel))
                elif op < 0.6:
                    if (role, sel) in allow or (role, sel) in deny:
                        rag.policy.revoke(role, sel)
                        allow.discard((role, sel))
                        deny.discard((role, sel))
                elif op < 0.75:
                    u = rng.choice(USERS)
                    if rag.policy.assign_user(u, role):
                        users.add((u, role))
                elif op < 0.85:
                    held = sorted(users)
                    if held:
                        u, r = rng.choice(held)
                        rag.policy.unassign_user(u, r)
                        users.discard((u, r))
                else:
                    batch = [(f"x{n + i}", {"dept": rng.choice(DEPTS)}) for i in range(3)]
                    n += 3
                    rag.add_documents([{"external_id": e, "text": f"note {e}", "attrs": a} for e, a in batch])
                    rows.extend(batch)
                record()
        except BaseException as exc:  # reported below
            errors.append(exc)
            stop.set()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                user = rng.choice(USERS)
                if rng.random() < 0.7:
                    snap = rag.snapshot(user)
                    got = {r.external_id for r in rag.catalog.rows.records(snap.visible).values()}
                    seen.append(("snap", user, snap.policy_version, snap.catalog_version, got))
                else:
                    hits = rag.search("note", user=user, k=200, mode="dense")
                    seen.append(("search", user, hits.policy_version, None, {h.external_id for h in hits}))
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(6)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    run_until(stop, SECONDS, lambda: len(seen) >= 300 and len(states) >= 50)
    for t in threads:
        t.join(60)
    rag.close()
    assert not errors, errors[0]
    by_policy = {}
    for (pv, _cv), state in states.items():
        by_policy.setdefault(pv, state)
    checked = 0
    for kind, user, pv, cv, got in seen:
        if kind == "snap":
            a, d, u, n_rows = states[(pv, cv)]
            assert got == _visible(a, d, u, user, rows[:n_rows]), (user, pv, cv)
        else:
            a, d, u, _ = by_policy[pv]
            assert got <= _visible(a, d, u, user, rows), (user, pv)
        checked += 1
    assert checked >= 300 and len(states) >= 50


FIRST_TOUCH = r"""
import sys, threading
from permrag import PermRAG
from permrag.embed import HashEncoder

home = sys.argv[1]
for round in range(int(sys.argv[2])):
    # each open starts a new Milvus Lite server in this process: its collections are opened afresh
    rag = PermRAG.open(home, encoder=HashEncoder(32))
    backend, no = rag.backend, rag.catalog.tenants.number("default")
    start = threading.Barrier(2)
    asked = []
    probe = threading.Thread(target=lambda: (start.wait(), asked.append(backend.has_tenant(no))))
    probe.start()
    start.wait()
    loaded = backend._known(no)  # the first load, as a search makes it, while the probe asks
    probe.join()
    hits = rag.search("doc 1", user="u", k=3, mode="dense")
    assert loaded and asked == [True] and len(hits) == 3, (loaded, asked, hits)
    rag.close()
print("rounds", sys.argv[2])
"""


def test_a_first_load_and_a_check_beside_it_never_leave_the_collection_loading(tmp_path):
    """A search asks whether the tenant's collection exists on a worker thread
    while it loads that collection (search/probe.py). Milvus Lite opens a
    collection on the first request without a lock of its own: a check that
    came at the same moment as the first load made a second copy, which took
    the loaded one's place, and the load then waited for ever. The first
    touch of a collection is one at a time; each round here ends."""
    import subprocess
    import sys

    home = tmp_path / "home"
    with PermRAG.open(home, encoder=HashEncoder(32), create=True) as rag:
        rag.add_documents([{"external_id": f"d{i}", "text": f"doc {i}", "attrs": {"k": "v"}} for i in range(40)])
        rag.policy.add_role("r")
        rag.policy.grant("r", "k:v")
        rag.policy.assign_user("u", "r")
    res = subprocess.run([sys.executable, "-c", FIRST_TOUCH, str(home), "25"], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "rounds 25" in res.stdout, res.stderr[-3000:]
