"""What every answer states about itself: its consistency token and whether it
is complete (the exact top-k of what the caller may read), and if fewer than
k rows came back, why.

* ``deny_all`` — the caller may read nothing in the tenant;
* ``fewer_visible`` — the caller may read fewer than k rows, and all came back;
* ``fewer_matches`` — a keyword search: fewer rows than k contain the query's
  terms (a row without them has no keyword score, so it is not ranked);
* ``merged_parents`` — retrieval replaced chunks by their whole document;
* ``missing_vectors`` — the catalog holds visible rows that the vector store
  did not return (an ingest still publishing, a collection not reconciled):
  the only reason with ``complete=False``.

Never silently truncated: ``complete`` is False exactly when a visible row may
be missing from the top k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..access import Snapshot
from ..access.consistency import make_token
from ..domain.results import Hit, Hits


def visible_rows(snap: Snapshot) -> int:
    return snap.visible.intersection_cardinality(snap.tenant_rows)


def stamp(engine: Any, hits: Sequence[Hit], snap: Snapshot, k: int | None, mode: str, *, merged: bool = False, excluded: int = 0) -> Hits:
    """``hits`` as :class:`Hits` carrying the snapshot's versions, token and completeness (``k`` None: not a top-k read;
    ``excluded``: visible rows the read leaves out on purpose, a "more like this" seed)."""
    n = visible_rows(snap)
    complete, reason = True, None
    if k is not None and len(hits) < k:
        want = min(k, n - excluded)
        if n == 0:
            reason = "deny_all"
        elif merged:
            reason = "merged_parents"
        elif len(hits) >= want:
            reason = "fewer_visible"
        elif mode == "keyword":
            reason = "fewer_matches"
        else:
            complete, reason = False, "missing_vectors"
    return Hits(
        hits,
        snap.policy_version,
        mode,
        catalog_version=snap.catalog_version,
        consistency_token=make_token(engine, snap.policy_version, snap.catalog_version),
        visible_rows=n,
        complete=complete,
        reason=reason,
    )
