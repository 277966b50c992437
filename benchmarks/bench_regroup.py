"""A policy made after the rows, before and after ``rag.repartition()``, against
the same policy made before them and a per-user silo (one Milvus server).

Co-visibility placement places a class by the roles that exist when its
first row arrives. Rows ingested before any role all have the empty
signature and share one group: every role's search then names that group
with a residual filter. ``rag.repartition()`` (placement/repartition.py) moves the
rows to their groups under the policy of now; this measures what that
gives back and what it costs (its time beside the ingest's). The stores
share rows, roles and ACL users with bench_layout.py (``--group-by``
chooses the placement of all three, default ``visibility+acl``).

    python benchmarks/bench_regroup.py            # 100k rows (about 10 minutes on 2 cores)
    python benchmarks/bench_regroup.py --quick    # 10k rows
    python benchmarks/bench_regroup.py --defaults # stores given no layout option; the placement keeper instead of a regroup
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_layout  # noqa: E402
from common import machine, save  # noqa: E402


def layouts(group_by: str, defaults: bool = False) -> dict:
    if defaults:  # no layout option: the store chooses (32 partitions on a server, visibility+acl) and its keeper moves rows
        return {"defaults, policy first": {}, "defaults, policy after": {"policy": "after"}, "defaults, policy after, keeper": {"policy": "after", "keeper": True}}
    g = dict(partitions=64, partition_by=group_by)
    return {"policy first": g, "policy after": {**g, "policy": "after"}, "policy after, regrouped": {**g, "policy": "after", "regroup": True}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--group-by", default="visibility+acl", choices=["visibility", "visibility+acl"])
    ap.add_argument("--defaults", action="store_true", help="stores opened with no layout option; the third moved by its placement keeper")
    ap.add_argument("--late-only", action="store_true", help="with --defaults: only the two stores whose roles come after the ingest")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.queries = 10_000, 8
    chosen = layouts(args.group_by, args.defaults)
    if args.late_only:
        chosen = {n: spec for n, spec in chosen.items() if spec.get("policy") == "after"}
    res = bench_layout.run(args.rows, args.queries, 2.0 if args.quick else 8.0, chosen)
    when = f"64 groups, partition_by={args.group_by!r}; roles made before the ingest, after it, and after it then regrouped"
    if args.defaults:
        when = (
            "no layout option (the store's choice: 32 partitions by co-visibility, ACLs included); roles made before the ingest, after it, and after it with the placement keeper left to move the rows"
        )
    text = f"Regroup benchmark ({machine()}); permrag ÷ a per-user silo, per store, measured interleaved.\n\n" + bench_layout.table(res, when)
    print(text)
    name = ("regroup_defaults" if args.defaults else "regroup") + (f"_{args.rows // 1000}k" if args.rows != 100_000 and not args.quick else "")
    save(name, args.quick, {"machine": machine(), "group_by": args.group_by, **res}, text)


if __name__ == "__main__":
    main()
