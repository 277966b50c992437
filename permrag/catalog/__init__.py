"""The row catalog: records, the inverted index, ID allocation, tenants and
the two-phase write journal — one module each; :class:`Catalog` wires them
and keeps this process's copy of the index at the stored catalog version.

A publish or delete bumps the catalog version first in its transaction
(journal.py). If the version it took is this copy's plus one, the copy takes
over exactly what was written; otherwise another process published in
between and the copy reloads from the database, so no process can miss
another's rows (and so never compile a deny bitmap without them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from pyroaring import BitMap
from sqlalchemy import Engine

from ..errors import UnknownRowError
from ..storage import db
from .allocation import Allocator
from .bitmaps import as_array, n_runs, size_bytes
from .index import AttrIndex, TenantIndex
from .journal import Change, Journal, PendingBatch, Written
from .planstats import PlannerStats
from .rows import DEFAULT_TENANT, DocumentRecord, RowRecord, Rows, RowSpec, chunk_no, row_spec
from .tenants import TenantRegistry

# (changes, tenants): the publishes' changes for incremental recompiles, and
# the tenants whose rows were retired (their caches are dropped); (None, None):
# everything may have changed (a reload).
Listener = Callable[["list[Change] | None", "set[str] | None"], None]


class Catalog:
    """One store's rows; ``rag.catalog``."""

    def __init__(self, engine: Engine, lock: threading.RLock | None = None, *, allocation: str = "contiguous", policy_attrs: Iterable[str] | None = None) -> None:
        self.engine = engine
        self.lock = lock or threading.RLock()
        self.rows = Rows(engine)
        self.index = AttrIndex()
        self.allocator = Allocator(allocation, policy_attrs)
        self.journal = Journal(engine, self.index, self.allocator)
        self.tenants = TenantRegistry(engine)
        self.stats = PlannerStats(engine)  # planner statistics after bulk writes (PostgreSQL)
        self.version = 0
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def load(self) -> None:
        """(Re)load the in-memory index from the database."""
        with self.lock:
            for _ in range(10):
                with db.reading(self.engine, "reading the catalog") as conn:
                    version = db.read_counter(conn, "catalog_version")
                    self.index.load(conn)
                    if db.read_counter(conn, "catalog_version") == version:
                        break
            self.version = version
            for listener in self._listeners:
                listener(None, None)

    def rebuild_index(self) -> None:
        """Recompute the persisted index from the rows (repair tool)."""
        with self.lock:
            with db.transaction(self.engine, "rebuilding the index") as conn:
                db.bump(conn, "catalog_version")
                self.index.rebuild(conn)
            self.load()

    # ------------------------------------------------------------------ reading
    def tenant(self, tenant: str) -> TenantIndex:
        return self.index.tenant(tenant)

    def tenant_rows(self, tenant: str) -> BitMap:
        return BitMap(self.index.tenant(tenant).rows)

    def has_tenant(self, tenant: str) -> bool:
        return self.index.has_tenant(tenant)

    def live_ids(self) -> BitMap:
        return self.index.live_ids()

    def by_external_id(self, external_id: str, tenant: str = DEFAULT_TENANT) -> RowRecord:
        """The live row called ``external_id`` (chunks have ids of their own)."""
        rec = self.rows.by_external_id(external_id, tenant)
        if rec is None:
            raise UnknownRowError(f"no row {external_id!r} in tenant {tenant!r}")
        return rec

    def by_state(self, state: str) -> list[RowRecord]:
        return self.rows.by_state(state)

    # ------------------------------------------------------------------ writing
    def prepare(self, specs: Sequence[RowSpec], hint: dict[tuple[str, str], int] | None = None, *, replace: bool = False) -> PendingBatch:
        for tenant in {s.tenant for s in specs}:
            self.tenants.ensure(tenant)
        return self.journal.prepare(specs, hint if hint is not None else {}, replace=replace)

    def publish(self, batch: PendingBatch) -> Written:
        with self.lock:
            written = self._take(self.journal.publish(batch))
        self.stats.changed(len(written.added) + len(written.retired))  # committed and taken over: outside the lock
        return written

    def retire(self, tenant: str, external_ids: Sequence[str]) -> Written:
        with self.lock:
            written = self._take(self.journal.retire(tenant, external_ids))
        self.stats.changed(len(written.retired))
        return written

    def add(self, specs: Sequence[RowSpec], hint: dict[tuple[str, str], int] | None = None) -> Written:
        """Prepare and publish in one go (a catalog without a vector store)."""
        batch = self.prepare(specs, hint)
        try:
            return self.publish(batch)
        except BaseException:
            self.journal.abort(batch)
            raise

    def _take(self, written: Written) -> Written:
        """Bring the in-memory index to the version ``written`` committed."""
        if written.version != self.version + 1:
            self.load()  # another process wrote in between: take it all
            return written
        derived_added: dict[str, list[tuple[int, tuple[str | int, ...]]]] = {}
        for r in written.added:
            if r.derived_from:
                derived_added.setdefault(r.tenant, []).append((r.row_id, r.derived_from))
        derived_removed: dict[str, list[int]] = {}
        for r in written.retired:
            if r.derived_from:
                derived_removed.setdefault(r.tenant, []).append(r.row_id)
        retired = {r.tenant for r in written.retired}
        for tenant in set(written.bitmaps) | set(derived_added) | set(derived_removed) | set(written.sources):
            w = written
            if self.index.apply(tenant, w.bitmaps.get(tenant, {}), derived_added.get(tenant, []), derived_removed.get(tenant, []), w.sources.get(tenant)):
                retired.add(tenant)  # a source document's rows changed: its derived rows' readers are recomputed
        self.version = written.version
        for listener in self._listeners:
            listener(written.changes(), retired)
        return written


__all__ = [
    "DEFAULT_TENANT",
    "Catalog",
    "Change",
    "DocumentRecord",
    "PendingBatch",
    "RowRecord",
    "RowSpec",
    "TenantIndex",
    "Written",
    "as_array",
    "chunk_no",
    "n_runs",
    "row_spec",
    "size_bytes",
]
