"""Cold start: what a new process pays before its first answer.

For Milvus Lite and a Milvus server, a store of ``--rows`` rows is built
once; then, for each of ``--runs`` fresh Python processes:

* **import** — ``import permrag`` (lazy: the heavy modules load on first use);
* **open** — ``PermRAG.open`` of the existing store;
* **first search** — the first ``rag.search`` of a user who sees 1 % (the
  policy load, the collection load, pymilvus' import, the plan);
* **warm search** — the median of the next 20 searches in that process;

and the same in processes that call ``rag.warm()`` after opening, and
``rag.warm(users=["u"])`` (what ``permrag mcp --as u`` does at start):
**warm-up** is that call, and the first search after it is compared with a
warm one.

The goal (issue 17): first search < 2× a warm one on the server. Also
``permrag --help`` in a fresh process (goal < 0.3 s).

    python benchmarks/bench_coldstart.py            # 100k rows, 5 runs
    python benchmarks/bench_coldstart.py --quick    # 10k rows, 3 runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOW = {"none": "", "all": ", warm()", "user": ", warm(users=[u])"}

CHILD = r"""
import json, statistics, sys, time
t0 = time.perf_counter()
import permrag
from permrag.embed import RandomEncoder
t1 = time.perf_counter()
home, uri, warm_up = sys.argv[1], sys.argv[2] or None, sys.argv[3]
rag = permrag.PermRAG.open(home, encoder=RandomEncoder(384), milvus_uri=uri, collection="cold")
tw = time.perf_counter()
if warm_up == "all":
    rag.warm()
elif warm_up == "user":
    rag.warm(users=["u"])
t2 = time.perf_counter()
rag.search("first question", user="u", k=10, mode="dense")
t3 = time.perf_counter()
warm = []
for i in range(20):
    t = time.perf_counter()
    rag.search(f"question {i}", user="u", k=10, mode="dense")
    warm.append(time.perf_counter() - t)
rag.close()
print(json.dumps({"import_s": t1 - t0, "open_s": tw - t1, "warmup_s": t2 - tw, "first_s": t3 - t2, "warm_s": statistics.median(warm)}))
"""


def build(home: Path, uri: str | None, rows: int) -> None:
    from permrag import PermRAG
    from permrag.embed import RandomEncoder

    with PermRAG.open(home, encoder=RandomEncoder(384), milvus_uri=uri, collection="cold") as rag:
        rag.add_documents([{"external_id": f"d{i}", "text": f"doc {i}", "attrs": {"team": f"t{i % 100}"}} for i in range(rows)], batch_size=5000)
        rag.policy.add_role("one-team")
        rag.policy.grant("one-team", "team:t7")
        rag.policy.assign_user("u", "one-team")
        rag.store.flush(rag.catalog.tenants.number("default"))


def child(home: Path, uri: str | None, warm_up: str = "none") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(home), uri or "", warm_up], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def help_time() -> float:
    exe = Path(sys.executable).with_name("permrag")
    t = time.perf_counter()
    subprocess.run([str(exe), "--help"], capture_output=True, check=True)
    return time.perf_counter() - t


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--build"]:
        return build(Path(argv[1]), argv[2] or None, int(argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-server", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.runs = 10_000, 3
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("Milvus Lite", None)]
        server = None
        if not args.skip_server:
            from tests.helpers.milvus_server import start

            server = start(Path(tmp) / "server")
            backends.append(("Milvus server", f"http://127.0.0.1:{server.listen_port}"))
        try:
            for label, uri in backends:
                home = Path(tmp) / label.replace(" ", "_")
                # built in a process of its own: Milvus Lite lets one process hold a data folder
                subprocess.run([sys.executable, __file__, "--build", str(home), uri or "", str(args.rows)], cwd=ROOT, check=True, timeout=1800)
                for warm_up in ("none", "all", "user"):
                    runs = [child(home, uri, warm_up) for _ in range(args.runs)]
                    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                    med["first_over_warm"] = statistics.median(r["first_s"] / r["warm_s"] for r in runs)
                    results.append({"backend": label, "warm_up": warm_up, "rows": args.rows, "runs": runs, "median": med})
                    print(f"  {label}{HOW[warm_up]}: first search {1e3 * med['first_s']:.1f} ms, warm {1e3 * med['warm_s']:.1f} ms "
                          f"({med['first_over_warm']:.2f}x)", flush=True)
        finally:
            if server is not None:
                server.stop()
    helps = sorted(help_time() for _ in range(5))
    lines = [
        f"Cold start ({machine()}); {args.rows:,} rows, a user who sees 1 %; medians of {args.runs} fresh processes.",
        "",
        "| backend | process | import permrag | open | `rag.warm()` | first search | warm search (median of 20) | first ÷ warm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["median"]
        warm_up = f"{1e3 * m['warmup_s']:.0f} ms" if r["warm_up"] != "none" else "—"
        lines.append(f"| {r['backend']} | open{HOW[r['warm_up']]}, search | {1e3 * m['import_s']:.0f} ms | {1e3 * m['open_s']:.0f} ms | {warm_up} | {1e3 * m['first_s']:.1f} ms "
                     f"| {1e3 * m['warm_s']:.1f} ms | {m['first_over_warm']:.2f}× |")
    lines += ["", f"`permrag --help` in a fresh process: median {statistics.median(helps):.2f} s (5 runs)."]
    text = "\n".join(lines)
    print(text)
    save("coldstart", args.quick, {"machine": machine(), "results": results, "help_s": helps}, text)


if __name__ == "__main__":
    main()
