"""Many users in turn: every user searches in a shuffled round, beside its silo.

What a real service sees: the users of a tenant take turns, so their visible
sets share the process's cache instead of each having it alone (bench_search
measures one user at a time). Ten users — a role-based and an ACL-heavy one
at 0.1 %, 1 %, 10 %, 50 % and 100 % of the rows (as in bench_search) — each
search once per round, in a fresh random order every round, and right after
each of permrag's searches the same query goes to that user's silo (a
collection holding only its rows; at 100 %, the whole collection). After one
warm-up round (each set's first search, and the background reads it starts,
finished) the rounds are measured.

Reported per user: permrag's and the silo's median and p90 over the rounds,
their ratios (the goal: median ≤ 1.2×, p90 ≤ 1.5×), recall@10 against an exact
brute-force top-10 over the visible rows, rows outside the caller's
permissions returned, where permrag ranked, and what the in-process cache
held at the end (``rag.cache_memory()``).

    python benchmarks/bench_round.py                    # the server, 200k rows, 30 rounds
    python benchmarks/bench_round.py --quick            # the server, 10k rows, 8 rounds
    python benchmarks/bench_round.py --backend lite --rows 100000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_search import DIM, FRACTIONS, acl_sets, build, make_users, silo_collection, start_server  # noqa: E402
from common import loaded_segments, raw_search, save, settle, version  # noqa: E402
from common import machine as machine_line  # noqa: E402

from permrag import PermRAG  # noqa: E402
from permrag.embed import RandomEncoder  # noqa: E402


def timed_ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t)


def p90(xs: list[float]) -> float:
    return float(np.percentile(xs, 90))


def round_users(rag: PermRAG, n_rows: int, users: dict, teams: list[str], ids: np.ndarray, vecs: np.ndarray) -> list[dict]:
    """The round's users: name, kind, fraction and visible mask (as bench_search computes them)."""
    team_of = np.asarray([int(t[4:]) for t in teams])
    doc_no = np.asarray([int(r.external_id[1:]) for r in rag.rows(ids.tolist())])
    acls = acl_sets(n_rows)
    out = []
    for f in FRACTIONS:
        user, team_set = users[f]
        out.append({"user": user, "kind": "role", "fraction": f, "mask": np.isin(team_of, [int(t[4:]) for t in team_set])})
        mask = np.isin(doc_no, list(acls[f])) if f < 1.0 else np.ones(len(ids), dtype=bool)
        out.append({"user": f"acl-{f}", "kind": "acl", "fraction": f, "mask": mask})
    return out


def run(label: str, rag: PermRAG, n_rows: int, n_queries: int, rounds: int, seed: int = 5) -> dict:
    teams, ids, vecs, n_teams, ingest_s = build(rag, n_rows)
    users = make_users(rag, n_teams)
    client = rag.backend.client()
    no = rag.catalog.tenants.number("acme")
    coll = rag.backend.name(no)
    uri = rag.backend.uri
    texts = [f"doc {i}" for i in range(n_rows)]
    rag.backend.flush(no)
    settle(uri, coll, n_rows)
    rng = np.random.default_rng(11)
    queries = rng.standard_normal((n_queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    people = round_users(rag, n_rows, users, teams, ids, vecs)
    for i, u in enumerate(people):
        vis_ids, vis_vecs = ids[u["mask"]], vecs[u["mask"]]
        u["visible"] = int(u["mask"].sum())
        u["set"] = set(int(x) for x in vis_ids)
        u["exact"] = [set(int(x) for x in vis_ids[np.argsort(-(vis_vecs @ q))[:10]]) for q in queries]
        if u["fraction"] < 1.0:
            u["silo"] = f"{coll}_silo{i}"
            silo_collection(client, u["silo"], vis_ids, vis_vecs, [texts[j] for j in np.flatnonzero(u["mask"])], uri)
        else:
            u["silo"] = coll
        u.update(permrag=[], silo_ms=[], warm=[], recall=[], leaked=0, local=0)
    order = random.Random(seed)
    rag.searcher.local.clear()

    def one(u: dict, qi: int, measured: bool) -> None:
        q = queries[qi % n_queries]
        local = rag.stats["local_searches"]
        silo_first = qi % 2 == 1  # which of the two runs first alternates: what ran before weighs (cold CPU caches)
        if silo_first:
            silo_ms = timed_ms(lambda: raw_search(client, u["silo"], q, 10, with_text=True))
        t = time.perf_counter()
        hits = [h.row_id for h in rag.search_many(["q"], user=u["user"], tenant="acme", k=10, mode="dense", vectors=q[None, :])[0]]
        ms = 1e3 * (time.perf_counter() - t)
        if not silo_first:
            silo_ms = timed_ms(lambda: raw_search(client, u["silo"], q, 10, with_text=True))
        if not measured:
            u["warm"].append(ms)
            return
        u["permrag"].append(ms)
        u["silo_ms"].append(silo_ms)
        u["recall"].append(len(set(hits) & u["exact"][qi % n_queries]) / max(1, min(10, u["visible"])))
        u["leaked"] += sum(1 for r in hits if r not in u["set"])
        u["local"] += rag.stats["local_searches"] - local

    t0 = time.perf_counter()
    for u in order.sample(people, len(people)):  # the warm-up round: first searches, background reads started
        one(u, 0, False)
    rag.searcher.local.wait()
    warm_s = time.perf_counter() - t0
    qi = 1
    for _ in range(rounds):
        for u in order.sample(people, len(people)):
            one(u, qi, True)
            qi += 1
    memory = rag.cache_memory() if hasattr(rag, "cache_memory") else {}  # (a release before it: not reported)
    rows = []
    for u in people:
        med, sil = statistics.median(u["permrag"]), statistics.median(u["silo_ms"])
        rows.append(
            {
                "kind": u["kind"],
                "fraction": u["fraction"],
                "visible": u["visible"],
                "permrag_ms": med,
                "permrag_p90_ms": p90(u["permrag"]),
                "silo_ms": sil,
                "silo_p90_ms": p90(u["silo_ms"]),
                "median_ratio": med / sil,
                "p90_ratio": p90(u["permrag"]) / p90(u["silo_ms"]),
                "recall": statistics.mean(u["recall"]),
                "leaked": u["leaked"],
                "in_process": u["local"] / len(u["permrag"]),
                "warm_ms": u["warm"][0],
            }
        )
        print(f"  {u['kind']} {u['fraction']:>6.1%}: median {med:.1f} / {sil:.1f} ms = {med / sil:.2f}x, p90 {rows[-1]['p90_ratio']:.2f}x, recall {rows[-1]['recall']:.2f}", flush=True)
    for u in people:
        if u["silo"] != coll:
            client.drop_collection(u["silo"])
    return {"backend": label, "rows": n_rows, "rounds": rounds, "ingest_s": ingest_s, "warm_s": warm_s, "table": rows, "memory": memory, "segments": loaded_segments(uri, coll)}


def table(res: dict) -> str:
    m = res["memory"]
    held = (
        f"In-process cache at the end: {m['rows']:,} rows in {m['bytes'] / 2**20:.0f} MiB of {m['budget_bytes'] / 2**20:.0f} MiB "
        f"(copies {m['copy_bytes'] / 2**20:.0f} of {m['copy_budget_bytes'] / 2**20:.0f} MiB), {m['sets']} sets, {m['refused_sets']} not cached for want of room."
        if m
        else ""
    )
    out = [
        f"### {res['backend']}: {res['rows']:,} rows, dim {DIM}, dense top-10; 10 users in a shuffled round, {res['rounds']} rounds measured",
        "",
        "| permissions | visible | ranked in process | permrag median / p90 ms | silo median / p90 ms | **median ÷ silo** | **p90 ÷ silo** | recall@10 | leaked | warm-up search ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["table"]:
        out.append(
            f"| {r['kind']} | {r['fraction']:.1%} ({r['visible']:,}) | {r['in_process']:.0%} | {r['permrag_ms']:.1f} / {r['permrag_p90_ms']:.1f} | {r['silo_ms']:.1f} / {r['silo_p90_ms']:.1f} "
            f"| **{r['median_ratio']:.2f}×** | **{r['p90_ratio']:.2f}×** | {r['recall']:.2f} | {r['leaked']} | {r['warm_ms']:.1f} |"
        )
    out.append("")
    out.append(f"Warm-up round (each user's first search, then the background reads it started): {res['warm_s']:.1f} s. " + held)
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backend", default="server", choices=["server", "lite"])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--cache-mb", type=int, default=None, help="the store's cache_mb (default: the library's)")
    ap.add_argument("--tag", default="", help="suffix of the results' file name")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.rounds, args.queries = 10_000, 8, 20
    opts = {"cache_mb": args.cache_mb} if args.cache_mb else {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "lite":
            with PermRAG.open(Path(tmp) / "lite", encoder=RandomEncoder(DIM), **opts) as rag:
                res = run("Milvus Lite " + version("milvus-lite"), rag, args.rows, args.queries, args.rounds)
        else:
            server = start_server(Path(tmp) / "server")
            try:
                uri = f"http://127.0.0.1:{server.listen_port}"
                with PermRAG.open(Path(tmp) / "srv", encoder=RandomEncoder(DIM), milvus_uri=uri, **opts) as rag:
                    res = run("Milvus server " + rag.backend.client().get_server_version(), rag, args.rows, args.queries, args.rounds)
            finally:
                server.stop()
    machine = machine_line()
    text = f"Many users in turn ({machine}): each user's searches in a shuffled round against its silo's in the same round.\n\n" + table(res)
    print(text)
    save("round_" + args.backend + (f"_{args.tag}" if args.tag else ""), args.quick, {"machine": machine, "result": res}, text)


if __name__ == "__main__":
    main()
