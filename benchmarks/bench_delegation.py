"""Delegated search: a user searching through an agent against the same user's own search.

For each visible fraction (0.1 %, 1 %, 10 %, 50 %, 100 % of the tenant) one
user sees exactly that fraction and an agent may read the whole tenant, so the
delegated search (``agent=``) returns the same rows as the user's own: what
is measured is the cost of delegation itself — the intersection of the two
bitmaps (cached per (user, agent)), its own plan, and the audit record that
names both. The two run interleaved query by query (common.measure), dense
mode with the same query vectors, on Milvus Lite; the results are checked
equal. Goal: delegated ÷ user ≤ 1.05 at every fraction.

A second table has the agent narrow the view: a user who sees twice the
fraction, through an agent that may read half the tenant (another
attribute), sees the fraction — a bitmap of its own, planned and cached like
any other. It is compared with a search of the same rows without an agent
(the user's search answered from a copy of that bitmap: the same rows, their
own plan), and, for scale, with a user who sees as many rows by one rule
(other rows, laid out in one run where the intersection is many). Every
delegated hit is checked to be in the intersection.

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

from dataclasses import replace  # noqa: E402

from common import machine, measure, save  # noqa: E402
from pyroaring import FrozenBitMap  # noqa: E402

from permrag import PermRAG  # noqa: E402
from permrag.embed import RandomEncoder  # noqa: E402

# bucket values 000..999: a glob picks a decimal fraction of them
FRACTIONS = {"0.1%": ["b:000"], "1%": ["b:00*"], "10%": ["b:0*"], "50%": [f"b:{d}*" for d in range(5)], "100%": ["*"]}
WIDE = {"0.1%": ["b:000", "b:001"], "1%": ["b:00*", "b:01*"], "10%": ["b:0*", "b:1*"], "50%": ["*"]}  # twice the fraction


def build(rag: PermRAG, rows: int) -> None:
    rag.add_documents([{"external_id": f"d{i}", "text": f"item {i}", "attrs": {"b": f"{i % 1000:03d}", "c": str(i // 1000 % 2)}} for i in range(rows)], batch_size=5000)
    p = rag.policy
    for prefix, table in (("user", FRACTIONS), ("wide", WIDE)):
        for name, selectors in table.items():
            role = f"{prefix}-sees-{name}"
            p.add_role(role)
            for sel in selectors:
                p.grant(role, sel)
            p.assign_user(f"{prefix}-{name}", role)
    for agent, sel in (("helper", "*"), ("half", "c:0")):
        p.add_role(f"agent-{agent}")
        p.grant(f"agent-{agent}", sel)
        p.assign_agent(agent, f"agent-{agent}")


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


def run_narrowing(rag: PermRAG, vecs: np.ndarray, k: int) -> dict[str, dict]:
    """``wide-<f>`` through agent ``half`` (sees f) against the same rows without an agent, and ``user-<f>``."""
    out = {}
    for name in WIDE:
        both = rag.snapshot(f"wide-{name}", agent="half").visible
        twin = FrozenBitMap(both)  # the same rows as a bitmap of its own: the plan and rows read back are its own

        def same_rows(i: int, user: str = f"wide-{name}", twin: FrozenBitMap = twin) -> list[int]:
            snap = replace(rag.snapshot(user), visible=twin)
            return [h.row_id for h in rag.searcher.search_many(["q"], user=user, tenant="default", k=k, mode="dense", vectors=vecs[i : i + 1], snapshot=snap)[0]]

        def one_rule(i: int, user: str = f"user-{name}") -> list[int]:
            return [h.row_id for h in rag.search_many(["q"], user=user, k=k, mode="dense", vectors=vecs[i : i + 1])[0]]

        def delegated(i: int, user: str = f"wide-{name}") -> list[int]:
            return [h.row_id for h in rag.search_many(["q"], user=user, k=k, mode="dense", vectors=vecs[i : i + 1], agent="half")[0]]

        got = measure({"same_rows": same_rows, "one_rule": one_rule, "delegated": delegated}, list(range(len(vecs))), budget_s=60.0)
        (t_same, o_same), (t_rule, _), (t_del, o_del) = got["same_rows"], got["one_rule"], got["delegated"]
        out[name] = {
            "visible_rows": len(both),
            "same_rows_ms": t_same * 1e3,
            "one_rule_ms": t_rule * 1e3,
            "one_rule_rows": len(rag.snapshot(f"user-{name}").visible),
            "delegated_ms": t_del * 1e3,
            "ratio": t_del / t_same,
            "same_results": o_same == o_del,
            "hits_in_intersection": all(r in both for hits in o_del for r in hits),
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
    ap.add_argument("--quick", action="store_true", help="4,000 rows, 40 queries")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.queries = 4_000, 40  # a multiple of 2,000: the narrowing agent sees exactly half
    enc = RandomEncoder(384)
    vecs = enc.encode([f"query {i}" for i in range(args.queries)])
    with tempfile.TemporaryDirectory() as tmp, PermRAG.open(Path(tmp) / "h", encoder=enc) as rag:
        build(rag, args.rows)
        res = run(rag, vecs, args.k)
        narrow = run_narrowing(rag, vecs, args.k)
        snap = snapshot_us(rag, "user-10%")
    data = {"rows": args.rows, "queries": args.queries, "k": args.k, "fractions": res, "narrowing": narrow, "snapshot_us": snap, "goal": "delegated / user <= 1.05", "machine": machine()}
    lines = [
        f"Delegated search (user through an agent that may read the whole tenant) vs the user's own search, "
        f"Milvus Lite, {args.rows:,} rows × 384, dense, top-{args.k}, {args.queries} queries interleaved, median ({data['machine']})",
        "",
        "| visible | rows | user | delegated | ratio | same results |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        lines.append(f"| {name} | {r['visible_rows']:,} | {r['user_ms']:.2f} ms | {r['delegated_ms']:.2f} ms | {r['ratio']:.3f}× | {r['same_results']} |")
    lines += [
        "",
        "An agent that narrows: a user who sees twice the fraction, through an agent that may read half the tenant (the intersection: "
        "many runs of rows), against the same rows searched without an agent; for scale, a user who sees as many rows by one rule (one run).",
        "",
        "| visible | rows | same rows, no agent | delegated | ratio | same results | one rule (other rows) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in narrow.items():
        lines.append(
            f"| {name} | {r['visible_rows']:,} | {r['same_rows_ms']:.2f} ms | {r['delegated_ms']:.2f} ms | {r['ratio']:.3f}× | "
            f"{r['same_results'] and r['hits_in_intersection']} | {r['one_rule_ms']:.2f} ms |"
        )
    lines += [
        "",
        f"A snapshot (the bitmap a request is answered from, versions checked): {snap['user']:.1f} µs for the user, {snap['delegated']:.1f} µs delegated (the (user, agent) intersection cached).",
    ]
    text = "\n".join(lines)
    print(text)
    save("delegation", args.quick, data, text)


if __name__ == "__main__":
    main()
