"""Two-phase writes: rows enter and leave the catalog in steps that a second
store (Milvus) can be written between, without ever exposing half-written
rows, and that a crash at any point leaves repairable.

Ingest:

1. :meth:`Journal.prepare` validates a batch, allocates row IDs and inserts
   the rows as ``pending``, with a record of their writer (host, PID, start
   time). Pending rows are in no bitmap: nobody can see them. Milvus is
   written only after this commits, so every row in Milvus is known to the
   catalog (reconcile relies on it).
2. :meth:`Journal.publish` makes them ``live`` and adds them to the inverted
   index — and, for a replacement, retires the rows of the documents it
   replaces — in one transaction with a bump of the catalog version: the old
   version of a document stays visible until the new one is, then
   disappears in the same step. :meth:`Journal.abort` deletes them instead.

Delete: :meth:`Journal.retire` marks rows ``deleted`` and takes them out of
the index (invisible at once), then the caller deletes them from Milvus, then
:meth:`Journal.purge` removes them. A crash between leaves ``deleted`` rows
that reconcile finishes.

The version bump is each transaction's first statement (db.py), so publishes
and deletes of all processes queue there, and every one of them reads the
latest persisted bitmaps under that lock.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroaring import BitMap, FrozenBitMap
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import IntegrityError

from ..domain.repair import owner, writer_alive
from ..errors import (
    CatalogError,
    ConcurrentChangeError,
    DuplicateExternalIdError,
    UnknownRowError,
)
from ..storage import db, direct
from .allocation import Allocator
from .index import AttrIndex
from .rows import ACL_FIELD, RowRecord, RowSpec, document_rows, named_rows, one_of, record

INSERT_CHUNK = 5000
ROW_COLUMNS = ("row_id", "tenant", "external_id", "live_key", "attrs", "parent", "derived_from", "state", "vclass", "ingest_id")


@dataclass(frozen=True)
class Change:
    """What one publish touched in one tenant, for incremental recompiles."""

    tenant: str
    row_ids: BitMap
    attrs: frozenset[str]
    docs: frozenset[str]  # external ids and parents of the new rows
    derived: tuple[int, ...]


@dataclass
class PendingBatch:
    """Rows inserted as pending by :meth:`Journal.prepare`."""

    records: list[RowRecord]
    ingest_id: int | None = None
    replaces: dict[str, set[str]] = field(default_factory=dict)  # tenant → documents this batch replaces
    # The row IDs the replace must retire, read before it was prepared (a metadata
    # update or a regroup rewrites what it read): if the documents' live rows are
    # not exactly these at publish, another writer changed them and nothing is published.
    expect: frozenset[int] | None = None

    @property
    def row_ids(self) -> list[int]:
        return [r.row_id for r in self.records]


@dataclass
class Written:
    """A committed publish or retire: what the in-memory index must take over."""

    version: int
    bitmaps: dict[str, dict[tuple[str, str], FrozenBitMap]]  # tenant → new persisted bitmaps
    added: list[RowRecord] = field(default_factory=list)
    retired: list[RowRecord] = field(default_factory=list)
    sources: dict[str, dict[str, FrozenBitMap]] = field(default_factory=dict)  # tenant → source document → its live rows now

    def changes(self) -> list[Change]:
        by_tenant: dict[str, list[RowRecord]] = defaultdict(list)
        for r in self.added:
            by_tenant[r.tenant].append(r)
        out = []
        for tenant, recs in by_tenant.items():
            attrs: set[str] = set()
            docs: set[str] = set()
            acls: set[int] = set()  # id() of the ACLs seen (a document's chunks share one)
            for r in recs:
                attrs.update(r.attrs)  # the attribute names
                if r.acl is not None and id(r.acl) not in acls:
                    acls.add(id(r.acl))
                    attrs.update(a for a, _ in r.acl.index_keys())
                docs.add(r.external_id)
                if r.parent:
                    docs.add(r.parent)
            derived = tuple(r.row_id for r in recs if r.derived_from)
            out.append(Change(tenant, BitMap([r.row_id for r in recs]), frozenset(attrs), frozenset(docs), derived))
        return out


def documents(specs: Sequence[RowSpec]) -> dict[str, set[str]]:
    """tenant → the ingested documents ``specs`` stand for (a chunk's document, else the row itself)."""
    out: dict[str, set[str]] = defaultdict(set)
    for s in specs:
        out[s.tenant].add(s.document)
    return out


class Journal:
    """The catalog's writes: prepare / publish / abort, retire / purge, crash records."""

    def __init__(self, engine: Engine, index: AttrIndex, allocator: Allocator) -> None:
        self.engine = engine
        self.index = index
        self.allocator = allocator

    # ------------------------------------------------------------------ ingest
    def prepare(self, specs: Sequence[RowSpec], hint: dict[tuple[str, str], int], *, replace: bool = False) -> PendingBatch:
        if not specs:
            return PendingBatch([])
        seen: set[tuple[str, str]] = set()
        for s in specs:
            if (s.tenant, s.external_id) in seen:
                raise DuplicateExternalIdError(f"external id {s.external_id!r} appears twice in tenant {s.tenant!r}")
            seen.add((s.tenant, s.external_id))
        docs = documents(specs)
        host, pid, start = owner()
        try:
            with db.transaction(self.engine, "preparing an ingest") as conn:
                # One allocation at a time across processes: take the row-ID
                # counter's lock first (a write as the first statement also
                # keeps SQLite from failing a read-then-write transaction).
                # Without it two ingests lock visibility classes in opposite
                # orders and deadlock (seen on PostgreSQL in the two-process test).
                db.bump(conn, "next_row_id", 0)
                if not replace:
                    self._check_new(conn, specs, docs)
                sources = self._resolve_sources(conn, specs)
                records = self.allocator.allocate(conn, specs, sources, hint)
                ingest_id = _inserted_id(conn.execute(db.ingests.insert().values(host=host, pid=pid, pid_start=start, started=time.time(), row_ids=_blob(r.row_id for r in records))))
                made: dict[tuple[int, int], str] = {}  # (id(attrs), id(acl)) → stored JSON: a document's chunks share them
                acls: dict[int, str] = {}  # id(acl) → its JSON
                payload = []
                for r in records:  # the records hold attrs and ACLs alive: no id is reused meanwhile
                    ident = (id(r.attrs), id(r.acl))
                    text = made.get(ident)
                    if text is None:
                        text = made[ident] = stored_json(r, acls)
                    payload.append((r.row_id, r.tenant, r.external_id, None, text, r.parent, json.dumps(list(r.derived_from)) if r.derived_from else None, "pending", r.vclass, ingest_id))
                for part in db.chunks(payload, INSERT_CHUNK):
                    direct.insert_many(conn, db.rows, ROW_COLUMNS, part, as_text=("attrs", "derived_from"))
        except IntegrityError as exc:
            raise CatalogError(f"ingest conflicts with the catalog: {str(exc.orig).splitlines()[0]}") from None
        return PendingBatch(records, int(ingest_id), dict(docs) if replace else {})

    def publish(self, batch: PendingBatch) -> Written:
        """Make the batch live (retiring what it replaces) in one transaction."""
        t = db.rows.c
        try:
            with db.transaction(self.engine, "publishing an ingest") as conn:
                version = db.bump(conn, "catalog_version")
                retired = self._take_live(conn, batch.replaces) if batch.replaces else []
                if batch.expect is not None and {r.row_id for r in retired} != batch.expect:
                    raise ConcurrentChangeError("another writer changed these documents meanwhile; nothing was written (read them again and retry)")
                done = 0
                for part in db.parts(conn, batch.row_ids):
                    done += conn.execute(update(db.rows).where(one_of(t.row_id, part, conn.dialect.name), t.state == "pending").values(state="live", live_key=t.external_id)).rowcount
                if done != len(batch.records):
                    raise CatalogError("this ingest was cancelled by a reconcile (its writer looked dead); nothing was published")
                if batch.ingest_id is not None:
                    conn.execute(delete(db.ingests).where(db.ingests.c.id == batch.ingest_id))
                bitmaps = self._persist(conn, batch.records, retired)
                sources = self._source_rows(conn, batch.records, retired)
        except IntegrityError as exc:
            raise DuplicateExternalIdError(f"another writer published a row with one of these external ids meanwhile: {str(exc.orig).splitlines()[0]}") from None
        return Written(version, bitmaps, list(batch.records), retired, sources)

    def abort(self, batch: PendingBatch) -> None:
        """Delete a prepared batch that will not be published."""
        if not batch.records:
            return
        t = db.rows.c
        with db.transaction(self.engine, "aborting an ingest") as conn:
            for part in db.chunks(batch.row_ids):
                conn.execute(delete(db.rows).where(t.row_id.in_(list(part)), t.state == "pending"))
            if batch.ingest_id is not None:
                conn.execute(delete(db.ingests).where(db.ingests.c.id == batch.ingest_id))

    def abandon(self, batch: PendingBatch) -> None:
        """Hand a batch whose cleanup failed to the next reconcile (it counts as dead)."""
        if batch.ingest_id is not None:
            with db.transaction(self.engine, "abandoning an ingest") as conn:
                conn.execute(update(db.ingests).where(db.ingests.c.id == batch.ingest_id).values(pid=-1))

    # ------------------------------------------------------------------ delete
    def retire(self, tenant: str, external_ids: Sequence[str]) -> Written:
        """Take documents (rows and their chunks) out of the index: invisible at once."""
        with db.transaction(self.engine, "deleting rows") as conn:
            version = db.bump(conn, "catalog_version")
            retired = self._take_live(conn, {tenant: set(external_ids)})
            bitmaps = self._persist(conn, [], retired) if retired else {}
            sources = self._source_rows(conn, [], retired)
        return Written(version, bitmaps, [], retired, sources)

    def purge(self, row_ids: Sequence[int]) -> None:
        """Physically remove rows already retired (state ``deleted``)."""
        t = db.rows.c
        with db.transaction(self.engine, "purging rows") as conn:
            for part in db.chunks(sorted(int(r) for r in row_ids), INSERT_CHUNK):
                conn.execute(delete(db.rows).where(t.row_id.in_(list(part)), t.state == "deleted"))

    # ------------------------------------------------------------------ crash records
    def dead_ingests(self, stale_after: float) -> list[tuple[int, list[int]]]:
        """(ingest id, row IDs) of prepared batches whose writer is gone."""
        i = db.ingests.c
        now = time.time()
        with db.reading(self.engine, "reading ingest records") as conn:
            found = conn.execute(select(i.id, i.host, i.pid, i.pid_start, i.started, i.row_ids)).all()
        return [
            (int(ing_id), list(BitMap.deserialize(blob))) for ing_id, host, pid, pid_start, started, blob in found if not writer_alive(host, int(pid), int(pid_start), float(started), now, stale_after)
        ]

    def drop_pending(self, row_ids: Sequence[int], ingest_id: int) -> None:
        """Remove a dead writer's pending rows and its record (after Milvus dropped them)."""
        t = db.rows.c
        with db.transaction(self.engine, "removing an interrupted ingest") as conn:
            for part in db.chunks(sorted(int(r) for r in row_ids), INSERT_CHUNK):
                conn.execute(delete(db.rows).where(t.row_id.in_(list(part)), t.state == "pending"))
            conn.execute(delete(db.ingests).where(db.ingests.c.id == ingest_id))

    # ------------------------------------------------------------------ internals
    def _take_live(self, conn: Connection, docs: Mapping[str, set[str]]) -> list[RowRecord]:
        """Retire the live rows of ``docs`` (tenant → external ids: rows and their chunks)."""
        t = db.rows.c
        found: dict[int, RowRecord] = {}
        for tenant, names in docs.items():
            ordered = sorted(names)
            for part in db.chunks(ordered, 500):
                for row in named_rows(conn, tenant, part):
                    found[int(row.row_id)] = record(row)
        for id_part in db.chunks(sorted(found), INSERT_CHUNK):
            conn.execute(update(db.rows).where(t.row_id.in_(list(id_part))).values(state="deleted", live_key=None))
        return list(found.values())

    def _persist(self, conn: Connection, added: list[RowRecord], retired: list[RowRecord]) -> dict[str, dict[tuple[str, str], FrozenBitMap]]:
        by_tenant: dict[str, tuple[list[RowRecord], list[RowRecord]]] = defaultdict(lambda: ([], []))
        for r in added:
            by_tenant[r.tenant][0].append(r)
        for r in retired:
            by_tenant[r.tenant][1].append(r)
        return {tenant: self.index.persist(conn, tenant, a, d) for tenant, (a, d) in by_tenant.items()}

    def _check_new(self, conn: Connection, specs: Sequence[RowSpec], docs: Mapping[str, set[str]]) -> None:
        """No live row may have a new row's external id, and no chunked
        document may exist already (as a row, or as the parent of chunks)."""
        t = db.rows.c
        names: dict[str, set[str]] = defaultdict(set)
        chunked: dict[str, set[str]] = defaultdict(set)
        for s in specs:
            names[s.tenant] |= {s.external_id, s.document}
            if s.chunk_of:
                chunked[s.tenant].add(s.chunk_of)
        for tenant, exts in names.items():
            for part in db.chunks(sorted(exts)):
                parents = [p for p in part if p in chunked[tenant]]
                found = named_rows(conn, tenant, part, parents, columns=[t.row_id, t.external_id, t.parent])
                if found:
                    dup = found[0]
                    name = dup.external_id if dup.external_id in exts else dup.parent
                    raise DuplicateExternalIdError(
                        f"external id {name!r} already exists in tenant {tenant!r}",
                        hint="pass replace=True to replace it",
                        cli_hint="pass --replace to replace it",
                    )

    def _resolve_sources(self, conn: Connection, specs: Sequence[RowSpec]) -> dict[tuple[str, str], str]:
        """(tenant, source name) → the name a derived row's lineage keeps: every
        source must name a live row or document (its rows: the row called so
        and the rows whose parent it is), or a row earlier in the batch."""
        wanted: dict[str, set[str]] = defaultdict(set)
        for s in specs:
            if s.derived_from:
                wanted[s.tenant].update(s.derived_from)
        out: dict[tuple[str, str], str] = {}
        if not wanted:  # no derived rows: nothing to resolve (and no position map of every spec to build)
            return out
        for tenant, exts in wanted.items():
            out.update(((tenant, d), d) for d, rows in document_rows(conn, tenant, exts).items() if rows)
        batch_pos: dict[tuple[str, str], int] = {}
        for i, s in enumerate(specs):
            batch_pos.setdefault((s.tenant, s.external_id), i)
            batch_pos.setdefault((s.tenant, s.document), i)
        for i, s in enumerate(specs):
            for src in s.derived_from:
                j = batch_pos.get((s.tenant, src))
                if j is not None and j < i:
                    out[(s.tenant, src)] = src
                elif (s.tenant, src) not in out:
                    if j is None:
                        raise UnknownRowError(f"source {src!r} of {s.external_id!r} is not a row of tenant {s.tenant!r}")
                    raise CatalogError(f"source {src!r} of {s.external_id!r} must come before it in the batch")
        return out

    def _source_rows(self, conn: Connection, added: Sequence[RowRecord], retired: Sequence[RowRecord]) -> dict[str, dict[str, FrozenBitMap]]:
        """tenant → source document → its live rows, read in the writing
        transaction for every document that a derived row names and that
        this write touched (or that a new derived row names): lineage by
        document follows a replaced source at once."""
        docs: dict[str, set[str]] = defaultdict(set)
        for r in added:
            if r.derived_from:
                docs[r.tenant].update(d for d in r.derived_from if isinstance(d, str))
        known = {t: self.index.tenant(t).sources for t in {r.tenant for r in added} | {r.tenant for r in retired}}
        if any(known.values()):  # some tenant has derived rows: which of their sources did this write touch?
            for r in (*added, *retired):
                named = known[r.tenant]
                docs[r.tenant].update(d for d in (r.external_id, r.parent) if d is not None and d in named)
        return {t: document_rows(conn, t, ds) for t, ds in docs.items() if ds}


def stored_json(r: RowRecord, acls: dict[int, str]) -> str:
    """``r.stored_attrs()`` as JSON text (what SQLAlchemy's JSON type writes),
    built without a dict per row: an ingest's payload holds text alone."""
    text = json.dumps(r.attrs)
    if r.acl is None:
        return text
    acl = acls.get(id(r.acl))
    if acl is None:
        acl = acls[id(r.acl)] = json.dumps(r.acl.to_json())
    field = f"{json.dumps(ACL_FIELD)}: {acl}"
    return "{" + field + "}" if text == "{}" else f"{text[:-1]}, {field}}}"


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise CatalogError("the database returned no id for the ingest record; nothing was written")
    return int(key[0])


def _blob(ids: Iterable[int]) -> bytes:
    bm = BitMap(ids)
    bm.run_optimize()
    return bm.serialize()
