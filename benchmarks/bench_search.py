"""Search benchmark: what permissions cost, side by side, in one run.

For callers who see 0.1 %, 1 %, 10 %, 50 % and 100 % of a collection (each
holding a random set of teams, the hard case for ID ranges), dense top-10:

* **unfiltered** — a plain Milvus search over the whole collection (the 1.0);
* **permrag** — ``rag.search`` (policy lookup, plan, Milvus or — for a
  visible set of at most ``local_rows`` rows, or up to ``prefetch_rows`` once
  read back in the background — exact ranking in process from cached stored
  vectors (search/in_process.py), verify, catalog);
* **permrag-milvus** — the same with in-process ranking off: every search
  asks Milvus with the planned filter or class groups;
* **post-filter** — unfiltered top-100, then drop what the caller may not see
  (what FGA-style retriever wrappers do);
* **id-in** — ``row_id in [every visible id]``;
* **acl-array** — an ``acl`` ARRAY field with ``array_contains_any(acl, [teams])``
  (the Milvus row-level RBAC article's pattern), in a second collection;
* **silo** — a collection holding only the caller's rows (the limit to aim at).

Two kinds of permissions, each at every fraction: **role-based** (a role
granted a random set of teams: whole visibility classes) and **ACL-heavy**
(documents carry per-document ACLs naming the user; in a flat store or
one grouped by class the ACL is not part of the visibility class, so the
visible rows are scattered over every class; under co-visibility placement
with ACLs, ``partition_by="visibility+acl"``, it is, and the rows an ACL names
fill groups of their own).

Every approach fetches the hits' text (as permrag and an application do).
Reported per cell: median latency / unfiltered median, recall@10 against an
exact brute-force top-10 over the visible rows, and mean rows returned; and
the goal's ratio, permrag ÷ silo.

    python benchmarks/bench_search.py              # Lite 100k rows + server 200k rows
    python benchmarks/bench_search.py --quick      # Lite 5k + server 10k
    python benchmarks/bench_search.py --lite-rows 1000000 --server-rows 1000000   # everything at 1M (over 23 GB, hours)
    python benchmarks/bench_search.py --skip-server --lite-rows 1000000 --fractions 0.001,0.01,0.1,1 --skip acl-array --tag 1m_lite
        # the 1M Lite run as measured (acl-array: ~200 s a query at 10 %; the 50 % silo: 19 GB)
    python benchmarks/bench_search.py --skip-lite --server-rows 1000000 --skip acl-array --tag 1m_server
        # the 1M server run as measured (22 min on 2 cores)
    python benchmarks/bench_search.py --skip-lite --server-rows 1000000 --server-groups 64 --group-by visibility --policy-first --skip post-filter,id-in,acl-array --tag 1m_server_covis
    python benchmarks/bench_search.py --skip-lite --server-rows 1000000 --server-groups 32 --group-by visibility+acl --policy-first --skip post-filter,id-in,acl-array --tag 1m_server_covis32
        # the same with co-visibility placement (placement/covis.py): the roles made before the ingest
        # (the latest 1M run, results/search_1m_server_covis.md: --group-by visibility+acl)
    python benchmarks/bench_search.py --skip-server --lite-rows 1000000 --lite-groups 64 --group-by visibility+acl --policy-first --skip post-filter,id-in,acl-array --tag 1m_lite_covis
        # the same on Milvus Lite (results/search_1m_lite_covis.md; 50 % included: 8.6 GB peak)
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    acl_collection,
    fresh_postgres,
    loaded_segments,
    measure,
    raw_search,
    save,
    settle,
    version,
)
from common import machine as machine_line  # noqa: E402

from permrag import PermRAG  # noqa: E402
from permrag.backends.schema import INDEX_BUILD  # noqa: E402
from permrag.embed import RandomEncoder  # noqa: E402

DIM = 384
TEAM_SIZE = 100  # rows per team: one team is 0.1 % of 100k rows
FRACTIONS = [0.001, 0.01, 0.1, 0.5, 1.0]
APPROACHES = ["permrag", "permrag-milvus", "post-filter", "id-in", "acl-array", "silo"]
INDEX = ["FLAT"]  # --index: the dense index of permrag's collection, the silo and every comparison
SKIPPED: set[str] = set()  # --skip: comparison approaches left out of a run (never permrag, the silo or unfiltered)


def acl_sets(n_rows: int, seed: int = 9) -> dict[float, set[int]]:
    """Per fraction, the documents whose ACL names that fraction's ACL user
    (random documents: scattered over every team and class)."""
    rng = np.random.default_rng(seed)
    return {f: set(rng.choice(n_rows, max(1, round(f * n_rows)), replace=False).tolist()) for f in FRACTIONS if f < 1.0}


def build(rag: PermRAG, n_rows: int, seed: int = 7):
    """Ingest n_rows in random team order; returns (docs' teams, vectors by row id)."""
    rng = random.Random(seed)
    n_teams = n_rows // TEAM_SIZE
    teams = [f"team{i % n_teams}" for i in range(n_rows)]
    rng.shuffle(teams)
    docs = [{"external_id": f"d{i}", "text": f"doc {i}", "tenant": "acme", "attrs": {"team": t}} for i, t in enumerate(teams)]
    named: dict[int, list[str]] = {}
    for f, members in acl_sets(n_rows).items():
        for i in members:
            named.setdefault(i, []).append(f"user:acl-{f}")
    for i, who in named.items():
        docs[i]["acl"] = {"allow": who}
    t0 = time.perf_counter()
    ids = rag.add_documents(docs, batch_size=5000)
    ingest_s = time.perf_counter() - t0
    vecs = RandomEncoder(DIM).encode([d["text"] for d in docs])
    return teams, np.asarray(ids), vecs, n_teams, ingest_s


def make_users(rag: PermRAG, n_teams: int, seed: int = 8) -> dict[float, tuple[str, list[str]]]:
    rng = random.Random(seed)
    users = {}
    p = rag.policy
    for f in FRACTIONS:
        user = f"user-{f}"
        role = f"role-{f}"
        p.add_role(role, tenant="acme")
        if f >= 1.0:
            team_set = [f"team{i}" for i in range(n_teams)]
            p.grant(role, "*", tenant="acme")
        else:
            team_set = [f"team{i}" for i in rng.sample(range(n_teams), max(1, round(f * n_teams)))]
            for t in team_set:
                p.grant(role, f"team:{t}", tenant="acme")
        p.assign_user(user, role, tenant="acme")
        users[f] = (user, team_set)
    p.add_role("acl-all", tenant="acme")
    p.grant("acl-all", "*", tenant="acme")
    p.assign_user("acl-1.0", "acl-all", tenant="acme")
    return users


def silo_collection(client, name: str, ids, vecs, texts, uri: str = "") -> None:
    from pymilvus import DataType

    if client.has_collection(name):
        client.drop_collection(name)
    s = client.create_schema(auto_id=False)
    s.add_field("row_id", DataType.INT64, is_primary=True)
    s.add_field("text", DataType.VARCHAR, max_length=256)
    s.add_field("dense", DataType.FLOAT_VECTOR, dim=DIM)
    ip = client.prepare_index_params()
    ip.add_index("dense", index_type=INDEX[0], metric_type="COSINE", params=dict(INDEX_BUILD[INDEX[0]]))  # as permrag's collection
    client.create_collection(name, schema=s, index_params=ip, consistency_level="Bounded")
    for j in range(0, len(ids), 5000):  # built per batch (memory at 1M rows)
        client.insert(name, [{"row_id": int(i), "text": t, "dense": v.tolist()} for i, v, t in zip(ids[j : j + 5000], vecs[j : j + 5000], texts[j : j + 5000])])
    client.flush(name)
    client.load_collection(name)
    settle(uri, name, len(ids))  # a server: searched once its sealed segments serve every row


def run_backend(label: str, rag: PermRAG, n_rows: int, n_queries: int, budget_s: float = 8.0, policy_first: bool = False) -> dict:
    if policy_first:  # the roles exist before the rows arrive (what co-visibility placement places by)
        users = make_users(rag, n_rows // TEAM_SIZE)
    teams, ids, vecs, n_teams, ingest_s = build(rag, n_rows)
    if not policy_first:
        users = make_users(rag, n_teams)
    client = rag.backend.client()
    coll = rag.backend.name(rag.catalog.tenants.number("acme"))  # the tenant's own collection
    texts = [f"doc {i}" for i in range(n_rows)]  # as ingested: every approach fetches the hits' text, as permrag does
    uri = rag.backend.uri
    if "acl-array" not in SKIPPED:
        acl_collection(client, f"{coll}_acl", ids, teams, vecs, texts, uri, index=INDEX[0])
    rng = np.random.default_rng(11)
    queries = rng.standard_normal((n_queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    team_of = np.asarray([int(t[4:]) for t in teams])

    rag.backend.flush(rag.catalog.tenants.number("acme"))  # at rest, as the silo will be: sealed segments loaded
    settle(uri, coll, n_rows)
    coll_segments = loaded_segments(uri, coll)
    rows = []
    base_all = []
    acls = acl_sets(n_rows)
    doc_no = np.asarray([int(r.external_id[1:]) for r in rag.rows(ids.tolist())])
    for kind, f in [(k, f) for f in FRACTIONS for k in ("role", "acl")]:
        user, team_set = users[f]
        vis_mask = np.isin(team_of, [int(t[4:]) for t in team_set])
        if kind == "acl":
            user, team_set = f"acl-{f}", []
            vis_mask = np.isin(doc_no, list(acls[f])) if f < 1.0 else np.ones(len(ids), dtype=bool)
        vis_ids = ids[vis_mask]
        vis_set = set(int(x) for x in vis_ids)
        vis_vecs = vecs[vis_mask]
        exact = [set(int(x) for x in vis_ids[np.argsort(-(vis_vecs @ q))[:10]]) for q in queries]
        plan = rag.plan(user, "acme")
        silo = f"{coll}_silo"
        # everything visible: the tenant's collection is the silo, unless it is split into
        # partitions (a silo of every row is one collection: searched whole, with no partitions)
        own = f < 1.0 or rag.backend.grouping(rag.catalog.tenants.number("acme")) is not None
        if own:
            silo_collection(client, silo, vis_ids, vis_vecs, [texts[j] for j in np.flatnonzero(vis_mask)], uri)
        id_expr = f"row_id in [{', '.join(map(str, vis_ids.tolist()))}]"
        local = rag.searcher.local
        local.clear()  # the first search reads the visible rows back (when in-process ranking takes the set)
        t0 = time.perf_counter()
        rag.search_many(["q"], user=user, tenant="acme", k=10, mode="dense", vectors=queries[:1])
        first_ms = 1e3 * (time.perf_counter() - t0)
        t0 = time.perf_counter()
        local.wait()  # a set over local_rows (up to prefetch_rows) is read back in the background: measured once it is
        ready_s = time.perf_counter() - t0
        local_before = rag.stats["local_searches"]

        def milvus_only(q, user=user, local=local):
            rag.searcher.local = None
            try:
                return [h.row_id for h in rag.search_many(["q"], user=user, tenant="acme", k=10, mode="dense", vectors=q[None, :])[0]]
            finally:
                rag.searcher.local = local

        team_list = ", ".join(f'"{t}"' for t in team_set)
        ix = INDEX[0]
        fns = {
            "unfiltered": lambda q: raw_search(client, coll, q, 10, with_text=True, index=ix),
            "permrag": lambda q: [h.row_id for h in rag.search_many(["q"], user=user, tenant="acme", k=10, mode="dense", vectors=q[None, :])[0]],
            "permrag-milvus": milvus_only,
            "post-filter": lambda q: [r for r in raw_search(client, coll, q, 100, with_text=True, index=ix) if r in vis_set][:10],
            "id-in": lambda q: raw_search(client, coll, q, 10, id_expr, with_text=True, index=ix),
            "acl-array": (lambda q: raw_search(client, f"{coll}_acl", q, 10, f"array_contains_any(acl, [{team_list}])", with_text=True, index=ix)) if kind == "role" else (lambda q: []),
            "silo": (lambda q: raw_search(client, silo, q, 10, with_text=True, index=ix)) if own else (lambda q: raw_search(client, coll, q, 10, with_text=True, index=ix)),
        }
        for name in SKIPPED:
            fns.pop(name, None)
        measured = measure(fns, queries, budget_s)
        # The goal's two alone, side by side: between two 2 ms searches, the full interleave runs
        # full-collection scans (unfiltered, post-filter, acl-array) that leave the CPU caches cold
        # for whatever follows (measured alone at 100k rows on Lite: permrag 1.1 ms and a 100-row
        # silo 1.4 ms; with an unfiltered scan between them 3.1 and 2.0 ms).
        pair = measure({"permrag": fns["permrag"], "silo": fns["silo"]}, queries, budget_s)
        base_t = measured.pop("unfiltered")[0]
        base_all.append(base_t)
        cells = {}
        for name, (t, outs) in measured.items():
            recall = statistics.mean(len(set(o) & e) / max(1, min(10, len(e))) for o, e in zip(outs, exact))  # zip: queries run
            leaked = sum(1 for o in outs for r in o if r not in vis_set)
            cells[name] = {"ms": 1e3 * t, "ratio": t / base_t, "recall": recall, "returned": statistics.mean(len(o) for o in outs), "leaked": leaked}
        silo_segments = loaded_segments(uri, silo if own else coll)
        if own:
            client.drop_collection(silo)
        silo_ratio = cells["permrag"]["ms"] / cells["silo"]["ms"]
        pair_ratio = pair["permrag"][0] / pair["silo"][0]
        cells["permrag"]["leaked"] += sum(1 for o in pair["permrag"][1] for r in o if r not in vis_set)
        where = "in process" if rag.stats["local_searches"] > local_before else "Milvus"
        rows.append(
            {
                "kind": kind,
                "fraction": f,
                "visible": int(vis_mask.sum()),
                "unfiltered_ms": 1e3 * base_t,
                "plan": plan.describe()[:160],
                "cells": cells,
                "permrag_ms": cells["permrag"]["ms"],
                "silo_ms": cells["silo"]["ms"],
                "silo_ratio": silo_ratio,
                "pair_ratio": pair_ratio,
                "pair_ms": [1e3 * pair["permrag"][0], 1e3 * pair["silo"][0]],
                "milvus_silo_ratio": cells["permrag-milvus"]["ms"] / cells["silo"]["ms"],
                "first_ms": first_ms,
                "ready_s": ready_s,
                "ranked": where,
                "silo_segments": silo_segments,
            }
        )
        print(
            f"  {label} {kind} {f:>6.1%}: permrag ÷ silo {silo_ratio:.2f} (side by side {pair_ratio:.2f}); unfiltered {1e3 * base_t:.1f} ms; "
            + ", ".join(f"{n} {c['ratio']:.2f}x r{c['recall']:.2f}" for n, c in cells.items()),
            flush=True,
        )
    if "acl-array" not in SKIPPED:
        client.drop_collection(f"{coll}_acl")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB, this process (Lite's server process apart)
    print(f"  peak RSS of the benchmark process: {peak:,.0f} MB", flush=True)
    return {
        "backend": label,
        "rows": n_rows,
        "unfiltered_ms": 1e3 * statistics.median(base_all),
        "ingest_s": ingest_s,
        "table": rows,
        "stats": dict(rag.stats),
        "peak_rss_mb": peak,
        "segments": coll_segments,
    }


def table(res: dict) -> str:
    out = [
        f"### {res['backend']}: {res['rows']:,} rows, dim {DIM}, dense top-10, unfiltered median {res['unfiltered_ms']:.1f} ms (measured beside each row, interleaved)",
        "",
        "| permissions | visible | ranked | **permrag ÷ silo** | side by side | permrag-milvus ÷ silo | permrag ms | first search ms | background read s | silo ms | "
        + " | ".join(f"{a} ratio / recall / rows" for a in APPROACHES)
        + " |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(APPROACHES),
    ]
    for row in res["table"]:
        cells = [f"{row['cells'][a]['ratio']:.2f}× / {row['cells'][a]['recall']:.2f} / {row['cells'][a]['returned']:.1f}" if a in row["cells"] else "not run" for a in APPROACHES]
        side = f"{row['pair_ratio']:.2f}× ({row['pair_ms'][0]:.1f} / {row['pair_ms'][1]:.1f} ms)" if "pair_ratio" in row else "—"
        head = (
            f"| {row['kind']} | {row['fraction']:.1%} ({row['visible']:,}) | {row['ranked']} | **{row['silo_ratio']:.2f}×** | {side} | {row['milvus_silo_ratio']:.2f}× "
            f"| {row['permrag_ms']:.1f} | {row['first_ms']:.1f} | {row.get('ready_s', 0.0):.1f} | {row['silo_ms']:.1f} | "
        )
        out.append(head + " | ".join(cells) + " |")
    out.append("")
    out.append("Plans: " + "; ".join(f"{r['kind']} {r['fraction']:.1%}: {r['plan'].split(':')[0]}" for r in res["table"]))
    out.append(
        "(side by side: permrag and the silo measured again alone, interleaved with each other only — in the full interleave "
        "the full-collection scans of the other approaches run between them and leave the CPU caches cold for whatever follows; "
        "permrag ÷ silo there, permrag ms / silo ms. acl-array is the role-based pattern only: one group per row; empty for ACL users. ranked: where permrag's dense ranking ran; "
        "first search: permrag's first search of the cell with an empty row cache, which reads the visible rows back by primary key when ranked in process "
        "(a set over local_rows, up to prefetch_rows, goes to Milvus and is read back in the background: the time until that read is done).)"
    )
    if res.get("segments"):
        out.append(
            f"Sealed segments served: the tenant's collection {res['segments']}; silos "
            + ", ".join(f"{r['kind']} {r['fraction']:.1%} {r['silo_segments']}" for r in res["table"] if r.get("silo_segments"))
            + "."
        )
    leaks = {a: sum(r["cells"][a]["leaked"] for r in res["table"] if a in r["cells"]) for a in APPROACHES}
    out.append(f"Rows outside the caller's permissions returned: {leaks}")
    return "\n".join(out)


def layout(rag: PermRAG, group_by: str, policy_first: bool) -> str:
    """How the store lays out new tenant collections, for the table's title."""
    n = rag.backend.groups
    when = "; policy made before the ingest" if policy_first else "; policy made after the ingest"
    if not n:
        return ", flat (one partition, filters)" + when
    placement = rag.catalog.allocator.placement  # what the store chose, given options or not
    how = "classes by first appearance" if placement is None else "classes by co-visibility, ACLs in the class key" if placement.acls else "classes by co-visibility"
    return f", {n} class-group partitions ({how})" + when


def start_server(base: Path):
    """A Milvus server on free ports (its embedded etcd too)."""
    from tests.helpers.milvus_server import start

    return start(base)


def opened(options: dict) -> dict:
    """``PermRAG.open``'s options, each callable one called now (a fresh database per store)."""
    return {k: v() if callable(v) else v for k, v in options.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lite-rows", type=int, default=100_000)
    ap.add_argument("--server-rows", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--skip-lite", action="store_true")
    ap.add_argument("--lite-groups", type=int, default=None, help="class-group partitions per collection on Lite (default: the library's)")
    ap.add_argument("--server-groups", type=int, default=None, help="the same on the server")
    ap.add_argument("--group-by", default="class", choices=["class", "visibility", "visibility+acl"], help="how classes map to groups (with --*-groups; visibility: placement/covis.py)")
    ap.add_argument("--policy-first", action="store_true", help="make the roles before the ingest (co-visibility placement needs them)")
    ap.add_argument("--tag", default="", help="suffix of the results' file name (e.g. 1m)")
    ap.add_argument("--local-rows", type=int, default=None, help="largest visible set read back by a search, ranked in process (default: the library's)")
    ap.add_argument("--prefetch-rows", type=int, default=None, help="largest set read back in the background (default: the library's; 0: none)")
    ap.add_argument("--fractions", default=None, help="comma-separated visible fractions (default: 0.001,0.01,0.1,0.5,1)")
    ap.add_argument(
        "--postgres",
        default=None,
        help="keep the catalog and policy in a fresh database on this PostgreSQL server (an admin URL, e.g. postgresql://postgres@127.0.0.1:5432/test; default: SQLite under the home)",
    )
    ap.add_argument("--audit", default=None, choices=["sync", "async", "off"], help="the store's audit mode (default: the library's, sync)")
    ap.add_argument("--index", default="FLAT", choices=sorted(INDEX_BUILD), help="the dense index of permrag's collection and of every comparison, built and searched alike")
    ap.add_argument("--skip", default="", help="comparison approaches not to run, comma-separated (e.g. acl-array: 200 s a query at 1M rows)")
    args = ap.parse_args(argv)
    if args.fractions:
        FRACTIONS[:] = sorted(float(x) for x in args.fractions.split(","))
    SKIPPED.update(x for x in args.skip.split(",") if x)
    INDEX[0] = args.index
    if SKIPPED - {"post-filter", "id-in", "acl-array"}:
        ap.error("--skip takes post-filter, id-in, acl-array")
    local = {k: v for k, v in (("local_rows", args.local_rows), ("prefetch_rows", args.prefetch_rows)) if v is not None}
    if args.index != "FLAT":
        local["index"] = args.index
    if args.quick:
        args.lite_rows, args.server_rows, args.queries = 5_000, 10_000, 8
    budget = 2.0 if args.quick else 8.0  # seconds per slow approach and fraction
    results = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        db_label = ("; catalog on PostgreSQL" if args.postgres else "") + (f"; audit {args.audit}" if args.audit else "") + (f"; {args.index} index" if args.index != "FLAT" else "")
        if args.audit:
            local["audit"] = args.audit
        if args.postgres:  # one fresh database per store
            local["database_url"] = lambda: stack.enter_context(fresh_postgres(args.postgres))
        if not args.skip_lite:
            print(f"Milvus Lite, {args.lite_rows:,} rows", flush=True)
            gb = {"partition_by": args.group_by} if args.lite_groups else {}
            with PermRAG.open(Path(tmp) / "lite", encoder=RandomEncoder(DIM), partitions=args.lite_groups, **gb, **opened(local)) as rag:
                label = "Milvus Lite " + version("milvus-lite") + layout(rag, args.group_by, args.policy_first) + db_label
                results.append(run_backend(label, rag, args.lite_rows, args.queries, budget, args.policy_first))
        if not args.skip_server:
            print(f"Milvus server, {args.server_rows:,} rows", flush=True)
            server = start_server(Path(tmp) / "server")
            try:
                uri = f"http://127.0.0.1:{server.listen_port}"
                gb = {"partition_by": args.group_by} if args.server_groups else {}
                with PermRAG.open(Path(tmp) / "srv", encoder=RandomEncoder(DIM), milvus_uri=uri, partitions=args.server_groups, **gb, **opened(local)) as rag:
                    label = "Milvus server " + rag.backend.client().get_server_version() + layout(rag, args.group_by, args.policy_first) + db_label
                    results.append(run_backend(label, rag, args.server_rows, args.queries, budget, args.policy_first))
            finally:
                server.stop()
    machine = machine_line()
    text = f"Search benchmark ({machine}); cells: latency ÷ unfiltered, recall@10 vs exact, rows returned.\n\n"
    text += "\n\n".join(table(r) for r in results)
    print(text)
    save("search" + (f"_{args.tag}" if args.tag else ""), args.quick, {"machine": machine, "results": results}, text)


if __name__ == "__main__":
    main()
