"""The one brute-force reference of every search test: exact scores of every
row the user may see, and the top-k check that allows ties at the k-th score."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def dense_scores(rag, vectors: Mapping[str, np.ndarray], user: str, query: str, tenant: str = "default", encoder=None) -> dict[int, float]:
    """Row ID → exact cosine score of every row ``user`` may read (vectors by
    external id, unit length; the query encoded by ``encoder``, default the store's)."""
    q = _unit((encoder or rag.encoder).encode([query])[0])
    return {r.row_id: float(np.dot(vectors[r.external_id], q)) for r in rag.rows(rag.visible(user, tenant))}


def text_scores(rag, encoder, texts: Mapping[str, str], user: str, query: str, tenant: str = "default") -> dict[int, float]:
    """:func:`dense_scores` from the texts a test wrote (external id → text), encoded here."""
    rows = rag.rows(rag.visible(user, tenant))
    vectors = {r.external_id: _unit(encoder.encode([texts[r.external_id]])[0]) for r in rows}
    return dense_scores(rag, vectors, user, query, tenant, encoder)


def assert_top_k(got: list[int], ref: Mapping[int, float], k: int, tol: float = 1e-4) -> None:
    """``got`` is a top-k of ``ref``: no duplicate, min(k, visible) rows, every
    row scoring above the k-th in it, none scoring below it (ties may go either way)."""
    n = min(k, len(ref))
    assert len(got) == n, f"expected {n} hits, got {len(got)}"
    assert len(set(got)) == len(got), "a row came back twice"
    kth = sorted(ref.values(), reverse=True)[n - 1] if n else 0.0
    must = {r for r, s in ref.items() if s > kth + tol}
    may = {r for r, s in ref.items() if s >= kth - tol}
    assert must <= set(got), f"rows scoring above the k-th are missing: {sorted(must - set(got))[:10]}"
    assert set(got) <= may, f"rows scoring below the k-th came back (or unreadable rows): {sorted(set(got) - may)[:10]}"
