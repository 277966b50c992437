"""Changing a document's attributes or ACL without re-encoding it.

A row record never changes while its ID exists (catalog/rows.py: caches in
every process rely on it), so a metadata change is an atomic replace like any
other (ingest/ingest.py): the document's rows are re-inserted under new IDs
with their *stored* texts and vectors read back from Milvus — no encoder
call — and one catalog transaction publishes them and retires the old rows.
Readers see the old metadata or the new, never neither; the ACL takes effect
in every process at its next read. A catalog-only store just re-publishes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace as dc_replace
from typing import Any

import numpy as np

from ..catalog import RowRecord, RowSpec
from ..domain.acl import parse_acl
from ..domain.names import check_attrs, check_external_id, check_tenant
from ..errors import BackendError, CatalogError, ConcurrentChangeError, UnknownRowError
from .ingest import Ingester

KEEP: Any = object()  # "leave as it is"
RETRIES = 5  # reads of a document another writer keeps rewriting meanwhile


CHUNK_ATTRS = ("page", "heading")  # set per chunk by chunking: kept unless ``attrs`` names them


def update_metadata(ingester: Ingester, external_id: str, *, tenant: str, attrs: Mapping[str, Any] | None | Any = KEEP, acl: Any = KEEP) -> list[int]:
    """Replace the document's attributes (``attrs``; each chunk's own ``page`` and
    ``heading`` are kept unless ``attrs`` gives them) and/or its ACL (``acl``;
    None removes it). Returns the new row IDs."""
    ext = check_external_id("external id", external_id)
    tenant = check_tenant(tenant)
    for attempt in range(RETRIES):
        try:
            return _update(ingester, ext, tenant, attrs, acl)
        except ConcurrentChangeError:  # another writer (a regroup, an ingest) rewrote it meanwhile: read it again
            if attempt == RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _update(ingester: Ingester, ext: str, tenant: str, attrs: Any, acl: Any) -> list[int]:
    catalog = ingester.catalog
    rows = catalog.rows.document(ext, tenant)
    if not rows:
        raise UnknownRowError(f"no document {ext!r} in tenant {tenant!r}")
    chunked = rows[0].external_id != ext
    derived = [r.external_id for r in rows if r.derived_from]
    if derived:
        what = f"{ext!r} is derived content" if ext in derived or chunked else f"{ext!r} is the parent of derived rows ({', '.join(map(repr, derived[:3]))}), which a metadata update would rewrite"
        raise CatalogError(f"{what}: a derived row's visibility follows its sources; it has no metadata of its own to update")
    new_attrs = None if attrs is KEEP else check_attrs(attrs)
    new_acl = rows[0].acl if acl is KEEP else parse_acl(acl, f"acl of {ext!r}")
    specs = []
    for r in rows:
        if chunked or r.external_id == ext:  # the document's own rows: itself, or its chunks
            row_attrs = r.attrs if new_attrs is None else {**{k: v for k, v in r.attrs.items() if k in CHUNK_ATTRS}, **new_attrs}
            specs.append(rewrite_spec(ext, r, row_attrs, new_acl))
        else:  # a row whose parent the document is: rewritten as it is (the replace retires it with its parent)
            specs.append(rewrite_spec(ext, r))
    if all(s.attrs == r.attrs and s.acl == r.acl for s, r in zip(specs, rows)):
        return [r.row_id for r in rows]
    return republish(ingester, tenant, rows, specs)


def rewrite_spec(doc: str, r: RowRecord, attrs: Mapping[str, Any] | None = None, acl: Any = KEEP) -> RowSpec:
    """Row ``r`` of document ``doc`` to be written again (a chunk or a child
    names its document, so the replace retires exactly the rows read), with
    ``attrs`` and ``acl`` in place of its own where given."""
    return RowSpec(r.external_id, r.tenant, dict(r.attrs if attrs is None else attrs), r.parent, (), chunk_of=None if r.external_id == doc else doc, acl=r.acl if acl is KEEP else acl)


def republish(ingester: Ingester, tenant: str, rows: Sequence[RowRecord], specs: Sequence[RowSpec], *, flush: bool = True, later: Callable[[Sequence[RowRecord]], None] | None = None) -> list[int]:
    """Re-insert ``rows`` (whole documents) as ``specs`` under new IDs with their
    stored texts and vectors, retiring them in the publishing transaction — only
    if they are still exactly the documents' live rows then (else
    ConcurrentChangeError, nothing written: a re-ingest or another update
    meanwhile is never overwritten with what was read before it). ``flush``:
    flush Milvus Lite afterwards (a caller writing many batches flushes once);
    ``later``: given the retired rows instead of dropping them from Milvus at once."""
    catalog = ingester.catalog
    hint = catalog.allocator.size_hint(specs)
    expect = frozenset(r.row_id for r in rows)
    binding = ingester.binding
    if binding is None:
        return ingester._batch(list(specs), [""] * len(specs), hint, True, set(), expect=expect)
    backend = binding.backend()
    no = catalog.tenants.number(tenant)
    stored = backend.stored(no, [r.row_id for r in rows]) if no is not None else {}
    missing = [r.external_id for r in rows if r.row_id not in stored]
    if missing:
        try:
            catalog.rows.live([r.row_id for r in rows if r.row_id not in stored])
        except UnknownRowError:  # retired since they were read: another writer replaced or deleted the document
            raise ConcurrentChangeError("another writer changed these documents meanwhile; nothing was written (read them again and retry)") from None
        raise BackendError(f"Milvus lacks stored rows of {', '.join(sorted({r.document for r in rows if r.row_id not in stored})[:3])!r} ({', '.join(missing[:3])}); run `permrag reconcile --full`")
    texts = [stored[r.row_id]["text"] for r in rows]
    vectors = np.asarray([stored[r.row_id]["dense"] for r in rows], dtype=np.float32)
    touched: set[int] = set()
    ids = ingester._batch([dc_replace(s) for s in specs], texts, hint, True, touched, vectors=vectors, expect=expect, later=later)
    if flush and backend.kind == "lite":
        for t in sorted(touched):
            backend.flush(t)  # as after an ingest (ingest.py): BM25 statistics from sealed segments
    return ids
