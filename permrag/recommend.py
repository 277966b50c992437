"""Recommendations for many callers, "more like this", and generated content.

* :func:`recommend` groups callers by their visible bitmap: callers whose
  bitmaps are equal share one plan and one batched Milvus search (``nq`` > 1),
  so 1,000 users over 10 role sets cost 10 searches, not 1,000.
* :func:`similar` first checks that the caller may read the seed row; a seed
  the caller may not read is refused with :class:`AccessDeniedError` and no
  result (its vector is never even fetched).
* :func:`add_generated` stores generated text (an LLM answer, a summary) as a
  row derived from its sources, so it is visible exactly to callers who may
  read every source; an author may only cite sources they can read.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from pyroaring import FrozenBitMap

from .catalog import DEFAULT_TENANT
from .errors import AccessDeniedError, BackendError, PermragError
from .retrieval import Hit, Hits, Retrieval

if TYPE_CHECKING:
    from .core import PermRAG


def recommend(rag: "PermRAG", vectors: np.ndarray, users: Sequence[str], *, tenant: str = DEFAULT_TENANT, k: int = 10) -> dict[str, list[Hit]]:
    """Top-k rows for each user's vector (dense), one Milvus search per distinct bitmap."""
    vectors = rag.check_vectors(vectors, len(users))  # one per user
    if len(set(users)) != len(users):
        raise PermragError("each user may appear once")
    rag.sync()
    rag.check_tenant_known(tenant)
    version, bitmaps = rag.snapshot(users, tenant)
    groups: dict[FrozenBitMap, list[int]] = {}
    for i, bm in enumerate(bitmaps):
        groups.setdefault(bm, []).append(i)
    out: dict[str, list[Hit]] = {}
    for visible, members in groups.items():
        rag.stats["recommend_groups"] += 1
        if not visible:
            out.update({users[i]: Hits((), version) for i in members})
            continue
        plan = rag._plan(visible, tenant)
        store = rag._store()
        raw = Retrieval(store, rag.stats).run(plan, visible, "dense", vectors[members], ["" for _ in members], k)
        for i, hits in zip(members, raw):
            out[users[i]] = rag._hits(hits, version)
    return out


def similar(rag: "PermRAG", external_id: str, *, user: str, tenant: str = DEFAULT_TENANT, k: int = 10) -> list[Hit]:
    """Rows like ``external_id`` that ``user`` may read (the seed itself excluded)."""
    seed = rag.row(external_id, tenant)
    rag.sync()
    if seed.row_id not in rag.visible(user, tenant):
        raise AccessDeniedError(f"{user!r} may not read {external_id!r} in tenant {tenant!r}")
    store = rag._store()
    try:
        got = store.client().query(store.collection, filter=f"row_id == {seed.row_id}", output_fields=["dense"], consistency_level="Strong")
    except Exception as exc:  # pymilvus raises many kinds
        raise BackendError(f"Milvus query failed: {exc}") from exc
    if not got:
        raise BackendError(f"row {external_id!r} is in the catalog but not in Milvus")
    vec = np.asarray([got[0]["dense"]], dtype=np.float32)
    hits = rag.search_many([external_id], user=user, tenant=tenant, k=k + 1, mode="dense", vectors=vec)[0]
    return [h for h in hits if h.row_id != seed.row_id][:k]


def add_generated(
    rag: "PermRAG",
    text: str,
    *,
    sources: Sequence[str],
    user: str,
    tenant: str = DEFAULT_TENANT,
    external_id: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> list[int]:
    """Store generated ``text`` derived from ``sources``; returns its row IDs."""
    if isinstance(sources, str) or not sources:
        raise PermragError("a generated row needs at least one source")
    rag.sync()
    visible = rag.visible(user, tenant)
    for ext in sources:
        if rag.row(ext, tenant).row_id not in visible:
            raise AccessDeniedError(f"{user!r} may not read source {ext!r}, so may not derive from it")
    doc = {
        "external_id": external_id or f"gen-{uuid.uuid4().hex[:12]}",
        "text": text,
        "tenant": tenant,
        "attrs": dict(attrs or {}),
        "derived_from": list(sources),
    }
    return rag.add_documents([doc])
