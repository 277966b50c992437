"""Layouts side by side on one Milvus server: flat, class groups by first
appearance, class groups by co-visibility — against a per-user silo.

The same rows (random 100-row teams, as bench_search.py) go into three
stores on one server, each with its own layout; the roles exist before the
ingest (co-visibility placement places by them). In-process ranking is off
(``local_rows=0``): every permrag search asks Milvus, so the cells show
what the layout does. Per visible fraction, interleaved query by query:
each store's unfiltered search, each store's permrag search for the role
user, and a silo holding only that user's rows. Also an ACL user: rows
scattered over every class in the flat and first-appearance layouts; under
co-visibility with ACLs (``partition_by="visibility+acl"``) a row's ACL is part
of its class key, so they fill groups of their own (``"visibility"``, roles
only, was measured here before: README).

    python benchmarks/bench_layout.py            # 200k rows (about 10 minutes on 2 cores)
    python benchmarks/bench_layout.py --quick    # 20k rows
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

import bench_search  # noqa: E402
from common import machine, measure, raw_search, save, settle  # noqa: E402

from permrag import PermRAG  # noqa: E402
from permrag.embed import RandomEncoder  # noqa: E402

LAYOUTS = {"flat": dict(partitions=0), "class groups": dict(partitions=64), "co-visibility+acl": dict(partitions=64, partition_by="visibility+acl")}
FRACTIONS = [0.01, 0.1, 0.5]


def run(n_rows: int, n_queries: int, budget_s: float, layouts: dict | None = None) -> dict:
    """``layouts``: name → PermRAG.open options, plus ``policy="after"`` (roles
    made after the ingest), ``regroup=True`` (then ``rag.repartition()``, timed)
    and ``keeper=True`` (then the store's placement keeper moves the rows in the
    background, looking every second: the time until it has settled the policy)."""
    saved = bench_search.FRACTIONS[:]  # bench_search's users and ACLs are made per fraction: ours, for this run
    bench_search.FRACTIONS[:] = FRACTIONS
    try:
        return _run(n_rows, n_queries, budget_s, layouts or LAYOUTS)
    finally:
        bench_search.FRACTIONS[:] = saved


def _run(n_rows: int, n_queries: int, budget_s: float, layouts: dict) -> dict:
    dim = bench_search.DIM
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = bench_search.start_server(Path(tmp) / "server")
        stores: dict[str, PermRAG] = {}
        try:
            uri = f"http://127.0.0.1:{server.listen_port}"
            ingest_s, regroup_s = {}, {}
            for i, (name, spec) in enumerate(layouts.items()):
                opts = {k: v for k, v in spec.items() if k not in ("policy", "regroup", "keeper")}
                opts.setdefault("repartition_every", 1.0 if spec.get("keeper") else 0)
                rag = PermRAG.open(Path(tmp) / f"s{i}", encoder=RandomEncoder(dim), milvus_uri=uri, collection=f"lay{i}", local_rows=0, **opts)
                stores[name] = rag
                if spec.get("policy") != "after":
                    users = bench_search.make_users(rag, n_rows // bench_search.TEAM_SIZE)  # the same seed: the same users everywhere
                teams, _, vecs, _, ingest_s[name] = bench_search.build(rag, n_rows)
                if spec.get("policy") == "after":
                    users = bench_search.make_users(rag, n_rows // bench_search.TEAM_SIZE)
                if spec.get("keeper"):
                    t0 = time.perf_counter()
                    while rag.keeper.settled != rag.policy_version and time.perf_counter() - t0 < 3600:
                        time.sleep(0.5)
                    regroup_s[name] = time.perf_counter() - t0
                    print(f"  {name}: the keeper moved {rag.keeper.moved_rows} rows in {rag.keeper.runs} run(s); settled after {regroup_s[name]:.1f} s", flush=True)
                if spec.get("regroup"):
                    t0 = time.perf_counter()
                    report = rag.repartition("acme")
                    regroup_s[name] = time.perf_counter() - t0
                    print(f"  {name}: {report.describe()} in {regroup_s[name]:.1f} s", flush=True)
            client = next(iter(stores.values())).backend.client()
            colls = {n: r.backend.name(r.catalog.tenants.number("acme")) for n, r in stores.items()}
            for n, r in stores.items():  # at rest everywhere, as the silo will be: sealed segments loaded
                r.backend.flush(r.catalog.tenants.number("acme"))
                settle(uri, colls[n], n_rows)
            rng = np.random.default_rng(11)
            queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            team_of = np.asarray([int(t[4:]) for t in teams])
            acls = bench_search.acl_sets(n_rows)
            docs = np.arange(n_rows)  # results are compared by document number: each store has its own row IDs
            for kind, f in [(k, f) for f in FRACTIONS for k in ("role", "acl")]:
                user, team_set = users[f]
                mask = np.isin(team_of, [int(t[4:]) for t in team_set])
                if kind == "acl":
                    user, mask = f"acl-{f}", np.isin(docs, list(acls[f]))
                vis = set(int(x) for x in docs[mask])
                bench_search.silo_collection(client, "silo", docs[mask], vecs[mask], [f"doc {j}" for j in np.flatnonzero(mask)], uri)
                fns = {"silo": lambda q: raw_search(client, "silo", q, 10, with_text=True)}
                for name, rag in stores.items():
                    fns[f"unfiltered {name}"] = lambda q, c=colls[name]: raw_search(client, c, q, 10, with_text=True)
                    fns[name] = lambda q, rag=rag, user=user: [int(h.external_id[1:]) for h in rag.search_many(["q"], user=user, tenant="acme", k=10, mode="dense", vectors=q[None, :])[0]]
                got = measure(fns, queries, budget_s)
                client.drop_collection("silo")
                silo = got["silo"][0]
                exact = [set(int(x) for x in docs[mask][np.argsort(-(vecs[mask] @ q))[:10]]) for q in queries]
                cell = {"kind": kind, "fraction": f, "visible": int(mask.sum()), "silo_ms": 1e3 * silo, "layouts": {}}
                for name, rag in stores.items():
                    t, outs = got[name]
                    cell["layouts"][name] = {
                        "ms": 1e3 * t,
                        "silo_ratio": t / silo,
                        "unfiltered_ms": 1e3 * got[f"unfiltered {name}"][0],
                        "recall": statistics.mean(len(set(o) & e) / 10 for o, e in zip(outs, exact)),
                        "leaked": sum(1 for o in outs for r in o if r not in vis),
                        "plan": rag.plan(user, "acme").describe().split(":")[0],
                    }
                rows.append(cell)
                print(f"  {kind} {f:.0%}: " + ", ".join(f"{n} {c['silo_ratio']:.2f}x silo" for n, c in cell["layouts"].items()), flush=True)
        finally:
            for r in stores.values():
                r.close()
            server.stop()
    return {"rows": n_rows, "ingest_s": ingest_s, "regroup_s": regroup_s, "layouts": list(layouts), "table": rows}


def table(res: dict, when: str = "roles made before the ingest") -> str:
    names = res.get("layouts", list(LAYOUTS))
    out = [
        f"### Milvus server 2.3.5, {res['rows']:,} rows, dim {bench_search.DIM}, dense top-10, in-process ranking off; {when}",
        "",
        "| permissions | visible | silo ms | " + " | ".join(f"{n}: ÷ silo (ms)" for n in names) + " | " + " | ".join(f"unfiltered ms, {n}" for n in names) + " |",
        "|---|---|---|" + "---|" * (2 * len(names)),
    ]
    for c in res["table"]:
        cells = [f"**{c['layouts'][n]['silo_ratio']:.2f}×** ({c['layouts'][n]['ms']:.1f})" for n in names]
        unf = [f"{c['layouts'][n]['unfiltered_ms']:.1f}" for n in names]
        out.append(f"| {c['kind']} | {c['fraction']:.0%} ({c['visible']:,}) | {c['silo_ms']:.1f} | " + " | ".join(cells) + " | " + " | ".join(unf) + " |")
    out.append("")
    out.append("Plans: " + "; ".join(f"{c['kind']} {c['fraction']:.0%} {n}: {c['layouts'][n]['plan']}" for c in res["table"] for n in names))
    recall = min(c["layouts"][n]["recall"] for c in res["table"] for n in names)
    leaks = sum(c["layouts"][n]["leaked"] for c in res["table"] for n in names)
    out.append(
        f"Lowest recall@10 of any cell: {recall:.2f}; rows outside the caller's permissions returned: {leaks}. "
        f"Ingest s: " + ", ".join(f"{n} {s:.1f}" for n, s in res["ingest_s"].items()) + "".join(f"; rows moved (regroup or keeper) s, {n}: {s:.1f}" for n, s in res.get("regroup_s", {}).items())
    )
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.queries = 20_000, 8
    res = run(args.rows, args.queries, 2.0 if args.quick else 8.0)
    text = f"Layout benchmark ({machine()}); permrag ÷ a per-user silo, per layout, measured interleaved.\n\n" + table(res)
    print(text)
    save("layout", args.quick, {"machine": machine(), **res}, text)


if __name__ == "__main__":
    main()
