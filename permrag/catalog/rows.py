"""Row records: what a row is, how a document becomes row specs, and lookups.

A *row* is one retrievable chunk: ``row_id`` (allocated by permrag),
``external_id``, ``tenant``, ``attrs``, optional ``parent`` (chunk →
document) and ``derived_from`` (generated content → its sources). A
*document* is what a caller ingests: one row, or several chunk rows
``<external_id>#<n>`` whose ``parent`` is the document's id.

Lineage is kept by document identity: ``derived_from`` holds the sources'
external ids (of a row or a whole document), never row IDs, so that
replacing a source (a re-ingest, a metadata or ACL update, a regroup — each
gives it new row IDs) keeps its derived rows; the index resolves each name
to its live rows (the row of that id and the rows whose parent it is, as a
``doc:`` selector does; catalog/index.py). Stores written before hold row
IDs there (ints): the index reads each one still live as its external id (a
chunk as its document) from the next open on, and one gone already as gone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyroaring import BitMap, FrozenBitMap
from sqlalchemy import ARRAY, Engine, any_, bindparam, cast, select
from sqlalchemy.types import UserDefinedType

from ..domain.acl import Acl, parse_acl
from ..domain.names import AttrValue, check_attrs, check_external_id, check_tenant
from ..errors import CatalogError, UnknownRowError
from ..storage import db
from ..storage.direct import pg_array

DEFAULT_TENANT = "default"
RECORD_CACHE = 200_000  # row records kept for the search path
ACL_FIELD = "@acl"  # where a row's ACL is kept in its stored attrs (no attribute name starts with @)


@dataclass(frozen=True, slots=True)  # slots: one object per row, not two (an ingest makes one per chunk)
class RowRecord:
    """One catalog row as callers see it."""

    row_id: int
    tenant: str
    external_id: str
    attrs: dict[str, AttrValue]
    parent: str | None = None
    derived_from: tuple[str | int, ...] = ()  # sources' external ids (row IDs in older stores)
    vclass: int = 0
    acl: Acl | None = None  # the document's own ACL (acl.py), if it has one

    @property
    def document(self) -> str:
        """The document this row belongs to: its parent, or itself."""
        return self.parent or self.external_id

    def stored_attrs(self) -> dict[str, Any]:
        """``attrs`` as the catalog stores them: with the ACL under ``@acl``."""
        return self.attrs if self.acl is None else {**self.attrs, ACL_FIELD: self.acl.to_json()}


@dataclass(frozen=True)
class DocumentRecord:
    """A document stored as several chunk rows (``rag.row(<document id>)``)."""

    external_id: str
    tenant: str
    chunks: tuple[RowRecord, ...]

    @property
    def row_ids(self) -> list[int]:
        return [c.row_id for c in self.chunks]

    @property
    def attrs(self) -> dict[str, AttrValue]:
        return self.chunks[0].attrs if self.chunks else {}

    @property
    def document(self) -> str:
        return self.external_id


@dataclass(frozen=True, slots=True)
class RowSpec:
    """A validated row waiting for its ID."""

    external_id: str
    tenant: str
    attrs: dict[str, AttrValue]
    parent: str | None = None
    derived_from: tuple[str, ...] = ()  # external ids of the sources
    chunk_of: str | None = None  # the ingested document this row is a chunk of (set by chunking)
    acl: Acl | None = None

    @property
    def document(self) -> str:
        """The ingested document this row stands for (itself, unless it is a chunk)."""
        return self.chunk_of or self.external_id


def row_spec(doc: Mapping[str, Any], default_tenant: str = DEFAULT_TENANT) -> RowSpec:
    """Validate one document mapping into a :class:`RowSpec`."""
    if not isinstance(doc, Mapping):
        raise CatalogError(f"a document must be a mapping, not {type(doc).__name__}")
    ext = check_external_id("external_id", doc.get("external_id"))
    tenant = check_tenant(doc["tenant"]) if "tenant" in doc else default_tenant
    parent = doc.get("parent")
    if parent is not None:
        parent = check_external_id(f"parent of {ext!r}", parent)
    sources = doc.get("derived_from") or ()
    if isinstance(sources, (str, bytes, Mapping)) or not isinstance(sources, Sequence):
        raise CatalogError(f"derived_from of {ext!r} must be a list of external ids")
    sources = tuple(check_external_id(f"source of {ext!r}", s) for s in sources)
    if ext in sources:
        raise CatalogError(f"row {ext!r} cannot be derived from itself")
    acl = parse_acl(doc.get("acl"), f"acl of {ext!r}")
    if acl is not None and sources:
        raise CatalogError(f"row {ext!r} is derived: it is readable exactly when its sources are, so it takes no acl")
    return RowSpec(ext, tenant, check_attrs(doc.get("attrs")), parent, sources, acl=acl)


def split_attrs(stored: Mapping[str, Any]) -> tuple[dict[str, Any], Acl | None]:
    """Stored attrs → (attrs, ACL)."""
    attrs = dict(stored)
    raw = attrs.pop(ACL_FIELD, None)
    return attrs, parse_acl(raw) if raw is not None else None


def record(row: Any) -> RowRecord:
    attrs, acl = split_attrs(row.attrs)
    return RowRecord(
        row_id=int(row.row_id),
        tenant=row.tenant,
        external_id=row.external_id,
        attrs=attrs,
        acl=acl,
        parent=row.parent,
        derived_from=tuple(s if isinstance(s, str) else int(s) for s in row.derived_from or ()),
        vclass=int(row.vclass),
    )


class Rows:
    """Row lookups by ID, external id and state, with a cache for the search path.

    A record never changes while its ID exists (a replaced document gets new
    IDs), so cached records are never stale; whether a row is *visible* is
    decided by bitmaps, never by this cache.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cache: OrderedDict[int, RowRecord] = OrderedDict()
        self._lock = threading.Lock()

    def records(self, row_ids: Iterable[int]) -> dict[int, RowRecord]:
        """Records of those of ``row_ids`` that exist (any state), by ID."""
        wanted = [int(r) for r in row_ids]
        found: dict[int, RowRecord] = {}
        with self._lock:
            for r in wanted:
                rec = self._cache.get(r)
                if rec is not None:
                    self._cache.move_to_end(r)
                    found[r] = rec
        missing = sorted({r for r in wanted if r not in found})
        if missing:
            t = db.rows.c
            with db.reading(self.engine, "reading rows") as conn:
                for part in db.chunks(missing):
                    for row in conn.execute(select(db.rows).where(t.row_id.in_(part))):
                        found[int(row.row_id)] = record(row)
            with self._lock:
                for r in missing:
                    if r in found:
                        self._cache[r] = found[r]
                while len(self._cache) > RECORD_CACHE:
                    self._cache.popitem(last=False)
        return found

    def live(self, row_ids: Iterable[int]) -> list[RowRecord]:
        """Records of live ``row_ids`` in that order; an unknown or retired ID raises."""
        wanted = [int(r) for r in row_ids]
        found: dict[int, RowRecord] = {}
        t = db.rows.c
        with db.reading(self.engine, "reading rows") as conn:
            for part in db.chunks(sorted(set(wanted))):
                for row in conn.execute(select(db.rows).where(t.row_id.in_(part), t.state == "live")):
                    found[int(row.row_id)] = record(row)
        missing = [r for r in wanted if r not in found]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UnknownRowError(f"unknown row id {missing[0]}{more}")
        return [found[r] for r in wanted]

    def by_external_id(self, external_id: str, tenant: str) -> RowRecord | None:
        t = db.rows.c
        with db.reading(self.engine, "reading rows") as conn:
            row = conn.execute(select(db.rows).where(t.tenant == tenant, t.live_key == external_id, t.state == "live")).first()
        return None if row is None else record(row)

    def document(self, external_id: str, tenant: str) -> list[RowRecord]:
        """Live rows with this external id, or whose parent it is, in chunk order."""
        with db.reading(self.engine, "reading rows") as conn:
            found = [record(r) for r in named_rows(conn, tenant, [external_id])]
        return sorted(found, key=lambda r: (r.external_id != external_id, chunk_no(r.external_id), r.external_id))

    def doc_rows(self, tenant: str, external_id: str) -> BitMap:
        """Live rows with this external id or this parent (a ``doc:`` selector)."""
        t = db.rows.c
        with db.reading(self.engine, "reading rows") as conn:
            return BitMap(int(r.row_id) for r in named_rows(conn, tenant, [external_id], columns=[t.row_id]))

    def documents(self, tenant: str, parents: Sequence[str]) -> dict[str, list[RowRecord]]:
        """Live rows of several documents at once (one query per 1,000), by document."""
        return _documents_query(self.engine, tenant, parents)

    def by_state(self, state: str) -> list[RowRecord]:
        with db.reading(self.engine, "reading rows") as conn:
            return [record(r) for r in conn.execute(select(db.rows).where(db.rows.c.state == state))]

    def ids(self, states: Sequence[str] = ("live",)) -> BitMap:
        """Every row ID in one of ``states``."""
        with db.reading(self.engine, "reading rows") as conn:
            return BitMap(int(i) for i in conn.execute(select(db.rows.c.row_id).where(db.rows.c.state.in_(list(states)))).scalars())


class _ArrayText(UserDefinedType[str]):
    """An array's text form as a parameter the driver sends untyped (no ``::VARCHAR``
    bind cast, which the planner would not fold), and as a quoted literal where a
    statement is rendered with its values (EXPLAIN)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "TEXT"

    def literal_processor(self, dialect: Any) -> Any:
        return lambda value: "'" + str(value).replace("'", "''") + "'"


def one_of(column: Any, values: Sequence[Any], dialect: str = "") -> Any:
    """``column IN (values)``; on PostgreSQL ``column = ANY(:array)``, one
    parameter instead of one per value (the same index condition)."""
    if dialect == "postgresql":
        text = pg_array(list(values))
        if isinstance(text, str):  # the array's text form, cast by the server
            # (an untyped parameter, cast once: the server takes it as the array's own type, a constant the planner reads)
            return column == any_(cast(bindparam(None, text, type_=_ArrayText()), ARRAY(column.type)))
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))


def named(tenant: str, names: Sequence[str], parents: Sequence[str] | None = None, columns: Sequence[Any] = (), dialect: str = "") -> list[Any]:
    """Statements for the live rows of ``tenant`` called one of ``names``, and
    for the chunks of one of ``parents`` (default: ``names``): one per index,
    (tenant, live_key) and (tenant, parent), run apart and merged by row ID
    (:func:`named_rows`). ``live_key`` is set exactly while a row is live.
    As one condition (``state = 'live' AND (live_key IN … OR parent IN …)``,
    or even an OR of the two forms) SQLite's planner could pick the state or
    the tenant index and read every live row of the tenant on every write."""
    t = db.rows.c
    cols = list(columns) or [db.rows]
    out = [select(*cols).where(t.tenant == tenant, one_of(t.live_key, names, dialect))]
    chunks_of = list(names if parents is None else parents)
    if chunks_of:
        out.append(select(*cols).where(t.tenant == tenant, one_of(t.parent, chunks_of, dialect), t.live_key.is_not(None)))
    return out


def named_rows(conn: Any, tenant: str, names: Sequence[str], parents: Sequence[str] | None = None, columns: Sequence[Any] = ()) -> list[Any]:
    """The rows of :func:`named`'s statements, each once (``columns`` must include ``row_id``)."""
    found: dict[int, Any] = {}
    for stmt in named(tenant, names, parents, columns, conn.dialect.name):
        for row in conn.execute(stmt):
            found.setdefault(int(row.row_id), row)
    return list(found.values())


def document_rows(conn: Any, tenant: str, docs: Iterable[str]) -> dict[str, FrozenBitMap]:
    """Each document's live rows (itself and the rows whose parent it is); EMPTY for one with none."""
    t = db.rows.c
    found: dict[str, BitMap] = {d: BitMap() for d in docs}
    for part in db.chunks(sorted(found)):
        for row in named_rows(conn, tenant, part, columns=[t.row_id, t.external_id, t.parent]):
            for d in {row.external_id, row.parent} & found.keys():
                found[d].add(int(row.row_id))
    return {d: FrozenBitMap(bm) for d, bm in found.items()}


def chunk_no(external_id: str) -> int:
    """The ``n`` of a chunk id ``<document>#<n>`` (0 for other ids)."""
    tail = external_id.rsplit("#", 1)[-1]
    return int(tail) if "#" in external_id and tail.isdigit() else 0


def _documents_query(engine: Engine, tenant: str, parents: Sequence[str]) -> dict[str, list[RowRecord]]:
    out: dict[str, list[RowRecord]] = {p: [] for p in parents}
    with db.reading(engine, "reading rows") as conn:
        for part in db.chunks(sorted(set(parents))):
            for row in named_rows(conn, tenant, part):
                rec = record(row)
                for key in out.keys() & {rec.parent, rec.external_id}:
                    out[key].append(rec)
    for recs in out.values():
        recs.sort(key=lambda r: (chunk_no(r.external_id), r.external_id))
    return out
