"""Recommendations for many callers, and "more like this".

* :func:`recommend` groups callers by their visible bitmap: callers whose
  bitmaps are equal share one plan and one batched Milvus search (``nq`` > 1),
  so 1,000 users over 10 role sets cost 10 searches, not 1,000. Each caller's
  recommendation is written to the audit log, as a search is.
* :func:`similar` first checks that the caller may read the seed; a seed the
  caller may not read is answered exactly as one that does not exist
  (:class:`NotReadableError`), and its vector is never fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pyroaring import FrozenBitMap

from ..access.consistency import reach
from ..catalog import DocumentRecord
from ..domain.names import as_list
from ..domain.results import Hits
from ..errors import ArgumentError, BackendError
from .contract import stamp
from .fetch import readable
from .searcher import Searcher, check_k


def recommend(searcher: Searcher, vectors: Any, users: Sequence[str], *, tenant: str, k: int = 10, agent: object = None, at_least: object = None) -> dict[str, Hits]:
    """Top-k rows for each user's vector (dense), one Milvus search per distinct bitmap; with ``agent``, each user's through it;
    ``at_least``: a consistency token this process must reflect first."""
    users = as_list(users, "users")
    if not users:
        raise ArgumentError("give at least one user")
    if len(set(users)) != len(users):
        raise ArgumentError("each user may appear once")
    check_k(k)
    if at_least is not None:
        reach(searcher.access, at_least)
    snaps = searcher.access.snapshots(users, tenant, agent)
    vectors = searcher.binding.check_vectors(vectors, len(users))  # one per user
    groups: dict[FrozenBitMap, list[int]] = {}
    for i, snap in enumerate(snaps):
        groups.setdefault(snap.visible, []).append(i)
    out: dict[str, Hits] = {}
    for members in groups.values():
        searcher.stats.add("recommend_groups")
        snap = snaps[members[0]]
        plan = searcher.plan(snap)
        ex = searcher.executor(tenant) if snap.visible else None
        if ex is None:
            raw: list[list] = [[] for _ in members]
        else:
            searcher.binding.backend().capabilities.require("dense")
            raw = ex.run(plan, snap, "dense", vectors[members], ["" for _ in members], k)
        for i, hits in zip(members, raw):
            out[users[i]] = stamp(searcher.access.engine, searcher.hits(hits, snaps[i]), snaps[i], k, "dense")
            searcher.audit.record("recommend", users[i], tenant, snaps[i].policy_version, {"plan": plan.kind, "k": k, "rows": [[h.row_id for h in out[users[i]]]]}, agents=snaps[i].agents)
    return out


def similar(searcher: Searcher, external_id: str, *, user: str, tenant: str, k: int = 10, agent: object = None, at_least: object = None) -> Hits:
    """Rows like ``external_id`` (a row or a whole document) that ``user`` (through ``agent``) may read, the seed excluded."""
    check_k(k)
    if at_least is not None:
        reach(searcher.access, at_least)
    snap = searcher.access.snapshot(user, tenant, agent)
    seed = readable(searcher, "similar", external_id, user, tenant, snap)
    ids = seed.row_ids if isinstance(seed, DocumentRecord) else [seed.row_id]
    ex = searcher.executor(tenant)
    got = [ex.backend.vector(ex.tenant_no, i) for i in ids] if ex else []
    found = [v for v in got if v is not None]
    if not found:
        raise BackendError(f"row {external_id!r} is in the catalog but not in Milvus (run reconcile --full)")
    vec = np.mean(np.stack(found), axis=0, keepdims=True)
    vec /= max(float(np.linalg.norm(vec)), 1e-12)
    hits = searcher.search_many([external_id], user=user, tenant=tenant, k=min(k + len(ids), 16_384), mode="dense", vectors=vec, snapshot=snap)[0]
    return stamp(searcher.access.engine, [h for h in hits if h.row_id not in ids][:k], snap, k, "dense", excluded=len(ids))
