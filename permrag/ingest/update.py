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

from dataclasses import replace as dc_replace
from typing import Any, Mapping

import numpy as np

from ..acl import parse_acl
from ..catalog import RowSpec
from ..errors import BackendError, CatalogError, UnknownRowError
from ..names import check_attrs, check_external_id, check_tenant
from .ingest import Ingester

KEEP: Any = object()  # "leave as it is"


CHUNK_ATTRS = ("page", "heading")  # set per chunk by chunking: kept unless ``attrs`` names them


def update_metadata(ingester: Ingester, external_id: str, *, tenant: str, attrs: Mapping[str, Any] | None | Any = KEEP, acl: Any = KEEP) -> list[int]:
    """Replace the document's attributes (``attrs``; each chunk's own ``page`` and
    ``heading`` are kept unless ``attrs`` gives them) and/or its ACL (``acl``;
    None removes it). Returns the new row IDs."""
    ext = check_external_id("external id", external_id)
    tenant = check_tenant(tenant)
    catalog = ingester.catalog
    rows = catalog.rows.document(ext, tenant)
    if not rows:
        raise UnknownRowError(f"no document {ext!r} in tenant {tenant!r}")
    chunked = rows[0].external_id != ext
    if not chunked:
        rows = rows[:1]
    if any(r.derived_from for r in rows):
        raise CatalogError(f"{ext!r} is derived content: its visibility follows its sources; it has no metadata of its own to update")
    new_attrs = None if attrs is KEEP else check_attrs(attrs)
    new_acl = rows[0].acl if acl is KEEP else parse_acl(acl, f"acl of {ext!r}")
    specs = []
    for r in rows:
        row_attrs = r.attrs if new_attrs is None else {**{k: v for k, v in r.attrs.items() if k in CHUNK_ATTRS}, **new_attrs}
        specs.append(RowSpec(r.external_id, tenant, row_attrs, r.parent, (), chunk_of=ext if chunked else None, acl=new_acl))
    if all(s.attrs == r.attrs and s.acl == r.acl for s, r in zip(specs, rows)):
        return [r.row_id for r in rows]
    hint = catalog.allocator.size_hint(specs)
    binding = ingester.binding
    if binding is None:
        return ingester._batch(specs, [""] * len(specs), hint, True, set())
    backend = binding.backend()
    no = catalog.tenants.number(tenant)
    stored = backend.stored(no, [r.row_id for r in rows]) if no is not None else {}
    missing = [r.external_id for r in rows if r.row_id not in stored]
    if missing:
        raise BackendError(f"Milvus lacks stored rows of {ext!r} ({', '.join(missing[:3])}); run `permrag reconcile --full`")
    texts = [stored[r.row_id]["text"] for r in rows]
    vectors = np.asarray([stored[r.row_id]["dense"] for r in rows], dtype=np.float32)
    touched: set[int] = set()
    ids = ingester._batch([dc_replace(s) for s in specs], texts, hint, True, touched, vectors=vectors)
    if backend.kind == "lite":
        for t in sorted(touched):
            backend.flush(t)  # as after an ingest (ingest.py): BM25 statistics from sealed segments
    return ids
