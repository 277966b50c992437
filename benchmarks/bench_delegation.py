"""Delegated search: a user searching through an agent against the same user's own search.

For each visible fraction (0.1 %, 1 %, 10 %, 50 %, 100 % of the tenant) one
user sees exactly that fraction and an agent may read the whole tenant, so the
delegated search (``agent=``) returns the same rows as the user's own: what
is measured is the cost of delegation itself — the intersection of the two
bitmaps (cached per (user, agent)), its own plan, and the audit record that
names both. The two run interleaved query by query (common.measure), dense
mode with the same query vectors, on Milvus Lite; the results are checked
equal. Goal: delegated ÷ user ≤ 1.05 at every fraction.

    python benchmarks/bench_delegation.py [--rows 20000] [--queries 100] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, measure, save  # noqa: E402

from permrag import PermRAG  # noqa: E402
from permrag.embed import RandomEncoder  # noqa: E402

# bucket values 000..999: a glob picks a decimal fraction of them
FRACTIONS = {"0.1%": ["b:000"], "1%": ["b:00*"], "10%": ["b:0*"], "50%": [f"b:{d}*" for d in range(5)], "100%": ["*"]}


def build(rag: PermRAG, rows: int) -> None:
    rag.add_documents([{"external_id": f"d{i}", "text": f"item {i}", "attrs": {"b": f"{i % 1000:03d}"}} for i in range(rows)], batch_size=5000)
    p = rag.policy
    for name, selectors in FRACTIONS.items():
        role = f"sees-{name}"
        p.add_role(role)
        for sel in selectors:
            p.grant(role, sel)
        p.assign_user(f"user-{name}", role)
    p.add_role("agent-all")
    p.grant("agent-all", "*")
    p.assign_agent("helper", "agent-all")


def run(rag: PermRAG, vecs: np.ndarray, k: int) -> dict[str, dict]:
    out = {}
    for name in FRACTIONS:
        user = f"user-{name}"

        def own(i: int, user: str = user) -> list[int]:
            return [h.row_id for h in rag.search_many(["q"], user=user, k=k, mode="dense", vectors=vecs[i : i + 1])[0]]

        def delegated(i: int, user: str = user) -> list[int]:
            return [h.row_id for h in rag.search_many(["q"], user=user, k=k, mode="dense", vectors=vecs[i : i + 1], agent="helper")[0]]

        got = measure({"user": own, "delegated": delegated}, list(range(len(vecs))), budget_s=60.0)
        (t_user, o_user), (t_del, o_del) = got["user"], got["delegated"]
        visible = len(rag.snapshot(user).visible)
        out[name] = {
            "visible_rows": visible,
            "user_ms": t_user * 1e3,
            "delegated_ms": t_del * 1e3,
            "ratio": t_del / t_user,
            "same_results": o_user == o_del,
        }
    return out


def snapshot_us(rag: PermRAG, user: str, n: int = 2000) -> dict[str, float]:
    """Microseconds per snapshot (versions checked, bitmap looked up), own and delegated, in alternating rounds."""
    out: dict[str, list[float]] = {"user": [], "delegated": []}
    for _ in range(5):
        for name, kw in (("user", {}), ("delegated", {"agent": "helper"})):
            t = time.perf_counter()
            for _ in range(n):
                rag.snapshot(user, **kw)
            out[name].append((time.perf_counter() - t) / n * 1e6)
    return {name: statistics.median(v) for name, v in out.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="5,000 rows, 40 queries")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.queries = 5_000, 40
    enc = RandomEncoder(384)
    vecs = enc.encode([f"query {i}" for i in range(args.queries)])
    with tempfile.TemporaryDirectory() as tmp, PermRAG.open(Path(tmp) / "h", encoder=enc) as rag:
        build(rag, args.rows)
        res = run(rag, vecs, args.k)
        snap = snapshot_us(rag, "user-10%")
    data = {"rows": args.rows, "queries": args.queries, "k": args.k, "fractions": res, "snapshot_us": snap, "goal": "delegated / user <= 1.05", "machine": machine()}
    lines = [
        f"Delegated search (user through an agent that may read the whole tenant) vs the user's own search, "
        f"Milvus Lite, {args.rows:,} rows × 384, dense, top-{args.k}, {args.queries} queries interleaved, median ({data['machine']})",
        "",
        "| visible | rows | user | delegated | ratio | same results |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        lines.append(f"| {name} | {r['visible_rows']:,} | {r['user_ms']:.2f} ms | {r['delegated_ms']:.2f} ms | {r['ratio']:.3f}× | {r['same_results']} |")
    lines += ["", f"A snapshot (the bitmap a request is answered from, versions checked): {snap['user']:.1f} µs for the user, {snap['delegated']:.1f} µs delegated (the (user, agent) intersection cached)."]
    text = "\n".join(lines)
    print(text)
    save("delegation", args.quick, data, text)


if __name__ == "__main__":
    main()
