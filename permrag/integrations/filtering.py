"""Filtering another library's retriever by the caller's bitmap: shared by the
LangChain and LlamaIndex wrappers (``permissioned()`` in each).

A wrapped result is kept only if its metadata names the caller's tenant
(``tenant_key``; a result that does not say is dropped: fail closed) and an
external id (``id_key``) that the catalog knows as a row, or a document every
chunk of which, the caller may read. A ``row_key`` in the metadata must be
that row's id, so a stale copy of a replaced row does not pass under its
name. Over-fetching asks the inner retriever for 2k, then 4x more, until
``k`` readable results are found, the source runs dry or ``MAX_FETCH`` is
reached.

Every answer of a wrapper is written to the audit log (:func:`audit_served`)
as a ``wrapped-search``, like ``rag.search``'s own: what was served (external ids),
to whom, in which tenant, under which policy version, and from which retriever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
MAX_FETCH = 1024


def readable(rag: Any, metas: Sequence[Mapping[str, Any]], snap: Any, tenant: str, *, id_key: str, tenant_key: str | None, row_key: str) -> list[bool]:
    """For each metadata mapping: may the snapshot's user read what it names?"""
    names = sorted({str(m.get(id_key)) for m in metas if isinstance(m.get(id_key), str)})
    found = rag.catalog.rows.documents(tenant, names) if names else {}
    out = []
    for meta in metas:
        if tenant_key is not None and meta.get(tenant_key) != tenant:
            out.append(False)  # another tenant's result, or one that does not say
            continue
        recs = found.get(meta.get(id_key)) or []
        exact = [r for r in recs if r.external_id == meta.get(id_key)]
        recs = exact or recs
        ok = bool(recs) and all(r.row_id in snap.visible for r in recs)
        if ok and row_key in meta and exact and meta[row_key] != exact[0].row_id:
            ok = False  # same name, another row: not the row the catalog knows
        out.append(ok)
    return out


def via(agent: object) -> dict[str, Any]:
    """Keyword arguments of a library call made through ``agent`` (none for the user alone)."""
    return {"agent": agent} if agent else {}


def audit_served(rag: Any, wrapper: str, inner: Any, user: str, tenant: str, snap: Any, query: str, served: Sequence[Mapping[str, Any]], *, id_key: str) -> None:
    """Record one answer of a ``permissioned()`` wrapper (``served``: the metadata of what it returned)."""
    detail = {
        "wrapper": wrapper,
        "retriever": type(inner).__name__,
        "queries": [query[:200]],
        "external_ids": [str(m.get(id_key)) for m in served],
    }
    rag.audit.record("wrapped-search", user, tenant, snap.policy_version, detail, agents=getattr(snap, "agents", ()))


def overfetch(fetch: Callable[[int], list[T]], keep: Callable[[list[T]], list[T]], k: int, *, adjustable: bool) -> list[T]:
    """The first ``k`` kept results, fetching more while too few pass (``adjustable``: the inner retriever takes a size)."""
    n = 2 * k
    while True:
        got = fetch(n)
        ok = keep(got)
        if len(ok) >= k or len(got) < n or n >= MAX_FETCH or not adjustable:
            return ok[:k]
        n = min(MAX_FETCH, n * 4)
