"""Bring catalog and Milvus back in step after a crash.

* Batches whose writer died between prepare and publish are deleted from
  Milvus, then from the catalog.
* Rows retired but not yet purged are deleted from Milvus, then purged.
* ``full``: every row ID in each of the store's tenant collections is
  compared with the catalog. Milvus is listed *first*, the catalog read
  after: a row reaches Milvus only after its pending row committed in the
  catalog (journal.py), and IDs are never reused, so an ID that the later
  catalog read does not know (live, pending or retired) cannot belong to a
  batch being published — it is an orphan, and only orphans are deleted.
  Live rows that Milvus lacks are reported (they need ingesting again).

It runs only against the store's own collections (the binding checked that
the root belongs to this catalog), so it never deletes another store's rows.
A batch whose writer still runs is left alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from ..backends import Binding
from ..catalog import Catalog
from ..domain.repair import RepairReport

log = logging.getLogger(__name__)


def reconcile(catalog: Catalog, binding: Binding | None, *, full: bool = False, stale_after: float = 3600.0) -> RepairReport:
    report = RepairReport(full=full and binding is not None)
    dead = catalog.journal.dead_ingests(stale_after)
    retired = catalog.rows.by_state("deleted")
    backend = binding.backend() if binding is not None and (dead or retired or full) else None
    touched: set[int] = set()
    for ingest_id, ids in dead:
        if backend is not None:
            for tenant, part in _by_tenant(catalog, ids).items():
                no = catalog.tenants.number(tenant)
                if no is not None:
                    backend.delete(no, part)
                    touched.add(no)
        catalog.journal.drop_pending(ids, ingest_id)
        report.pending_removed += len(ids)
    if retired:
        if backend is not None:
            groups: dict[str, list[int]] = defaultdict(list)
            for r in retired:
                groups[r.tenant].append(r.row_id)
            for tenant, part in groups.items():
                no = catalog.tenants.number(tenant)
                if no is not None:
                    backend.delete(no, part)
                    touched.add(no)
        catalog.journal.purge([r.row_id for r in retired])
        report.deleted_purged = len(retired)
    if full and backend is not None:
        live_before = catalog.rows.ids(("live",))
        numbers = catalog.tenants.all()
        listed = {no: backend.all_ids(no) for no in numbers.values()}  # Milvus first …
        known = catalog.rows.ids(("live", "pending", "deleted"))  # … then the catalog
        live_after = catalog.rows.ids(("live",))
        for no, have in listed.items():
            orphans = sorted(i for i in have if i not in known)
            if orphans:
                backend.delete(no, orphans)
                touched.add(no)
            report.orphans_removed += len(orphans)
        in_milvus = set().union(*listed.values()) if listed else set()
        report.missing = sorted(i for i in (live_before & live_after) if i not in in_milvus)
    for no in touched:
        backend.flush(no)  # type: ignore[union-attr]
    if report.repaired or report.missing:
        log.warning("reconcile: %s", report.describe())
    return report


def _by_tenant(catalog: Catalog, ids: list[int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for rid, rec in catalog.rows.records(ids).items():
        out[rec.tenant].append(rid)
    return out
