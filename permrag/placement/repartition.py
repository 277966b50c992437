"""Rows moved to their co-visibility partition under the policy of now
(``rag.repartition()``, ``permrag repartition``; ``regroup`` before 0.3).

Co-visibility placement (placement/covis.py) puts a new class in the partition
of its signature under the policy of the moment, and a row never moves by
itself. So classes placed before a policy change — or before any role
existed, when every class has the empty signature and shares one group —
stay where they were: exact, but their readers' searches name partly visible
groups with a residual filter instead of whole groups. A repartition re-places
every class of a tenant under the current policy:

* In one catalog transaction holding the allocation lock (no class is placed
  meanwhile, in any process): the tenant's live classes and their signatures
  now; a new signature → group map, largest signature first (each keeps the
  group that holds most of its rows if no larger one took it, else a free
  group, else the nearest signature's), stored in place of the old one; the
  class records (key → class ID) whose ID is in the wrong group are dropped,
  so the next row of such a class is placed anew.
* Then the rows of every class outside its group are rewritten, whole
  documents at a time, as a metadata update rewrites them (ingest/update.py):
  stored texts and vectors re-inserted under new IDs in the right group, the
  old rows retired in the publishing transaction — only if they are still
  the documents' live rows then. A document another writer changed meanwhile
  is left as it is (it was just rewritten under the current placement
  anyway); a run cut short leaves every document either moved or not, and
  running it again finishes the job (a second run over a settled store moves
  nothing).
* Not moved: documents whose rows are the sources of live derived rows (a
  derived row names its sources' row IDs; new IDs would hide it) and derived
  rows themselves (they have no class of their own to place).

Placement never decides visibility, so a repartition changes search speed only:
every search before, during and after it is exact (tests/integration/test_repartition.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select

from ..catalog import RowRecord
from ..catalog.rows import record
from ..domain.names import check_tenant
from ..errors import ArgumentError, ConcurrentChangeError, ConfigError
from ..ingest.ingest import Ingester
from ..ingest.update import republish, rewrite_spec
from ..storage import db

BATCH_ROWS = 5000  # as an ingest batch


@dataclass(frozen=True)
class RepartitionReport:
    tenant: str
    groups: int  # partitions of the tenant's collection (0: flat, nothing to do)
    classes: int  # live classes looked at
    signatures: int  # distinct signatures under the current policy
    misplaced_rows: int  # rows outside their signature's group when the run began
    moved_rows: int
    moved_documents: int
    kept_documents: int  # sources of derived rows: left where they are
    changed_documents: int  # changed by another writer during the run: left as they are
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if not self.groups:
            return f"tenant {self.tenant!r}: its collection has one partition (flat); nothing to repartition"
        head = f"tenant {self.tenant!r}: {self.classes} classes, {self.signatures} signatures over {self.groups} partitions; {self.misplaced_rows} rows outside their partition"
        if self.dry_run:
            return head + " (dry run: nothing moved)"
        tail = f"; moved {self.moved_rows} rows of {self.moved_documents} documents"
        if self.kept_documents:
            tail += f"; kept {self.kept_documents} documents that derived rows name"
        if self.changed_documents:
            tail += f"; {self.changed_documents} documents changed meanwhile (left as they are; run again)"
        return head + tail


RegroupReport = RepartitionReport  # its name before 0.3 (kept for one release)


Hook = Callable[[], Any]
Later = Callable[[Sequence[RowRecord]], None]


def repartition(
    ingester: Ingester, placement: Any, tenant: str, *, dry_run: bool = False, batch_rows: int = BATCH_ROWS, before: Hook | None = None, tick: Hook | None = None, later: Later | None = None
) -> RepartitionReport:
    """Move ``tenant``'s rows to their co-visibility group (see the module
    docstring); ``before``: called once the arguments are checked (the
    store's sync, so the policy of now is the stored one); ``tick``: called
    before each batch is written (the placement keeper stops or renews its lease there); ``later``:
    given each batch's retired rows instead of dropping them from Milvus at once (the keeper drops
    them a while later, so that searches whose snapshot predates a batch still find its rows)."""
    tenant = check_tenant(tenant, ArgumentError)
    if placement is None:
        raise ConfigError(
            "repartition places rows by co-visibility: this store does not; open it once with "
            "PermRAG.open(..., partitions=N, partition_by='visibility') (or 'visibility+acl'), which every later process, the CLI too, takes over"
        )
    catalog = ingester.catalog
    no = catalog.tenants.number(tenant)
    binding = ingester.binding
    grouping = binding.backend().grouping(no) if binding is not None and no is not None else None
    if grouping is None or binding is None or no is None:
        return RepartitionReport(tenant, 0, 0, 0, 0, 0, 0, 0, 0, dry_run)
    if grouping.groups != placement.groups:
        raise ConfigError(f"tenant {tenant!r}'s collection has {grouping.groups} partitions, the store was opened with partitions={placement.groups}")
    if before is not None:
        before()
    with db.transaction(catalog.engine, "regrouping") as conn:
        db.bump(conn, "next_row_id", 0)  # the allocation lock: no class is placed meanwhile (catalog/journal.py)
        classes = _live_classes(conn, tenant)
        signed = []
        for cid, n, sample in classes:
            tokens = placement.signer(tenant, sample.attrs, sample.acl if placement.acls else None)
            if tokens is None:
                raise ConcurrentChangeError("the policy changed while it was read; run the regroup again")
            signed.append((cid, tuple(tokens), n, catalog.allocator.class_of(sample.attrs, acl=sample.acl)))
        target = placement.replan(conn, tenant, [(cid, toks, n) for cid, toks, n, _ in signed], write=not dry_run)
        misplaced = sorted(((n, cid) for cid, toks, n, _ in signed if cid % placement.groups != target[toks]), reverse=True)
        if not dry_run:
            home = {key: target[toks] for _, toks, _, key in signed}
            catalog.allocator.forget(conn, tenant, lambda key, cid: key not in home or cid % placement.groups == home[key])
    counts = (len(classes), len(set(target)), sum(n for n, _ in misplaced))
    if dry_run or not misplaced:
        return RepartitionReport(tenant, placement.groups, *counts, 0, 0, 0, 0, dry_run)
    mover = _Mover(ingester, tenant, batch_rows, tick, later)
    backend = binding.backend()
    try:
        mover.move({cid for _, cid in misplaced})
    except BaseException:
        if backend.kind == "lite":
            with contextlib.suppress(Exception):  # what was moved is published; the failure is what the caller sees
                backend.flush(no)
        raise
    if backend.kind == "lite":
        backend.flush(no)  # once, at the end (BM25 statistics from sealed segments, as after an ingest)
    return RepartitionReport(tenant, placement.groups, *counts, mover.moved_rows, mover.moved_docs, len(mover.kept), mover.changed)


def _live_classes(conn: Any, tenant: str) -> list[tuple[int, int, RowRecord]]:
    """(class ID, live rows, a sample row) of the tenant's classes, derived rows apart."""
    t = db.rows.c
    live = (t.tenant == tenant) & (t.state == "live") & t.derived_from.is_(None)
    counts = conn.execute(select(t.vclass, func.count(), func.min(t.row_id)).where(live).group_by(t.vclass)).all()
    samples: dict[int, RowRecord] = {}
    for part in db.chunks(sorted(int(r) for _, _, r in counts)):
        for row in conn.execute(select(db.rows).where(t.row_id.in_(list(part)))):
            samples[int(row.row_id)] = record(row)
    return [(int(c), int(n), samples[int(r)]) for c, n, r in counts]


class _Mover:
    """Rewrites whole documents in batches of about ``batch_rows`` rows."""

    def __init__(self, ingester: Ingester, tenant: str, batch_rows: int, tick: Hook | None = None, later: Later | None = None) -> None:
        self.ingester = ingester
        self.tick = tick
        self.later = later
        self.tenant = tenant
        self.batch_rows = batch_rows
        self.catalog = ingester.catalog
        self.sources = self._sources()
        self.kept: set[str] = set()
        self.moved_rows = self.moved_docs = self.changed = 0
        self.pending: dict[str, list[RowRecord]] = {}
        self.pending_rows = 0

    def _sources(self) -> set[int]:
        """Row IDs that live derived rows of older stores name as sources: the
        index reads them by name once opened, but a process of an older
        release sharing the store would not (lineage by name follows a move)."""
        t = db.rows.c
        out: set[int] = set()
        with db.reading(self.catalog.engine, "reading derived rows") as conn:
            for (srcs,) in conn.execute(select(t.derived_from).where(t.tenant == self.tenant, t.state == "live", t.derived_from.is_not(None))):
                out.update(int(s) for s in srcs or () if not isinstance(s, str))
        return out

    def move(self, misplaced: set[int]) -> None:
        """Rewrite every document with a live row in one of the ``misplaced`` classes."""
        t = db.rows.c
        with db.reading(self.catalog.engine, "reading rows") as conn:
            found = conn.execute(select(t.external_id, t.parent, t.vclass).where(t.tenant == self.tenant, t.state == "live"))
            docs = sorted({parent or ext for ext, parent, cid in found if int(cid) in misplaced})
        for lo in range(0, len(docs), 1000):
            for doc, rows in self.catalog.rows.documents(self.tenant, docs[lo : lo + 1000]).items():
                if not rows:
                    continue  # deleted meanwhile
                if any(r.derived_from or r.row_id in self.sources for r in rows):
                    self.kept.add(doc)
                    continue
                self.pending[doc] = rows
                self.pending_rows += len(rows)
                if self.pending_rows >= self.batch_rows:
                    self.flush()
        self.flush()

    def flush(self) -> None:
        batch, self.pending, self.pending_rows = self.pending, {}, 0
        if not batch:
            return
        if self.tick is not None:
            self.tick()
        try:
            self._write(batch)
        except ConcurrentChangeError:
            for doc, rows in batch.items():  # one document at a time: only the changed ones stay behind
                try:
                    self._write({doc: rows})
                except ConcurrentChangeError:
                    self.changed += 1

    def _write(self, batch: dict[str, list[RowRecord]]) -> None:
        rows = [r for recs in batch.values() for r in recs]
        republish(self.ingester, self.tenant, rows, [rewrite_spec(doc, r) for doc, recs in batch.items() for r in recs], flush=False, later=self.later)
        self.moved_rows += len(rows)
        self.moved_docs += len(batch)
