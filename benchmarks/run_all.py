"""Regenerate every benchmark table and plot in one go.

    python benchmarks/run_all.py            # the full set (about 60 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # a small version of each, about ten minutes

Writes ``benchmarks/results/<name>[_quick].{md,json}`` and the PNG plots,
then prints every table. Needs the benchmark extras:
``pip install -e ".[bench]"`` (the corpora, matplotlib, jieba).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_async  # noqa: E402
import bench_coldstart  # noqa: E402
import bench_compile  # noqa: E402
import bench_delegation  # noqa: E402
import bench_deltas  # noqa: E402
import bench_identity  # noqa: E402
import bench_identity_live  # noqa: E402
import bench_ingest  # noqa: E402
import bench_layout  # noqa: E402
import bench_ldap  # noqa: E402
import bench_peers  # noqa: E402
import bench_quality  # noqa: E402
import bench_recommend  # noqa: E402
import bench_regroup  # noqa: E402
import bench_round  # noqa: E402
import bench_search  # noqa: E402
import bench_writes  # noqa: E402
import plots  # noqa: E402
from common import RESULTS, machine  # noqa: E402

STEPS = [
    ("compile", bench_compile.main, []),
    ("search", bench_search.main, []),
    ("round", bench_round.main, []),
    ("layout", bench_layout.main, []),
    ("regroup", bench_regroup.main, []),
    ("recommend", bench_recommend.main, []),
    ("quality", bench_quality.main, []),
    ("ingest", bench_ingest.main, []),
    ("writes", bench_writes.main, []),
    ("identity", bench_identity.main, []),
    ("ldap_sync", bench_ldap.main, []),
    ("identity_live", bench_identity_live.main, []),
    ("delegation", bench_delegation.main, []),
    ("deltas", bench_deltas.main, []),
    ("async", bench_async.main, []),
    ("coldstart", bench_coldstart.main, []),
    ("peers", bench_peers.main, []),
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", help="run only these steps: " + ", ".join(s[0] for s in STEPS))
    args = ap.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    timings = []
    t_all = time.perf_counter()
    for name, fn, extra in STEPS:
        if args.only and name not in args.only:
            continue
        flags = list(extra) + (["--quick"] if args.quick else [])
        print(f"== {name} {' '.join(flags)}", flush=True)
        t0 = time.perf_counter()
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            fn(flags)
        timings.append((name, time.perf_counter() - t0))
        print(f"   {timings[-1][1]:.0f} s", flush=True)
    for p in plots.main(["--quick"] if args.quick else []):
        print(f"== plot {p.relative_to(RESULTS.parent.parent)}")
    total = time.perf_counter() - t_all
    print(f"\nAll benchmarks ({machine()}), {total:.0f} s: " + ", ".join(f"{n} {t:.0f} s" for n, t in timings) + "\n")
    for name, _, _ in STEPS:
        md = RESULTS / f"{name}{suffix}.md"
        if md.exists() and (not args.only or name in args.only):
            print(md.read_text())


if __name__ == "__main__":
    main()
