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

**The default model** (issue 36): the demo's store (Milvus Lite, made with
the default all-MiniLM-L6-v2), and for each way of running that model — the
default numpy encoder and the sentence-transformers one (torch) — in fresh
processes taken in turns:

* **CLI search** — ``permrag search QUERY --as alice`` from start to exit;
* **MCP ready** — ``permrag mcp --as alice`` from start to its answer to a
  client's ``initialize`` (the server warms the store first), and **MCP
  first search** — to its answer to a ``search`` tool call sent right after.

Goals: a CLI search ≤ 1.5 s, MCP ready ≤ 2 s. Wall times depend on what else
the machine runs: the CPU time of each process is given beside them.

    python benchmarks/bench_coldstart.py            # 100k rows, 5 runs
    python benchmarks/bench_coldstart.py --quick    # 10k rows, 3 runs
    python benchmarks/bench_coldstart.py --only-model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
        rag.backend.flush(rag.catalog.tenants.number("default"))


def child(home: Path, uri: str | None, warm_up: str = "none") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(home), uri or "", warm_up], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# A fresh CLI process; "st" runs the same model through sentence-transformers,
# as the default encoder did before it ran on numpy (same name, same vectors).
RUNNER = r"""
import sys
if sys.argv[1] == "st":
    import permrag.backends.binding as binding
    from permrag.embed import SentenceTransformerEncoder, resolve_encoder
    binding.resolve_encoder = lambda spec: SentenceTransformerEncoder() if spec in (None, "st:all-MiniLM-L6-v2") else resolve_encoder(spec)
from permrag.cli import main
main(args=sys.argv[2:], prog_name="permrag")
"""
ENCODERS = {"numpy": "numpy (default)", "st": "sentence-transformers (torch)"}
# texts per second over ingest-sized passages, once the model is loaded
THROUGHPUT = r"""
import json, sys, time
from permrag.embed import MiniLMEncoder, SentenceTransformerEncoder
enc = MiniLMEncoder() if sys.argv[1] == "numpy" else SentenceTransformerEncoder()
texts = json.load(sys.stdin)
enc.encode(texts[:8])
t = time.perf_counter()
enc.encode(texts)
print(json.dumps(len(texts) / (time.perf_counter() - t)))
"""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cli_search(home: Path, how: str) -> dict:
    cpu, t = _cpu(), time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, how, "--home", str(home), "search", "What is the parental leave policy?", "--as", "alice", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    wall = time.perf_counter() - t
    if out.returncode or not json.loads(out.stdout):
        raise SystemExit(f"search failed: {out.stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": _cpu() - cpu}


def _rpc(proc: subprocess.Popen, message: dict, wait_id: int | None) -> dict | None:
    proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()
    while wait_id is not None:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the MCP server stopped: {proc.stderr.read()[-2000:]}")
        reply = json.loads(line)
        if reply.get("id") == wait_id:
            if "error" in reply or reply.get("result", {}).get("isError"):
                raise SystemExit(f"the MCP server answered an error: {reply}")
            return reply
    return None


def mcp_start(home: Path, how: str) -> dict:
    """Seconds from spawning ``permrag mcp --as alice`` to its initialize answer and to its first search answer."""
    cpu, t = _cpu(), time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, how, "--home", str(home), "mcp", "--as", "alice"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _rpc(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}}, 1)
        ready = time.perf_counter() - t
        _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"}, None)
        _rpc(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "What is the parental leave policy?"}}}, 2)
        first = time.perf_counter() - t
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"ready_s": ready, "first_search_s": first, "cpu_s": _cpu() - cpu}


def passages(n: int = 256) -> list[str]:
    """One to four of the demo's documents joined, cut at 300 to 1000 characters."""
    docs = [json.loads(line)["text"] for line in (ROOT / "permrag" / "demo" / "kb.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return [" ".join(docs[(i + j) % len(docs)] for j in range(1 + i % 4))[: 300 + (i * 37) % 700] for i in range(n)]


def throughput(how: str) -> float:
    out = subprocess.run([sys.executable, "-c", THROUGHPUT, how], input=json.dumps(passages()), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if out.returncode:
        raise SystemExit(f"encoding failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def model_runs(tmp: Path, runs: int) -> dict:
    """The demo's store, then CLI searches and MCP starts in fresh processes, the two encoders in turns."""
    subprocess.run([sys.executable, "-m", "permrag", "--home", str(tmp / "model"), "demo"], cwd=ROOT, check=True, capture_output=True, timeout=1800, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    home = tmp / "model" / "demo"
    out: dict[str, dict] = {how: {"cli": [], "mcp": []} for how in ENCODERS}
    for _ in range(runs):
        for how in ENCODERS:
            out[how]["cli"].append(cli_search(home, how))
            out[how]["mcp"].append(mcp_start(home, how))
            out[how].setdefault("texts_per_s", []).append(throughput(how))
    for how, r in out.items():
        r["median"] = {f"cli_{k}": statistics.median(x[k] for x in r["cli"]) for k in r["cli"][0]}
        r["median"].update({f"mcp_{k}": statistics.median(x[k] for x in r["mcp"]) for k in r["mcp"][0]})
        r["median"]["texts_per_s"] = statistics.median(r["texts_per_s"])
        m = r["median"]
        print(f"  {ENCODERS[how]}: CLI search {m['cli_wall_s']:.2f} s, MCP ready {m['mcp_ready_s']:.2f} s", flush=True)
    return out


def model_table(model: dict, runs: int) -> list[str]:
    lines = [
        f"The default model (all-MiniLM-L6-v2) in fresh processes, the demo's store on Milvus Lite; medians of {runs} runs, the two encoders in turns.",
        "Goals: CLI search ≤ 1.5 s, MCP ready ≤ 2 s. CPU: the process's user + system time.",
        "",
        "Encoding: 256 passages (the demo's documents joined, up to 1000 characters) in one call, the model loaded, every core.",
        "",
        "| encoder | CLI search | its CPU | `permrag mcp` ready (initialize answered) | MCP first search answered | MCP CPU to then | encoding |",
        "|---|---|---|---|---|---|---|",
    ]
    for how, r in model.items():
        m = r["median"]
        lines.append(
            f"| {ENCODERS[how]} | {m['cli_wall_s']:.2f} s | {m['cli_cpu_s']:.2f} s | {m['mcp_ready_s']:.2f} s | {m['mcp_first_search_s']:.2f} s "
            f"| {m['mcp_cpu_s']:.2f} s | {m['texts_per_s']:.0f} texts/s |"
        )
    return lines


def help_time() -> float:
    exe = Path(sys.executable).with_name("permrag")
    t = time.perf_counter()
    subprocess.run([str(exe), "--help"], capture_output=True, check=True)
    return time.perf_counter() - t


def backend_runs(tmp: Path, args) -> list[dict]:
    results = []
    backends = [("Milvus Lite", None)]
    server = None
    if not args.skip_server:
        from tests.helpers.milvus_server import start

        server = start(tmp / "server")
        backends.append(("Milvus server", f"http://127.0.0.1:{server.listen_port}"))
    try:
        for label, uri in backends:
            home = tmp / label.replace(" ", "_")
            # built in a process of its own: Milvus Lite lets one process hold a data folder
            subprocess.run([sys.executable, __file__, "--build", str(home), uri or "", str(args.rows)], cwd=ROOT, check=True, timeout=1800)
            for warm_up in ("none", "all", "user"):
                runs = [child(home, uri, warm_up) for _ in range(args.runs)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                med["first_over_warm"] = statistics.median(r["first_s"] / r["warm_s"] for r in runs)
                results.append({"backend": label, "warm_up": warm_up, "rows": args.rows, "runs": runs, "median": med})
                print(f"  {label}{HOW[warm_up]}: first search {1e3 * med['first_s']:.1f} ms, warm {1e3 * med['warm_s']:.1f} ms ({med['first_over_warm']:.2f}x)", flush=True)
    finally:
        if server is not None:
            server.stop()
    return results


def backend_table(results: list[dict], args) -> list[str]:
    lines = [
        f"{args.rows:,} rows and a random encoder, a user who sees 1 %; medians of {args.runs} fresh processes.",
        "",
        "| backend | process | import permrag | open | `rag.warm()` | first search | warm search (median of 20) | first ÷ warm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["median"]
        warm_up = f"{1e3 * m['warmup_s']:.0f} ms" if r["warm_up"] != "none" else "—"
        lines.append(
            f"| {r['backend']} | open{HOW[r['warm_up']]}, search | {1e3 * m['import_s']:.0f} ms | {1e3 * m['open_s']:.0f} ms | {warm_up} | {1e3 * m['first_s']:.1f} ms "
            f"| {1e3 * m['warm_s']:.1f} ms | {m['first_over_warm']:.2f}× |"
        )
    return lines


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--build"]:
        return build(Path(argv[1]), argv[2] or None, int(argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--only-model", action="store_true", help="only the default model's CLI search and MCP start")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.runs = 10_000, 3
    with tempfile.TemporaryDirectory() as tmp:
        model = model_runs(Path(tmp), args.runs)
        results = [] if args.only_model else backend_runs(Path(tmp), args)
    helps = sorted(help_time() for _ in range(5))
    lines = [f"Cold start ({machine()}, load average {os.getloadavg()[0]:.1f} at the end).", "", *model_table(model, args.runs), ""]
    if results:
        lines += [*backend_table(results, args), ""]
    lines.append(f"`permrag --help` in a fresh process: median {statistics.median(helps):.2f} s (5 runs).")
    text = "\n".join(lines)
    print(text)
    save("coldstart", args.quick, {"machine": machine(), "model": model, "results": results, "help_s": helps}, text)


if __name__ == "__main__":
    main()
