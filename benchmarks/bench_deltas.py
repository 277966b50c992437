"""Cross-process policy deltas: what a change in one tenant costs a search in
another tenant of another process, and how fast a revoke holds everywhere.

Two real processes share one store (SQLite, and PostgreSQL when reachable):
this one searches (Milvus Lite, in-process ranking, hash vectors), a worker
(``--worker``, catalog only) changes the policy and reports when each change
committed (``time.time()`` right after the commit; both processes read the
same clock).

1. **Another tenant's change.** Before each timed search in tenant ``t1`` the
   worker grants or revokes a rule in tenant ``t0`` (``delta``), or changes
   nothing (``idle``); ``full reload`` is the behaviour before the change log:
   this process's catch-up replaced by a full reload (every rule read, every
   tenant's caches dropped). The three run interleaved, query by query.
   Then searches in ``t1`` without pause while the worker changes ``t0``
   every 200 ms (on its own clock: no thread of this process drives it), in
   windows taking turns with idle ones and with a control — a worker making
   the same changes in another store, which measures what a second busy
   process costs this one on the machine — without and with the PostgreSQL
   push.
2. **Revoke → enforce.** A row is granted, seen, then revoked. Same process:
   from the revoke's return to the end of the first search that no longer
   shows it. Cross process: a thread here searches without pause; from the
   worker's commit to the end of the first search (finished after the commit)
   that no longer shows the row — with and without the PostgreSQL push
   (``rag.follow()``).
3. **at_least when fresh.** A search with ``at_least=`` a token this process
   already reflects, against the same search without it (interleaved).

    python benchmarks/bench_deltas.py [--rows 2000] [--tenants 4] [--n 60] [--seconds 18] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import fresh_postgres, machine, save  # noqa: E402

from permrag import PermRAG  # noqa: E402
from permrag.embed import HashEncoder  # noqa: E402

DIM = 64
USERS = 10
PG_ADMIN = os.environ.get("PERMRAG_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


# ---------------------------------------------------------------------- the worker process
def worker(home: str, url: str) -> None:
    rag = PermRAG.open(home, database_url=url, catalog_only=True)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "cycle":  # change the policy on its own clock (no thread in the searching process)
            print(json.dumps({"t": time.time(), "n": cycle(rag, *cmd["args"])}), flush=True)
            continue
        fn = getattr(rag.policy, cmd["op"])
        try:
            fn(*cmd["args"])
            print(json.dumps({"t": time.time()}), flush=True)
        except Exception as exc:  # the bench reports it
            print(json.dumps({"error": str(exc)}), flush=True)
    rag.close()


def cycle(rag: PermRAG, every: float, seconds: float, role: str, selector: str, tenant: str) -> int:
    """Grant and revoke ``selector`` for ``role`` in turn, one change every ``every`` seconds, for ``seconds``."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() + every < end:
        time.sleep(every)
        (rag.policy.revoke if n % 2 else rag.policy.grant)(role, selector, tenant)
        n += 1
    return n


class Worker:
    def __init__(self, home: Path, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(home), url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def __call__(self, op: str, *args: str) -> float:
        self.proc.stdin.write(json.dumps({"op": op, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        got = json.loads(self.proc.stdout.readline())
        if "error" in got:
            raise RuntimeError(got["error"])
        return float(got["t"])

    def start(self, op: str, *args: object) -> None:
        """Send a command without waiting for its answer (:meth:`wait`)."""
        self.proc.stdin.write(json.dumps({"op": op, "args": list(args)}) + "\n")
        self.proc.stdin.flush()

    def wait(self) -> dict:
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


# ---------------------------------------------------------------------- the store
MILVUS: dict[str, str] = {}  # --server: the searching store's Milvus (its URI and version); else Milvus Lite


def build(home: Path, url: str | None, rows: int, tenants: int) -> PermRAG:
    on_server = {"milvus_uri": MILVUS["uri"], "collection": f"deltas_{'pg' if url else 'sqlite'}"} if MILVUS else {}  # each store its own collection
    rag = PermRAG.open(home, database_url=url, encoder=HashEncoder(DIM), create=True, **on_server)
    for t in range(tenants):
        tenant = f"t{t}"
        rag.add_documents([{"external_id": f"d{i}", "text": f"doc {i} of {tenant} about topic {i % 50}", "attrs": {"dept": f"dep{i % 20}", "lvl": str(i % 3)}} for i in range(rows)], tenant=tenant)
        for u in range(USERS):
            role = f"r{u}"
            rag.policy.add_role(role, tenant)
            for d in range(u % 4 + 1):
                rag.policy.grant(role, f"dept:dep{(u + d) % 20}", tenant)
            rag.policy.assign_user(f"u{u}", role, tenant)
        rag.policy.add_role("probe", tenant)
        rag.policy.assign_user("p", "probe", tenant)
    return rag


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] * 1000


def cross_tenant(rag: PermRAG, w: Worker, n: int) -> dict[str, list[float]]:
    """Search in t1 after nothing / a delta in t0 / the same change handled by a full reload."""
    delta = rag.policy.catch_up

    def full(seen: int | None = None) -> bool:
        rag.policy.load()
        return True

    out: dict[str, list[float]] = {"idle": [], "delta": [], "full reload": []}
    rng = random.Random(1)
    toggle = [False]
    for i in range(n):
        modes = list(out)
        rng.shuffle(modes)
        for mode in modes:
            if mode != "idle":
                w("revoke" if toggle[0] else "grant", "r0", "lvl:2", "t0")
                toggle[0] = not toggle[0]
            rag.policy.catch_up = full if mode == "full reload" else delta  # type: ignore[method-assign]
            user = f"u{i % USERS}"
            t = time.perf_counter()
            rag.search(f"topic {i % 50}", user=user, tenant="t1", k=10, mode="dense")
            out[mode].append(time.perf_counter() - t)
    rag.policy.catch_up = delta  # type: ignore[method-assign]
    return out


def revoke_same_process(rag: PermRAG, n: int) -> list[float]:
    out = []
    for i in range(n):
        sel = f"doc:d{i}"
        rag.policy.grant("probe", sel, "t1")
        assert any(h.external_id == f"d{i}" for h in rag.search(f"doc {i} of t1", user="p", tenant="t1", k=5, mode="dense"))
        rag.policy.revoke("probe", sel, "t1")
        t = time.time()
        hits = rag.search(f"doc {i} of t1", user="p", tenant="t1", k=5, mode="dense")
        out.append(time.time() - t)
        assert all(h.external_id != f"d{i}" for h in hits)
    return out


def revoke_cross_process(rag: PermRAG, w: Worker, n: int, first_doc: int) -> list[float]:
    """The worker revokes; a thread here searches without pause; latency to the first enforcing answer.

    This thread waits on a condition the searcher signals after each answer and
    reads only the answers given since the commit: a waiter that polled and
    copied the whole log would hold the GIL against the searcher it times."""
    log: list[tuple[float, bool]] = []
    cond = threading.Condition()
    target = [""]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            doc = target[0]
            hits = rag.search(f"doc {doc[1:]} of t1" if doc else "doc", user="p", tenant="t1", k=5, mode="dense")
            with cond:
                log.append((time.time(), any(h.external_id == doc for h in hits)))
                cond.notify_all()

    def first(pos: int, test) -> tuple[float, bool] | None:
        return next((e for e in log[pos:] if test(e)), None)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    out = []
    try:
        for i in range(n):
            doc = f"d{first_doc + i}"  # rows the same-process run (d0 …) never touched
            w("grant", "probe", f"doc:{doc}", "t1")
            with cond:
                pos = len(log)
                target[0] = doc
                if not cond.wait_for(lambda: first(pos, lambda e: e[1]) is not None, timeout=5):
                    raise RuntimeError(f"the row granted on {doc} never showed: no revoke to time")
                pos = len(log)
            committed = w("revoke", "probe", f"doc:{doc}", "t1")
            with cond:
                if not cond.wait_for(lambda: first(pos, lambda e: e[0] > committed and not e[1]) is not None, timeout=5):
                    raise RuntimeError(f"the revoke on {doc} did not hold within 5 s")
                hit = first(pos, lambda e: e[0] > committed and not e[1])
                assert hit is not None
                out.append(hit[0] - committed)
            target[0] = ""
    finally:
        stop.set()
        th.join(10)
    return out


def steady(rag: PermRAG, workers: dict[str, Worker], seconds: float, every: float = 0.2) -> dict[str, list[float]]:
    """Searches in t1 without pause, in windows that take turns: no change (``idle``);
    the worker changing t0 every ``every`` seconds (``changing``: the issue's "a change
    every 200 ms in tenant X"); and the control — a worker making the same changes at
    the same pace in *another store* (``control``: what a second busy process costs
    this one on this machine, with nothing of this store changed)."""
    out: dict[str, list[float]] = {"idle": [], "changing": [], "control": []}
    windows = 15
    for window in range(windows):
        mode = ("idle", "changing", "control")[window % 3]
        if mode != "idle":  # the worker changes t0 on its own clock for this window
            workers[mode].start("cycle", every, seconds / windows, "r1", "lvl:2", "t0")
        end, i = time.perf_counter() + seconds / windows, 0
        while time.perf_counter() < end:
            t = time.perf_counter()
            rag.search(f"topic {i % 50}", user=f"u{i % USERS}", tenant="t1", k=10, mode="dense")
            out[mode].append(time.perf_counter() - t)
            i += 1
        if mode != "idle" and not workers[mode].wait().get("n"):
            raise RuntimeError(f"the worker made no change in a {mode} window")
    return out


def control_store(home: Path, url: str | None) -> str:
    """A small store of its own (the control's worker changes its t0)."""
    rag = PermRAG.open(home, database_url=url, catalog_only=True, create=True)
    try:
        rag.policy.add_role("r1", "t0")
        return rag.settings.database_url
    finally:
        rag.close()


def fresh_cost(rag: PermRAG, n: int) -> dict[str, list[float]]:
    tok = rag.consistency_token()
    out: dict[str, list[float]] = {"plain": [], "at_least": []}
    for i in range(n * 5):
        for mode in ("plain", "at_least") if i % 2 else ("at_least", "plain"):
            t = time.perf_counter()
            rag.search(f"topic {i % 50}", user=f"u{i % USERS}", tenant="t1", k=10, mode="dense", **({"at_least": tok} if mode == "at_least" else {}))
            out[mode].append(time.perf_counter() - t)
    return out


def run(name: str, url: str | None, args, control_url: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rag = build(Path(tmp) / "a", url, args.rows, args.tenants)
        w = Worker(Path(tmp) / "b", rag.settings.database_url)
        wc = Worker(Path(tmp) / "d", control_store(Path(tmp) / "c", control_url))
        try:
            for u in range(USERS):
                rag.search("warm", user=f"u{u}", tenant="t1", k=10, mode="dense")
            res: dict = {"catalog": name}
            tenant = cross_tenant(rag, w, args.n)
            res["cross_tenant_ms"] = {m: {"p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99)} for m, v in tenant.items()}
            for key, follow in (("steady_ms", False), ("steady_push_ms", True)):
                if follow and not (url is not None and rag.follow()):
                    continue
                got = steady(rag, {"changing": w, "control": wc}, args.seconds)
                res[key] = {m: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for m, v in got.items()}
                rag.policy.stop_following()
            res["revoke_same_process_ms"] = _stats(revoke_same_process(rag, args.n))
            res["revoke_cross_process_ms"] = _stats(revoke_cross_process(rag, w, args.n, args.rows // 2))
            if url is not None and rag.follow():
                time.sleep(0.3)
                res["revoke_cross_process_push_ms"] = _stats(revoke_cross_process(rag, w, args.n, args.rows // 2))
                rag.policy.stop_following()
            fresh = fresh_cost(rag, args.n)
            res["at_least_fresh_ms"] = {m: statistics.median(v) * 1000 for m, v in fresh.items()}
            res["catch_ups"], res["full_reloads"] = rag.policy.catch_ups, rag.policy.full_reloads
            return res
        finally:
            w.close()
            wc.close()
            rag.close()


def _stats(xs: list[float]) -> dict[str, float]:
    return {"p50": pct(xs, 50), "p99": pct(xs, 99), "n": len(xs)} if xs else {"p50": float("nan"), "p99": float("nan"), "n": 0}


def table(results: list[dict], args) -> str:
    lines = [
        f"Policy deltas across processes ({args.tenants} tenants × {args.rows:,} rows, {USERS} users each, {MILVUS.get('label', 'Milvus Lite')}, dense k=10, {args.n} rounds; {machine()})",
        "",
        "Search in tenant t1 of this process (ms, p50 / p90):",
        "",
        "| catalog | idle | after a change in t0 (delta) | before the log (full reload) | full ÷ delta (p50) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        c = r["cross_tenant_ms"]
        lines.append(
            f"| {r['catalog']} | {c['idle']['p50']:.2f} / {c['idle']['p90']:.2f} | {c['delta']['p50']:.2f} / {c['delta']['p90']:.2f} | "
            f"{c['full reload']['p50']:.2f} / {c['full reload']['p90']:.2f} | {c['full reload']['p50'] / c['delta']['p50']:.2f} |"
        )
    lines += [
        "",
        "Search in t1 while the other process changes t0 every 200 ms (changing), in windows taking turns with no change (idle)",
        "and with the same changes made at the same pace in another store (control: a second busy process, nothing of this store changed) (ms, p50 / p99):",
        "",
        "| catalog | push | idle | control | changing | p99 changing ÷ idle | p99 changing ÷ control |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for key, push in (("steady_ms", "no"), ("steady_push_ms", "yes")):
            v = r.get(key)
            if v is None:
                continue
            cells = " | ".join(f"{v[m]['p50']:.2f} / {v[m]['p99']:.2f}" for m in ("idle", "control", "changing"))
            lines.append(f"| {r['catalog']} | {push} | {cells} | {v['changing']['p99'] / v['idle']['p99']:.2f} | {v['changing']['p99'] / v['control']['p99']:.2f} |")
    lines += ["", "Revoke → enforce (ms, p50 / p99):", "", "| catalog | same process | other process | other process, push |", "|---|---|---|---|"]
    for r in results:
        push = r.get("revoke_cross_process_push_ms")
        s, x = r["revoke_same_process_ms"], r["revoke_cross_process_ms"]
        lines.append(f"| {r['catalog']} | {s['p50']:.2f} / {s['p99']:.2f} | {x['p50']:.2f} / {x['p99']:.2f} | " + (f"{push['p50']:.2f} / {push['p99']:.2f} |" if push else "— |"))
    lines += ["", "A search in a process that already reflects the token (ms, p50):", "", "| catalog | plain | at_least | ratio |", "|---|---|---|---|"]
    for r in results:
        f = r["at_least_fresh_ms"]
        lines.append(f"| {r['catalog']} | {f['plain']:.3f} | {f['at_least']:.3f} | {f['at_least'] / f['plain']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=18.0, help="searching time of the steady-change run (a third each: idle, changing, control)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", nargs=2)
    ap.add_argument("--server", action="store_true", help="the searching store on a Milvus server (started here) instead of Milvus Lite")
    ap.add_argument("--tag", default="", help="suffix of the results' file name (e.g. server)")
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return
    if args.quick:
        args.rows, args.n, args.seconds = min(args.rows, 500), min(args.n, 20), min(args.seconds, 6.0)
    if args.n > args.rows // 2:
        ap.error("--n must be at most half of --rows (the revoke runs each probe rows of their own)")
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.server:
            from bench_search import start_server

            server = start_server(Path(tmp) / "server")
            MILVUS.update(uri=f"http://127.0.0.1:{server.listen_port}", label="Milvus server 2.3.5")
        try:
            results = [run("SQLite", None, args)]
            try:
                with fresh_postgres(PG_ADMIN) as url, fresh_postgres(PG_ADMIN) as control:
                    results.append(run("PostgreSQL", url, args, control))
            except Exception as exc:  # no PostgreSQL here: the SQLite rows stand alone
                print(f"PostgreSQL skipped: {exc.__class__.__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        finally:
            if server is not None:
                server.stop()
    text = table(results, args)
    print(text)
    save("deltas" + (f"_{args.tag}" if args.tag else ""), args.quick, {"machine": machine(), "rows": args.rows, "tenants": args.tenants, "n": args.n, "results": results}, text)


if __name__ == "__main__":
    main()
