"""Async throughput: N concurrent ``rag.asearch`` calls from one event loop
against the same N ``rag.search`` calls one after another, on Milvus Lite and
a Milvus server, for several pool sizes (``async_workers``). Every async
answer is checked equal to its sync one; the pool's and the process's peak
thread counts are measured while the calls run.

    python benchmarks/bench_async.py [--rows 20000] [--calls 400] [--quick] [--skip-server]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, save  # noqa: E402

from permrag import PermRAG  # noqa: E402

WORDS = ["budget", "leave", "travel", "salary", "merger", "office", "snacks", "policy", "review", "plan"]
USERS = ["alice", "bob", "carol", "dave"]


def build(home: Path, rows: int, workers: int, uri: str | None) -> PermRAG:
    """The store under ``home`` (filled on first use), with a pool of ``workers``."""
    extra = {"milvus_uri": uri, "collection": f"b_{home.name.replace('-', '_')}", "consistency": "Strong"} if uri else {}
    rag = PermRAG.open(home, encoder="hash", audit="off", async_workers=workers, **extra)
    if rag.catalog_version == 0:
        docs = [{"external_id": f"d{i}", "text": f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} note {i}", "attrs": {"team": f"t{i % 8}"}} for i in range(rows)]
        rag.add_documents(docs, batch_size=5000)
        p = rag.policy
        for i, u in enumerate(USERS):
            p.add_role(f"r{i}")
            for t in range(i * 2, i * 2 + 3):
                p.grant(f"r{i}", f"team:t{t % 8}")
            p.assign_user(u, f"r{i}")
    return rag


def run(rag: PermRAG, calls: list[tuple[str, str]], mode: str) -> dict:
    t = time.perf_counter()
    expected = [rag.search(q, user=u, k=10, mode=mode) for q, u in calls]
    t_sync = time.perf_counter() - t
    peaks = {"pool": 0, "process": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peaks["pool"] = max(peaks["pool"], rag.aio.threads)
            peaks["process"] = max(peaks["process"], threading.active_count() - 1)  # not the watcher
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    before = threading.active_count()
    watcher.start()

    async def all_at_once():
        return await asyncio.gather(*(rag.asearch(q, user=u, k=10, mode=mode) for q, u in calls))

    t = time.perf_counter()
    got = asyncio.run(all_at_once())
    t_async = time.perf_counter() - t
    done.set()
    watcher.join()
    same = all([h.row_id for h in g] == [h.row_id for h in e] for g, e in zip(got, expected))
    n = len(calls)
    return {
        "sync_qps": n / t_sync,
        "async_qps": n / t_async,
        "ratio": t_sync / t_async,
        "pool_threads_peak": peaks["pool"],
        "process_threads_before": before,
        "process_threads_peak": peaks["process"],
        "same_results": same,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--quick", action="store_true", help="2,000 rows, 100 calls, pools of 1 and 8")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.calls, args.workers = 2_000, 100, [1, 8]
    calls = [(f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]}", USERS[i % len(USERS)]) for i in range(args.calls)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("Milvus Lite", None, "hybrid")]
        server = None
        if not args.skip_server:
            from tests.helpers.milvus_server import start

            server = start(Path(tmp) / "milvus")
            backends.append(("Milvus server", f"http://127.0.0.1:{server.listen_port}", "dense"))  # the 2.3 test server has no BM25
        try:
            for name, uri, mode in backends:
                home = Path(tmp) / f"h{uuid.uuid4().hex[:8]}"
                for w in args.workers:
                    with build(home, args.rows, w, uri) as rag:
                        r = run(rag, calls, mode)
                    r.update(backend=name, mode=mode, workers=w)
                    print(f"{name} ({mode}), pool of {w}: sync {r['sync_qps']:.0f} q/s, async {r['async_qps']:.0f} q/s ({r['ratio']:.2f}x), threads {r['pool_threads_peak']}", flush=True)
                    results.append(r)
        finally:
            if server is not None:
                server.stop()
    lines = [
        f"Async throughput: {args.calls} concurrent asearch (one event loop) vs {args.calls} sequential search; {args.rows:,} rows, hash encoder, top-10 ({machine()})",
        "",
        "| backend | mode | pool | sync q/s | async q/s | async / sync | pool threads (peak) | process threads (before → peak) | same results |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['mode']} | {r['workers']} | {r['sync_qps']:.0f} | {r['async_qps']:.0f} | {r['ratio']:.2f}× | "
            f"{r['pool_threads_peak']} | {r['process_threads_before']} → {r['process_threads_peak']} | {r['same_results']} |"
        )
    text = "\n".join(lines)
    print(text)
    save("async", args.quick, {"rows": args.rows, "calls": args.calls, "machine": machine(), "results": results}, text)


if __name__ == "__main__":
    main()
