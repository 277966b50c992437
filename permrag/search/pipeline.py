"""Multi-stage retrieval: candidates → verify → rerank → parent merge → top-k,
and RAG-Fusion (query variants fused by reciprocal rank fusion).

Every stage works on hits that already passed the verify step and on the
request's one snapshot, so no stage can bring in a row outside the caller's
bitmap or from another policy version. Parent merge replaces the chunks of
one parent by the whole parent only when the caller may read *every* chunk
of it; otherwise the visible chunks stay as they are (a parent assembled from
visible chunks alone would misrepresent the document, and one assembled from
all chunks would leak).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..access import Snapshot
from ..access.consistency import reach
from ..domain.results import Hit, Hits
from ..errors import ArgumentError, ConfigError
from .contract import stamp
from .fusion import order, rrf
from .searcher import Searcher, check_k

Reranker = Callable[[str, list[Hit]], Sequence[float]]
Variants = Callable[[str], Sequence[str]]


def as_reranker(rerank: Any) -> Reranker | None:
    """The reranker seam: a callable ``(query, hits) -> scores``, or a model
    with ``predict(pairs)`` such as a sentence-transformers ``CrossEncoder``
    (scored on ``(query, hit.text)`` pairs). It only ever sees verified hits."""
    if rerank is None:
        return None
    predict = getattr(rerank, "predict", None)  # checked first: a CrossEncoder is also callable (a torch module)
    if callable(predict):
        return lambda query, hits: list(predict([(query, h.text) for h in hits]))
    if callable(rerank):
        return rerank
    raise ArgumentError(f"rerank must be a callable (query, hits) -> scores or a CrossEncoder, not {type(rerank).__name__}")


def retrieve(
    searcher: Searcher,
    query: str,
    *,
    user: str,
    tenant: str,
    k: int = 5,
    candidates: int = 20,
    mode: str = "auto",
    rerank: Reranker | Any = None,
    merge_parents: bool = True,
    variants: Variants | None = None,
    agent: object = None,
    at_least: object = None,
) -> Hits:
    """Top ``k`` after the stages; ``variants`` turns on RAG-Fusion; ``agent``: a delegated request (user ∩ agent);
    ``at_least``: a consistency token this process must reflect first."""
    check_k(k)
    check_k(candidates, "candidates")
    if at_least is not None:
        reach(searcher.access, at_least)
    scorer = as_reranker(rerank)
    if candidates < k:
        raise ArgumentError(f"candidates ({candidates}) must be at least k ({k})")
    snap = searcher.access.snapshot(user, tenant, agent)
    queries = [query]
    if variants is not None:
        try:
            extra = [v for v in variants(query) if isinstance(v, str) and v.strip() and v != query]
        except Exception as exc:  # a user's callable (often an LLM call) may raise anything
            raise ConfigError(f"the variants callable failed: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
        queries += list(dict.fromkeys(extra))
    lists = searcher.search_many(queries, user=user, tenant=tenant, k=candidates, mode=mode, snapshot=snap)
    hits: list[Hit] = list(lists[0]) if len(lists) == 1 else fuse_hits(lists)
    if scorer is not None and hits:
        try:
            scores = [float(s) for s in scorer(query, hits)]
        except Exception as exc:  # a user's reranker may raise anything
            raise ConfigError(f"the reranker failed: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
        if len(scores) != len(hits):
            raise ConfigError(f"the reranker returned {len(scores)} scores for {len(hits)} hits")
        hits = [replace(h, score=s) for h, s in sorted(zip(hits, scores), key=lambda hs: -hs[1])]
    if merge_parents:
        hits = merge(searcher, hits, snap)
    return stamp(searcher.access.engine, hits[:k], snap, k, lists[0].mode, merged=len(hits) < min(k, len(lists[0])))


def fuse_hits(lists: Sequence[Sequence[Hit]]) -> list[Hit]:
    """Reciprocal rank fusion of several verified hit lists."""
    scores = rrf(lists)
    first: dict[int, Hit] = {}
    for hits in lists:
        for h in hits:
            first.setdefault(h.row_id, h)
    return [replace(first[r], score=scores[r]) for r in order(scores)]


def merge(searcher: Searcher, hits: list[Hit], snap: Snapshot) -> list[Hit]:
    """Replace chunks by their parent where the caller may read every chunk of it."""
    parents = sorted({h.parent for h in hits if h.parent is not None})
    if not parents:
        return hits
    docs = searcher.catalog.rows.documents(snap.tenant, parents)
    whole = {p: [r for r in recs if r.row_id in snap.tenant_rows] for p, recs in docs.items() if recs and all(r.row_id in snap.visible for r in recs if r.row_id in snap.tenant_rows)}
    ex = searcher.executor(snap.tenant)
    texts = ex.backend.texts(ex.tenant_no, [r.row_id for recs in whole.values() for r in recs]) if ex and whole else {}
    out: list[Hit] = []
    done: set[str] = set()
    for h in hits:
        if h.parent is None or h.parent not in whole:
            out.append(h)  # no parent, or some chunk is hidden: keep the visible ones as they are
            continue
        if h.parent in done:
            continue
        done.add(h.parent)
        text = "\n".join(texts.get(r.row_id, "") for r in whole[h.parent] if r.external_id != h.parent)
        out.append(replace(h, external_id=h.parent, text=text, parent=None))
    return out
