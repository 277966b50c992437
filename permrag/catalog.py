"""The row catalog: row records, the inverted index and row-ID allocation.

Rows enter in two steps so that a second store (Milvus) can be written in
between without ever exposing half-written rows:

1. :meth:`Catalog.prepare` validates a batch, allocates row IDs and inserts the
   rows as ``pending``. Pending rows are in no bitmap, so nobody can see them.
2. :meth:`Catalog.publish` marks them ``live`` and adds them to the inverted
   index, bumping the catalog version in the same transaction;
   :meth:`Catalog.abort` deletes them instead.

**Permission-aware row IDs.** Rows whose policy-relevant attributes are equal
are visible to exactly the same users, so they get IDs from one block of their
own ("class"). A class's blocks grow geometrically, so a class of n rows spans
O(log n) runs however its rows were interleaved at ingest; every compiled
bitmap is then a union of few runs (ARCHITECTURE.md: 178 bytes vs 126 KB for a
20-of-200-departments union over 1M rows). ``allocation="sequential"`` hands
out IDs in arrival order instead (the benchmark's baseline).

Each class also has a small integer ``vclass``, stored with the row in the
catalog and in Milvus: a visible set that is a union of whole classes becomes
``vclass in [...]``, which Milvus evaluates with a hash lookup per row, however
scattered the classes' IDs are.

The inverted index ``(tenant, attr, value) → BitMap`` is kept in memory and
persisted as serialized roaring bitmaps, so reopening a store loads a few
thousand blobs instead of scanning every row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from pyroaring import BitMap
from sqlalchemy import Engine, and_, delete, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import db
from .bitmaps import MAX_ROW_ID
from .errors import BackendError, CatalogError, DuplicateExternalIdError, UnknownRowError
from .selectors import MAX_LEN, attr_pairs, check_attrs

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
TENANT_ROWS = ("", "")  # index key of "every live row of the tenant"
CLASS_ATTR = "#class"  # index keys ("#class", "<id>"): rows of one visibility class
MIN_BLOCK = 64
MAX_BLOCK = 1 << 22
INSERT_CHUNK = 5000
RECORD_CACHE = 200_000  # row records kept for the search path


@dataclass(frozen=True)
class RowRecord:
    """One catalog row as callers see it."""

    row_id: int
    tenant: str
    external_id: str
    attrs: dict[str, str | list[str]]
    parent: str | None = None
    derived_from: tuple[int, ...] = ()
    vclass: int = 0


@dataclass(frozen=True)
class RowSpec:
    """A validated row waiting for its ID."""

    external_id: str
    tenant: str
    attrs: dict[str, str | list[str]]
    parent: str | None = None
    derived_from: tuple[str, ...] = ()  # external ids of the sources


@dataclass
class TenantIndex:
    """In-memory index of one tenant's live rows."""

    rows: BitMap = field(default_factory=BitMap)
    attrs: dict[str, dict[str, BitMap]] = field(default_factory=lambda: defaultdict(dict))
    derived: dict[int, tuple[int, ...]] = field(default_factory=dict)  # in dependency order
    derived_all: BitMap = field(default_factory=BitMap)
    classes: dict[int, BitMap] = field(default_factory=dict)  # visibility class → its rows


@dataclass(frozen=True)
class Change:
    """What one published batch touched, for incremental recompiles."""

    tenant: str
    row_ids: BitMap
    attrs: frozenset[str]
    docs: frozenset[str]  # external ids and parents of the new rows
    derived: tuple[int, ...]


@dataclass
class PendingBatch:
    """Rows inserted as pending by :meth:`Catalog.prepare`."""

    records: list[RowRecord]
    ingest_id: int | None = None

    @property
    def row_ids(self) -> list[int]:
        return [r.row_id for r in self.records]


def check_tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or not tenant or tenant != tenant.strip() or len(tenant) > 256:
        raise CatalogError(f"tenant {tenant!r} must be a non-empty string of at most 256 characters")
    if any(ord(c) < 32 for c in tenant):
        raise CatalogError(f"tenant {tenant!r} contains a control character")
    return tenant


def _check_id(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_LEN:
        raise CatalogError(f"{what} {value!r} must be a non-empty string of at most {MAX_LEN} characters")
    if any(ord(c) < 32 for c in value):
        raise CatalogError(f"{what} {value!r} contains a control character")
    return value


def row_spec(doc: Mapping[str, Any], default_tenant: str = DEFAULT_TENANT) -> RowSpec:
    """Validate one document mapping into a :class:`RowSpec`."""
    if not isinstance(doc, Mapping):
        raise CatalogError(f"a document must be a mapping, not {type(doc).__name__}")
    ext = _check_id("external_id", doc.get("external_id"))
    tenant = check_tenant(doc.get("tenant") or default_tenant)
    parent = doc.get("parent")
    if parent is not None:
        parent = _check_id(f"parent of {ext!r}", parent)
    sources = doc.get("derived_from") or ()
    if isinstance(sources, str) or not isinstance(sources, Sequence):
        raise CatalogError(f"derived_from of {ext!r} must be a list of external ids")
    sources = tuple(_check_id(f"source of {ext!r}", s) for s in sources)
    if ext in sources:
        raise CatalogError(f"row {ext!r} cannot be derived from itself")
    return RowSpec(ext, tenant, check_attrs(doc.get("attrs")), parent, sources)


def _class_key(payload: object) -> str:
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(raw.encode()).hexdigest()


class Catalog:
    """Rows, their inverted index and row-ID allocation, over one SQL engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        allocation: str = "contiguous",
        policy_attrs: Iterable[str] | None = None,
    ) -> None:
        if allocation not in ("contiguous", "sequential"):
            raise CatalogError(f"allocation must be 'contiguous' or 'sequential', not {allocation!r}")
        self.engine = engine
        self.allocation = allocation
        self.policy_attrs = frozenset(policy_attrs) if policy_attrs is not None else None
        self.version = 0
        self._tenants: dict[str, TenantIndex] = {}
        self._depth: dict[int, int] = {}
        self._lock = threading.RLock()
        # Row records by ID for the search path. A record never changes while
        # its ID lives (replacing a document gives it new IDs), and liveness
        # is read from the in-memory index, so a hit costs no SQL query.
        self._records: OrderedDict[int, RowRecord] = OrderedDict()

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """(Re)load the in-memory index from the database."""
        with self._lock:
            tenants: dict[str, TenantIndex] = {}
            with self.engine.connect() as conn:
                self.version = db.read_counter(conn, "catalog_version")
                for tenant, attr, value, blob in conn.execute(
                    select(db.attr_index.c.tenant, db.attr_index.c.attr, db.attr_index.c.value, db.attr_index.c.bitmap)
                ):
                    idx = tenants.setdefault(tenant, TenantIndex())
                    bm = BitMap.deserialize(blob)
                    _put(idx, attr, value, bm)
                derived = conn.execute(
                    select(db.rows.c.row_id, db.rows.c.tenant, db.rows.c.derived_from).where(
                        db.rows.c.derived_from.is_not(None), db.rows.c.state == "live"
                    )
                ).all()
            self._tenants = tenants
            self._depth = {}
            self._add_derived([(int(r), t, tuple(int(s) for s in src)) for r, t, src in derived])

    def rebuild_index(self) -> None:
        """Recompute the persisted index from the rows (repair tool)."""
        with self._lock, self.engine.begin() as conn:
            tenants: dict[str, TenantIndex] = {}
            for row_id, tenant, attrs, vclass in conn.execute(
                select(db.rows.c.row_id, db.rows.c.tenant, db.rows.c.attrs, db.rows.c.vclass).where(db.rows.c.state == "live")
            ):
                idx = tenants.setdefault(tenant, TenantIndex())
                idx.rows.add(int(row_id))
                idx.classes.setdefault(int(vclass), BitMap()).add(int(row_id))
                for a, v in attr_pairs(attrs):
                    idx.attrs[a].setdefault(v, BitMap()).add(int(row_id))
            conn.execute(delete(db.attr_index))
            payload = []
            for tenant, idx in tenants.items():
                payload.append(self._blob_row(tenant, TENANT_ROWS, idx.rows))
                payload.extend(self._blob_row(tenant, (CLASS_ATTR, str(c)), bm) for c, bm in idx.classes.items())
                for a, values in idx.attrs.items():
                    payload.extend(self._blob_row(tenant, (a, v), bm) for v, bm in values.items())
            if payload:
                conn.execute(db.attr_index.insert(), payload)
            db.bump(conn, "catalog_version")
        self.load()

    # ------------------------------------------------------------------ queries
    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def has_tenant(self, tenant: str) -> bool:
        return tenant in self._tenants

    def tenant(self, tenant: str) -> TenantIndex:
        return self._tenants.get(tenant) or TenantIndex()

    def tenant_rows(self, tenant: str) -> BitMap:
        return self.tenant(tenant).rows

    def attr_values(self, tenant: str, attr: str) -> dict[str, BitMap]:
        return self.tenant(tenant).attrs.get(attr, {})

    def doc_rows(self, tenant: str, external_id: str) -> BitMap:
        """Live rows with this external id or this parent."""
        t = db.rows.c
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(t.row_id).where(
                    t.tenant == tenant,
                    t.state == "live",
                    or_(t.external_id == external_id, t.parent == external_id),
                )
            ).scalars()
            return BitMap(int(i) for i in ids)

    def rows(self, row_ids: Iterable[int]) -> list[RowRecord]:
        """Catalog records of ``row_ids``, in that order; unknown IDs raise."""
        wanted = [int(r) for r in row_ids]
        found: dict[int, RowRecord] = {}
        t = db.rows.c
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 1000):
                chunk = wanted[i : i + 1000]
                for rec in conn.execute(select(db.rows).where(t.row_id.in_(chunk), t.state == "live")):
                    found[int(rec.row_id)] = _record(rec)
        missing = [r for r in wanted if r not in found]
        if missing:
            raise UnknownRowError(f"unknown row id {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return [found[r] for r in wanted]

    def rows_if_live(self, row_ids: Iterable[int]) -> list[RowRecord]:
        """Records of those of ``row_ids`` that are live as this catalog last
        loaded (no error for the rest); cached, so repeated hits cost no query."""
        wanted = [int(r) for r in row_ids]
        found: dict[int, RowRecord] = {}
        with self._lock:
            for r in wanted:
                rec = self._records.get(r)
                if rec is not None:
                    self._records.move_to_end(r)
                    found[r] = rec
        missing = [r for r in wanted if r not in found]
        if missing:
            t = db.rows.c
            with self.engine.connect() as conn:
                for i in range(0, len(missing), 1000):
                    for row in conn.execute(select(db.rows).where(t.row_id.in_(missing[i : i + 1000]), t.state == "live")):
                        found[int(row.row_id)] = _record(row)
            with self._lock:
                for r in missing:
                    if r in found:
                        self._records[r] = found[r]
                while len(self._records) > RECORD_CACHE:
                    self._records.popitem(last=False)
        out = []
        for r in wanted:
            rec = found.get(r)
            idx = self._tenants.get(rec.tenant) if rec is not None else None
            if idx is not None and r in idx.rows:
                out.append(rec)
        return out

    def by_external_id(self, external_id: str, tenant: str = DEFAULT_TENANT) -> RowRecord:
        t = db.rows.c
        with self.engine.connect() as conn:
            rec = conn.execute(
                select(db.rows).where(t.tenant == tenant, t.external_id == external_id, t.state == "live")
            ).first()
        if rec is None:
            raise UnknownRowError(f"no row {external_id!r} in tenant {tenant!r}")
        return _record(rec)

    # ------------------------------------------------------------------ ingest
    def size_hint(self, specs: Sequence[RowSpec]) -> dict[tuple[str, str], int]:
        """Rows per (tenant, class) of a whole ingest, so that batches of it
        can share one block per class (see :meth:`prepare`)."""
        hint: dict[tuple[str, str], int] = defaultdict(int)
        for s in specs:
            if not s.derived_from:
                hint[(s.tenant, self._class_of(s.attrs))] += 1
        return hint

    def prepare(self, specs: Sequence[RowSpec], hint: dict[tuple[str, str], int] | None = None) -> PendingBatch:
        """Validate, allocate IDs and insert ``specs`` as pending rows.

        ``hint`` (from :meth:`size_hint` over the whole ingest, consumed as
        rows are allocated) sizes each new block for the rows still to come,
        so an ingest split into batches still gets one run per class.
        """
        if not specs:
            return PendingBatch([])
        seen: set[tuple[str, str]] = set()
        for s in specs:
            key = (s.tenant, s.external_id)
            if key in seen:
                raise DuplicateExternalIdError(f"external id {s.external_id!r} appears twice in tenant {s.tenant!r}")
            seen.add(key)
        try:
            with self._lock, self.engine.begin() as conn:
                self._check_new(conn, specs)
                sources = self._resolve_sources(conn, specs)
                records = self._allocate(conn, specs, sources, hint if hint is not None else {})
                payload = [
                    {
                        "row_id": r.row_id,
                        "tenant": r.tenant,
                        "external_id": r.external_id,
                        "attrs": r.attrs,
                        "parent": r.parent,
                        "derived_from": list(r.derived_from) if r.derived_from else None,
                        "state": "pending",
                        "vclass": r.vclass,
                    }
                    for r in records
                ]
                for i in range(0, len(payload), INSERT_CHUNK):
                    conn.execute(db.rows.insert(), payload[i : i + INSERT_CHUNK])
                ids = BitMap(r.row_id for r in records)
                host, pid, start = owner()
                ingest_id = conn.execute(
                    db.ingests.insert().values(host=host, pid=pid, pid_start=start, started=time.time(), row_ids=ids.serialize())
                ).inserted_primary_key[0]
        except IntegrityError as exc:
            raise DuplicateExternalIdError(f"an external id in this batch already exists: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise BackendError(f"catalog write failed: {exc}") from exc
        return PendingBatch(records, int(ingest_id))

    def publish(self, batch: PendingBatch) -> list[Change]:
        """Make a prepared batch live and index it; returns what changed per tenant."""
        if not batch.records:
            return []
        by_tenant: dict[str, list[RowRecord]] = defaultdict(list)
        for r in batch.records:
            by_tenant[r.tenant].append(r)
        try:
            with self._lock, self.engine.begin() as conn:
                ids = batch.row_ids
                if batch.ingest_id is not None:
                    gone = conn.execute(delete(db.ingests).where(db.ingests.c.id == batch.ingest_id)).rowcount
                    if gone != 1:
                        raise CatalogError("this ingest was reconciled away (its writer was taken for dead); ingest it again")
                made_live = 0
                for i in range(0, len(ids), INSERT_CHUNK):
                    made_live += conn.execute(
                        update(db.rows)
                        .where(db.rows.c.row_id.in_(ids[i : i + INSERT_CHUNK]), db.rows.c.state == "pending")
                        .values(state="live")
                    ).rowcount
                if made_live != len(ids):
                    raise CatalogError(f"only {made_live} of {len(ids)} pending rows were left to publish; ingest again")
                written: dict[str, dict[tuple[str, str], BitMap]] = {}
                for tenant, recs in by_tenant.items():
                    written[tenant] = self._write_index(conn, tenant, recs)
                self.version = db.bump(conn, "catalog_version")
        except SQLAlchemyError as exc:
            raise BackendError(f"catalog publish failed: {exc}") from exc
        changes = []
        with self._lock:
            for tenant, recs in by_tenant.items():
                idx = self._tenants.setdefault(tenant, TenantIndex())
                for key, bm in written[tenant].items():
                    _put(idx, key[0], key[1], bm)
                derived = [(r.row_id, tenant, r.derived_from) for r in recs if r.derived_from]
                self._add_derived(derived)
                docs = {r.external_id for r in recs} | {r.parent for r in recs if r.parent}
                changes.append(
                    Change(
                        tenant=tenant,
                        row_ids=BitMap(r.row_id for r in recs),
                        attrs=frozenset(a for r in recs for a in r.attrs),
                        docs=frozenset(docs),
                        derived=tuple(d[0] for d in derived),
                    )
                )
        return changes

    def abort(self, batch: PendingBatch) -> None:
        """Delete a prepared batch's pending rows (the vector store holds none of them)."""
        self.drop_pending(batch.row_ids, batch.ingest_id)

    def drop_pending(self, row_ids: Sequence[int], ingest_id: int | None) -> None:
        ids = [int(r) for r in row_ids]
        try:
            with self.engine.begin() as conn:
                for i in range(0, len(ids), INSERT_CHUNK):
                    conn.execute(
                        delete(db.rows).where(db.rows.c.row_id.in_(ids[i : i + INSERT_CHUNK]), db.rows.c.state == "pending")
                    )
                if ingest_id is not None:
                    conn.execute(delete(db.ingests).where(db.ingests.c.id == ingest_id))
        except SQLAlchemyError as exc:
            raise BackendError(f"catalog write failed: {exc}") from exc

    def abandon(self, batch: PendingBatch) -> None:
        """Hand a batch whose vector-store state is unknown to the next reconcile."""
        if batch.ingest_id is None:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(update(db.ingests).where(db.ingests.c.id == batch.ingest_id).values(pid=-1))
        except SQLAlchemyError:
            log.warning("could not mark ingest %s abandoned; reconcile will find it once its process is gone", batch.ingest_id)

    def dead_ingests(self, stale_after: float) -> list[tuple[int | None, list[int]]]:
        """Pending batches whose writer is gone: ``(ingest id, row IDs)``.

        A writer on this host is gone when its PID no longer runs (or runs a
        newer process); one on another host when its batch is older than
        ``stale_after`` seconds. Pending rows no batch claims (a schema older
        than the ingest table) come last with id ``None``.
        """
        here = socket.gethostname()
        now = time.time()
        out: list[tuple[int | None, list[int]]] = []
        claimed = BitMap()
        with self.engine.connect() as conn:
            for rec in conn.execute(select(db.ingests)):
                ids = BitMap.deserialize(rec.row_ids)
                claimed |= ids
                if rec.pid == -1:
                    dead = True
                elif rec.host == here:
                    dead = process_start(rec.pid) != rec.pid_start
                else:
                    dead = now - rec.started > stale_after
                if dead:
                    out.append((int(rec.id), list(ids)))
            loose = [
                int(r)
                for (r,) in conn.execute(select(db.rows.c.row_id).where(db.rows.c.state == "pending"))
                if int(r) not in claimed
            ]
        if loose:
            out.append((None, loose))
        return out

    def live_ids(self) -> BitMap:
        """Every live row ID, all tenants."""
        with self._lock:
            return BitMap.union(BitMap(), *(idx.rows for idx in self._tenants.values()))

    def pending_ids(self) -> BitMap:
        """Row IDs of batches still being written."""
        with self.engine.connect() as conn:
            return BitMap.union(BitMap(), *(BitMap.deserialize(b) for (b,) in conn.execute(select(db.ingests.c.row_ids))))

    def retire(self, tenant: str, external_ids: Sequence[str]) -> list[RowRecord]:
        """Take rows (and chunks whose parent is one of ``external_ids``) out of
        every bitmap and mark them ``deleted``; returns them. :meth:`purge`
        removes them for good once the vector store has dropped them."""
        t = db.rows.c
        names = list(dict.fromkeys(external_ids))
        try:
            with self._lock, self.engine.begin() as conn:
                recs: dict[int, RowRecord] = {}
                for i in range(0, len(names), 500):
                    chunk = names[i : i + 500]
                    for rec in conn.execute(
                        select(db.rows).where(
                            t.tenant == tenant, t.state == "live", or_(t.external_id.in_(chunk), t.parent.in_(chunk))
                        )
                    ):
                        recs[int(rec.row_id)] = _record(rec)
                if not recs:
                    return []
                ids = sorted(recs)
                for i in range(0, len(ids), INSERT_CHUNK):
                    conn.execute(update(db.rows).where(t.row_id.in_(ids[i : i + INSERT_CHUNK])).values(state="deleted"))
                gone = BitMap(ids)
                keys = {TENANT_ROWS} | {p for r in recs.values() for p in _index_keys(r)}
                a = db.attr_index.c
                for attr, value in keys:
                    row = conn.execute(
                        select(a.bitmap).where(a.tenant == tenant, a.attr == attr, a.value == value).with_for_update()
                    ).first()
                    if row is None:
                        continue
                    bm = BitMap.deserialize(row[0]) - gone
                    where = and_(a.tenant == tenant, a.attr == attr, a.value == value)
                    if bm or (attr, value) == TENANT_ROWS:
                        bm.run_optimize()
                        conn.execute(update(db.attr_index).where(where).values(bitmap=bm.serialize()))
                    else:
                        conn.execute(delete(db.attr_index).where(where))
                self.version = db.bump(conn, "catalog_version")
        except SQLAlchemyError as exc:
            raise BackendError(f"catalog delete failed: {exc}") from exc
        self.load()
        return list(recs.values())

    def purge(self, row_ids: Sequence[int]) -> None:
        """Physically remove rows already retired (state ``deleted``)."""
        ids = [int(r) for r in row_ids]
        with self.engine.begin() as conn:
            for i in range(0, len(ids), INSERT_CHUNK):
                conn.execute(
                    delete(db.rows).where(db.rows.c.row_id.in_(ids[i : i + INSERT_CHUNK]), db.rows.c.state == "deleted")
                )

    def by_state(self, state: str) -> list[RowRecord]:
        """Rows in ``state`` (``pending`` / ``deleted``), for reconciliation."""
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(select(db.rows).where(db.rows.c.state == state))]

    def add(self, specs: Sequence[RowSpec], hint: dict[tuple[str, str], int] | None = None) -> tuple[list[int], list[Change]]:
        """Prepare and publish in one go (catalog-only ingest)."""
        batch = self.prepare(specs, hint)
        try:
            changes = self.publish(batch)
        except BaseException:
            self.abort(batch)
            raise
        return batch.row_ids, changes

    # ------------------------------------------------------------------ internals
    def _check_new(self, conn: Connection, specs: Sequence[RowSpec]) -> None:
        t = db.rows.c
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for s in specs:
            by_tenant[s.tenant].append(s.external_id)
        for tenant, exts in by_tenant.items():
            for i in range(0, len(exts), 1000):
                dup = conn.execute(
                    select(t.external_id).where(t.tenant == tenant, t.external_id.in_(exts[i : i + 1000])).limit(1)
                ).first()
                if dup is not None:
                    raise DuplicateExternalIdError(f"external id {dup[0]!r} already exists in tenant {tenant!r}")

    def _resolve_sources(self, conn: Connection, specs: Sequence[RowSpec]) -> dict[tuple[str, str], tuple[int | None, str]]:
        """(tenant, source ext) → (row id or None when in this batch, class key)."""
        wanted: dict[str, set[str]] = defaultdict(set)
        for s in specs:
            wanted[s.tenant].update(s.derived_from)
        out: dict[tuple[str, str], tuple[int | None, str]] = {}
        t = db.rows.c
        for tenant, exts in wanted.items():
            names = sorted(exts)
            for i in range(0, len(names), 1000):
                for rid, ext, attrs, src in conn.execute(
                    select(t.row_id, t.external_id, t.attrs, t.derived_from).where(
                        t.tenant == tenant, t.state == "live", t.external_id.in_(names[i : i + 1000])
                    )
                ):
                    out[(tenant, ext)] = (int(rid), self._class_of(attrs, src))
        batch_pos = {(s.tenant, s.external_id): i for i, s in enumerate(specs)}
        for i, s in enumerate(specs):
            for src in s.derived_from:
                key = (s.tenant, src)
                if key in out:
                    continue
                j = batch_pos.get(key)
                if j is None:
                    raise UnknownRowError(f"source {src!r} of {s.external_id!r} is not a row of tenant {s.tenant!r}")
                if j > i:
                    raise CatalogError(f"source {src!r} of {s.external_id!r} must come before it in the batch")
        return out

    def _class_of(self, attrs: Mapping[str, Any], derived: Sequence[int] | None = None) -> str:
        if derived:
            return _class_key(["derived", sorted(int(d) for d in derived)])
        keep = {k: v for k, v in attrs.items() if self.policy_attrs is None or k in self.policy_attrs}
        return _class_key(keep)

    def _allocate(
        self,
        conn: Connection,
        specs: Sequence[RowSpec],
        sources: dict[tuple[str, str], tuple[int | None, str]],
        hint: dict[tuple[str, str], int],
    ) -> list[RowRecord]:
        batch_ids: dict[tuple[str, str], int] = {}
        records: list[RowRecord] = []
        classes: dict[tuple[str, str], int] = {}
        if self.allocation == "sequential":
            end = _bump_ids(conn, len(specs))
            start = end - len(specs)
            for i, s in enumerate(specs):
                batch_ids[(s.tenant, s.external_id)] = start + i
            for s in specs:
                src_ids = sorted(self._source_id(s, x, batch_ids, sources) for x in s.derived_from)
                key = self._class_of(s.attrs, src_ids)
                if (s.tenant, key) not in classes:
                    classes[(s.tenant, key)] = self._class_row(conn, s.tenant, key)[0]
                records.append(self._record(s, batch_ids[(s.tenant, s.external_id)], batch_ids, sources, classes[(s.tenant, key)]))
            return records
        # Group by (tenant, class) in input order; derived rows come after all
        # plain rows so their sources already have IDs.
        groups: dict[tuple[str, str], list[RowSpec]] = {}
        plain = [s for s in specs if not s.derived_from]
        derived = [s for s in specs if s.derived_from]
        for s in plain:
            groups.setdefault((s.tenant, self._class_of(s.attrs)), []).append(s)
        vclass: dict[tuple[str, str], int] = {}
        for (tenant, key), members in groups.items():
            expected = max(len(members), hint.get((tenant, key), 0))
            if (tenant, key) in hint:
                hint[(tenant, key)] = max(0, hint[(tenant, key)] - len(members))
            cid, ids = self._take_ids(conn, tenant, key, len(members), expected)
            for s, rid in zip(members, ids):
                batch_ids[(s.tenant, s.external_id)] = rid
                vclass[(s.tenant, s.external_id)] = cid
        for s in derived:  # one at a time: a derived source may be in the batch
            src_ids = sorted(self._source_id(s, x, batch_ids, sources) for x in s.derived_from)
            cid, (rid,) = self._take_ids(conn, s.tenant, self._class_of({}, src_ids), 1)
            batch_ids[(s.tenant, s.external_id)] = rid
            vclass[(s.tenant, s.external_id)] = cid
        return [
            self._record(s, batch_ids[(s.tenant, s.external_id)], batch_ids, sources, vclass[(s.tenant, s.external_id)])
            for s in specs
        ]

    @staticmethod
    def _source_id(s: RowSpec, src: str, batch_ids: dict[tuple[str, str], int], sources: dict) -> int:
        key = (s.tenant, src)
        if key in batch_ids:
            return batch_ids[key]
        return int(sources[key][0])

    def _record(self, s: RowSpec, rid: int, batch_ids: dict, sources: dict, vclass: int) -> RowRecord:
        src = tuple(sorted({self._source_id(s, x, batch_ids, sources) for x in s.derived_from}))
        return RowRecord(rid, s.tenant, s.external_id, s.attrs, s.parent, src, vclass)

    def _class_row(self, conn: Connection, tenant: str, key: str) -> tuple[int, int, int, int, bool]:
        """(class_id, next_id, end_id, size, existed) of a class, created if new."""
        b = db.id_blocks.c
        row = conn.execute(
            select(b.class_id, b.next_id, b.end_id, b.size).where(b.tenant == tenant, b.class_key == key).with_for_update()
        ).first()
        if row is not None:
            return int(row[0]), int(row[1]), int(row[2]), int(row[3]), True
        cid = db.bump(conn, "next_class_id") - 1
        conn.execute(db.id_blocks.insert().values(tenant=tenant, class_key=key, class_id=cid, next_id=0, end_id=0, size=0))
        return cid, 0, 0, 0, False

    def _take_ids(self, conn: Connection, tenant: str, key: str, n: int, expected: int = 0) -> tuple[int, list[int]]:
        """The class's ID and ``n`` fresh row IDs from its blocks."""
        b = db.id_blocks.c
        cid, nxt, end, size, _ = self._class_row(conn, tenant, key)
        ids: list[int] = []
        while len(ids) < n:
            if nxt < end:
                take = min(n - len(ids), end - nxt)
                ids.extend(range(nxt, nxt + take))
                nxt += take
                continue
            need = max(n - len(ids), expected - len(ids))
            size = min(MAX_BLOCK, max(MIN_BLOCK, 2 * size, 1 << (need - 1).bit_length()))
            end = _bump_ids(conn, size)
            nxt = end - size
        conn.execute(
            update(db.id_blocks).where(b.tenant == tenant, b.class_key == key).values(next_id=nxt, end_id=end, size=size)
        )
        return cid, ids

    @staticmethod
    def _blob_row(tenant: str, key: tuple[str, str], bm: BitMap) -> dict[str, Any]:
        bm.run_optimize()
        return {"tenant": tenant, "attr": key[0], "value": key[1], "bitmap": bm.serialize()}

    def _write_index(self, conn: Connection, tenant: str, recs: list[RowRecord]) -> dict[tuple[str, str], BitMap]:
        """OR the new rows into the persisted bitmaps they touch (read-modify-write)."""
        adds: dict[tuple[str, str], BitMap] = defaultdict(BitMap)
        for r in recs:
            adds[TENANT_ROWS].add(r.row_id)
            for pair in _index_keys(r):
                adds[pair].add(r.row_id)
        a = db.attr_index.c
        attrs = sorted({k[0] for k in adds})
        current: dict[tuple[str, str], BitMap] = {}
        for i in range(0, len(attrs), 500):
            for attr, value, blob in conn.execute(
                select(a.attr, a.value, a.bitmap)
                .where(a.tenant == tenant, a.attr.in_(attrs[i : i + 500]))
                .with_for_update()
            ):
                if (attr, value) in adds:
                    current[(attr, value)] = BitMap.deserialize(blob)
        out: dict[tuple[str, str], BitMap] = {}
        inserts = []
        for key, new in adds.items():
            if key in current:
                bm = current[key] | new
                bm.run_optimize()
                conn.execute(
                    update(db.attr_index)
                    .where(and_(a.tenant == tenant, a.attr == key[0], a.value == key[1]))
                    .values(bitmap=bm.serialize())
                )
            else:
                bm = BitMap(new)
                inserts.append(self._blob_row(tenant, key, bm))
            out[key] = bm
        if inserts:
            conn.execute(db.attr_index.insert(), inserts)
        return out

    def _add_derived(self, derived: list[tuple[int, str, tuple[int, ...]]]) -> None:
        """Register derived rows, keeping each tenant's dict in dependency order."""
        if not derived:
            return
        pending = {rid: (tenant, src) for rid, tenant, src in derived}

        def depth(rid: int) -> int:
            if rid in self._depth:
                return self._depth[rid]
            if rid not in pending:
                return 0
            tenant, src = pending[rid]
            d = 1 + max((depth(s) for s in src), default=0)
            self._depth[rid] = d
            return d

        touched = set()
        for rid, tenant, src in derived:
            depth(rid)
            idx = self._tenants.setdefault(tenant, TenantIndex())
            idx.derived[rid] = src
            idx.derived_all.add(rid)
            touched.add(tenant)
        for tenant in touched:
            idx = self._tenants[tenant]
            idx.derived = dict(sorted(idx.derived.items(), key=lambda kv: (self._depth.get(kv[0], 1), kv[0])))


def _index_keys(r: RowRecord) -> list[tuple[str, str]]:
    return [(CLASS_ATTR, str(r.vclass)), *attr_pairs(r.attrs)]


def _put(idx: TenantIndex, attr: str, value: str, bm: BitMap) -> None:
    if (attr, value) == TENANT_ROWS:
        idx.rows = bm
    elif attr == CLASS_ATTR:
        idx.classes[int(value)] = bm
    else:
        idx.attrs[attr][value] = bm


def _bump_ids(conn: Connection, n: int) -> int:
    end = db.bump(conn, "next_row_id", n)
    if end - 1 > MAX_ROW_ID:
        raise CatalogError(f"row IDs exhausted: permrag allocates 32-bit row IDs (at most {MAX_ROW_ID})")
    return end


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if none runs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        if not os.path.isdir("/proc"):  # no procfs: fall back to "does it exist"
            try:
                os.kill(pid, 0)
                return 0
            except ProcessLookupError:
                return None
            except PermissionError:
                return 0
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def owner() -> tuple[str, int, int]:
    """This process as an ingest owner: host, PID, start time."""
    pid = os.getpid()
    return socket.gethostname(), pid, process_start(pid) or 0


def _record(rec: Any) -> RowRecord:
    return RowRecord(
        row_id=int(rec.row_id),
        tenant=rec.tenant,
        external_id=rec.external_id,
        attrs=dict(rec.attrs),
        parent=rec.parent,
        derived_from=tuple(int(s) for s in rec.derived_from or ()),
        vclass=int(rec.vclass),
    )
