"""Generated content fed back into the store (an answer, a summary).

A generated row is *derived* from its sources: it is visible exactly to
callers who may read every source (the compiler enforces it), and its author
may only cite sources they can read. A source the author may not read is
refused exactly as one that does not exist (:class:`NotReadableError`), so
the call cannot be used to probe for hidden documents. A source that is a
document of several chunks stands for all of its chunks, and a chunk for
its document.

Lineage is kept by document identity (catalog/rows.py): the row stays
readable while every source document exists and the caller may read all of
it — a metadata or ACL update, a replace or a regroup of a source keeps it,
and its visibility follows the source's new ACL at once; deleting a source
hides it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..access import Access
from ..catalog import RowRecord, chunk_no
from ..domain.names import as_list
from ..errors import ArgumentError
from .ingest import Ingester


def add_generated(
    ingester: Ingester,
    access: Access,
    text: str,
    *,
    sources: Sequence[str],
    user: str,
    tenant: str,
    external_id: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> list[int]:
    """Store generated ``text`` derived from ``sources``; returns its row IDs."""
    names = as_list(sources, "sources")
    if not names:
        raise ArgumentError("a generated row needs at least one source")
    snap = access.snapshot(user, tenant)
    derived: list[str] = []
    for ext in names:
        rec = access.readable(user, ext, tenant, snapshot=snap)
        if isinstance(rec, RowRecord) and rec.parent and rec.external_id == f"{rec.parent}#{chunk_no(rec.external_id)}":
            derived.append(rec.parent)  # a chunk stands for its document: chunks come and go when it is replaced
        elif rec is not None:
            derived.append(rec.external_id)
    doc = {
        "external_id": external_id or f"gen-{uuid.uuid4().hex[:12]}",
        "text": text,
        "tenant": tenant,
        "attrs": dict(attrs or {}),
        "derived_from": list(dict.fromkeys(derived)),
    }
    return ingester.add_documents([doc])
