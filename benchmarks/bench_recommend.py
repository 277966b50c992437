"""Recommendation benchmark: 1,000 users over 10 distinct role sets.

Grouped (``rag.recommend``: one batched Milvus search per distinct visible
bitmap) against one permissioned search per user, on Milvus Lite, with the
same results checked equal.

    python benchmarks/bench_recommend.py [--rows 20000] [--users 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, save  # noqa: E402

from permrag import PermRAG  # noqa: E402
from permrag.embed import RandomEncoder  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--role-sets", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="5,000 rows, 200 users")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.users = 5_000, 200
    enc = RandomEncoder(384)
    with tempfile.TemporaryDirectory() as tmp, PermRAG.open(Path(tmp) / "h", encoder=enc, audit="off") as rag:
        rag.add_documents([{"external_id": f"d{i}", "text": f"item {i}", "attrs": {"team": f"t{i % 50}"}} for i in range(args.rows)], batch_size=5000)
        p = rag.policy
        for s in range(args.role_sets):
            p.add_role(f"set{s}")
            for t in range(s * 3, s * 3 + 5):
                p.grant(f"set{s}", f"team:t{t % 50}")
        users = [f"user{i}" for i in range(args.users)]
        for i, u in enumerate(users):
            p.assign(u, f"set{i % args.role_sets}")
        vecs = enc.encode([f"taste {u}" for u in users])
        s0 = rag.stats["milvus_searches"]
        t = time.perf_counter()
        grouped = rag.recommend(vecs, users=users, k=10)
        t_grouped = time.perf_counter() - t
        n_grouped = rag.stats["milvus_searches"] - s0
        s0 = rag.stats["milvus_searches"]
        t = time.perf_counter()
        single = {u: rag.search_many(["x"], user=u, k=10, mode="dense", vectors=v[None, :])[0] for u, v in zip(users, vecs)}
        t_single = time.perf_counter() - t
        n_single = rag.stats["milvus_searches"] - s0
        same = all([h.row_id for h in grouped[u]] == [h.row_id for h in single[u]] for u in users)
    res = {
        "rows": args.rows,
        "users": args.users,
        "distinct_bitmaps": args.role_sets,
        "grouped_s": t_grouped,
        "grouped_milvus_searches": n_grouped,
        "per_user_s": t_single,
        "per_user_milvus_searches": n_single,
        "speedup": t_single / t_grouped,
        "same_results": same,
        "machine": machine(),
    }
    text = (
        f"Recommendation, Milvus Lite, {args.rows:,} rows, {args.users:,} users over {args.role_sets} role sets ({res['machine']})\n\n"
        "| approach | Milvus searches | time | \n|---|---|---|\n"
        f"| rag.recommend (grouped by bitmap) | {n_grouped} | {t_grouped:.2f} s |\n"
        f"| one search per user | {n_single} | {t_single:.2f} s |\n\n"
        f"Speed-up {res['speedup']:.1f}×; identical results: {same}."
    )
    print(text)
    save("recommend", args.quick, res, text)


if __name__ == "__main__":
    main()
