"""Multi-stage retrieval: candidates → verify → rerank → parent merge → top-k,
and RAG-Fusion (query variants fused by reciprocal rank fusion).

Every stage works on hits that already passed the verify step, so no stage can
bring in a row outside the caller's bitmap. Parent merge replaces the chunks
of one parent by the whole parent only when the caller may read *every* chunk
of it; otherwise the visible chunks stay as they are (a parent assembled from
visible chunks alone would misrepresent the document, and one assembled from
all chunks would leak).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Sequence

from pyroaring import BitMap

from .catalog import DEFAULT_TENANT
from .errors import BackendError, PermragError
from .retrieval import Hit
from .store import RRF_K

if TYPE_CHECKING:
    from .core import PermRAG

Reranker = Callable[[str, list[Hit]], Sequence[float]]
Variants = Callable[[str], Sequence[str]]


def retrieve(
    rag: "PermRAG",
    query: str,
    *,
    user: str,
    tenant: str = DEFAULT_TENANT,
    k: int = 5,
    candidates: int = 20,
    mode: str = "hybrid",
    rerank: Reranker | None = None,
    merge_parents: bool = True,
    variants: Variants | None = None,
) -> list[Hit]:
    """Top ``k`` after the stages; ``variants`` turns on RAG-Fusion."""
    if candidates < k:
        raise PermragError(f"candidates ({candidates}) must be at least k ({k})")
    queries = [query]
    if variants is not None:
        extra = [v for v in variants(query) if isinstance(v, str) and v.strip() and v != query]
        queries += list(dict.fromkeys(extra))
    lists = rag.search_many(queries, user=user, tenant=tenant, k=candidates, mode=mode)
    hits = lists[0] if len(lists) == 1 else rrf(lists)
    if rerank is not None:
        scores = list(rerank(query, hits))
        if len(scores) != len(hits):
            raise PermragError(f"the reranker returned {len(scores)} scores for {len(hits)} hits")
        hits = [replace(h, score=float(s)) for h, s in sorted(zip(hits, scores), key=lambda hs: -hs[1])]
    if merge_parents:
        hits = merge(rag, hits, user=user, tenant=tenant)
    return hits[:k]


def rrf(lists: Sequence[Sequence[Hit]]) -> list[Hit]:
    """Reciprocal rank fusion of several verified hit lists."""
    score: dict[int, float] = {}
    first: dict[int, Hit] = {}
    for hits in lists:
        for rank, h in enumerate(hits, start=1):
            score[h.row_id] = score.get(h.row_id, 0.0) + 1.0 / (RRF_K + rank)
            first.setdefault(h.row_id, h)
    order = sorted(score, key=lambda r: (-score[r], r))
    return [replace(first[r], score=score[r]) for r in order]


def merge(rag: "PermRAG", hits: list[Hit], *, user: str, tenant: str) -> list[Hit]:
    """Replace chunks by their parent where the caller may read every chunk of it."""
    visible = rag.visible(user, tenant)
    out: list[Hit] = []
    done: set[str] = set()
    for h in hits:
        if h.parent is None:
            out.append(h)
            continue
        if h.parent in done:
            continue
        chunks = rag.catalog.doc_rows(tenant, h.parent)
        if not chunks.issubset(visible):
            out.append(h)  # some chunk is hidden: keep the visible ones as they are
            continue
        done.add(h.parent)
        out.append(_parent_hit(rag, h, chunks))
    return out


def _parent_hit(rag: "PermRAG", best: Hit, chunks: BitMap) -> Hit:
    store = rag._store()
    ids = list(chunks)
    try:
        got = store.client().query(store.collection, filter=f"row_id in {ids}", output_fields=["row_id", "text"], consistency_level="Strong")
    except Exception as exc:  # pymilvus raises many kinds
        raise BackendError(f"Milvus query failed: {exc}") from exc
    by_id = {int(g["row_id"]): g["text"] for g in got}
    recs = sorted(rag.rows(ids), key=lambda r: _chunk_no(r.external_id))
    text = "\n".join(by_id.get(r.row_id, "") for r in recs)
    return replace(best, external_id=best.parent or best.external_id, text=text, parent=None)


def _chunk_no(external_id: str) -> int:
    tail = external_id.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else 0
