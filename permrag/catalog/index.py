"""The inverted index ``(tenant, attr, value) → rows``, in memory and persisted.

Selectors resolve through it: ``dept:eng`` is one lookup, ``dept:e*`` a union
of the matching values' bitmaps. Besides attribute values it holds, per
tenant, every live row (``("", "")``) and the rows of each visibility class
(``("#class", "<id>")``). It is persisted as serialized roaring bitmaps, so
reopening a store loads a few thousand blobs instead of scanning every row.

In memory each tenant is a :class:`TenantIndex` that is never mutated: a
publish or delete builds a new one and swaps it in (under the state lock), so
a snapshot taken by a search stays valid while others write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from pyroaring import BitMap, FrozenBitMap
from sqlalchemy import and_, bindparam, delete, select
from sqlalchemy.engine import Connection

from ..domain.names import attr_pairs
from ..storage import db, direct
from .bitmaps import GONE
from .layered import Layered
from .rows import RowRecord, chunk_no, document_rows, one_of, split_attrs

TENANT_ROWS = ("", "")  # index key of "every live row of the tenant"
CLASS_ATTR = "#class"  # index keys ("#class", "<id>"): rows of one visibility class
EMPTY = FrozenBitMap()


@dataclass(frozen=True)
class TenantIndex:
    """One tenant's live rows, by attribute value and by visibility class (immutable)."""

    rows: FrozenBitMap = EMPTY
    attrs: Mapping[str, Mapping[str, FrozenBitMap]] = field(default_factory=dict)
    classes: Mapping[int, FrozenBitMap] = field(default_factory=dict)
    # derived row → the live rows of its source documents (GONE, never in a
    # bitmap, for a document gone), in dependency order; resolved from ``lineage``
    derived: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    derived_all: FrozenBitMap = EMPTY
    lineage: Mapping[int, tuple[str | int, ...]] = field(default_factory=dict)  # derived row → source documents (ints: older stores' row IDs)
    sources: Mapping[str, FrozenBitMap] = field(default_factory=dict)  # source document → its live rows

    def values(self, attr: str) -> Mapping[str, FrozenBitMap]:
        return self.attrs.get(attr, {})


def index_keys(r: RowRecord) -> list[tuple[str, str]]:
    return [(CLASS_ATTR, str(r.vclass)), *attr_pairs(r.attrs), *(r.acl.index_keys() if r.acl is not None else ())]


def _keyed(rows: Iterable[RowRecord]) -> dict[tuple[str, str], BitMap]:
    """Index key → the rows' IDs under it (TENANT_ROWS: all of them)."""
    ids: dict[tuple[str, str], list[int]] = defaultdict(list)
    every: list[int] = []
    for r in rows:
        every.append(r.row_id)
        for k in index_keys(r):
            ids[k].append(r.row_id)
    out = {k: BitMap(v) for k, v in ids.items()}
    if every:
        out[TENANT_ROWS] = BitMap(every)
    return out


INDEX_COLUMNS = ("tenant", "attr", "value", "bitmap")


def _live(conn: Connection, tenant: str) -> Iterator[RowRecord]:
    """The tenant's live rows as far as the index needs them (ID, attrs, ACL, class)."""
    t = db.rows.c
    for row_id, attrs, vclass in conn.execute(select(t.row_id, t.attrs, t.vclass).where(t.tenant == tenant, t.state == "live")):
        plain, acl = split_attrs(attrs)
        yield RowRecord(int(row_id), tenant, "", plain, vclass=int(vclass), acl=acl)


def _stored(tenant: str, key: tuple[str, str], bm: BitMap) -> tuple[str, str, str, bytes]:
    """A persisted index row (INDEX_COLUMNS) of ``bm``, run-optimised."""
    bm.run_optimize()
    return (tenant, key[0], key[1], bm.serialize())


class AttrIndex:
    """Every tenant's :class:`TenantIndex`, and their persisted form."""

    def __init__(self) -> None:
        self._tenants: dict[str, TenantIndex] = {}

    def tenant(self, tenant: str) -> TenantIndex:
        return self._tenants.get(tenant) or TenantIndex()

    def tenants(self) -> list[str]:
        return sorted(t for t, idx in self._tenants.items() if idx.rows)

    def has_tenant(self, tenant: str) -> bool:
        idx = self._tenants.get(tenant)
        return idx is not None and bool(idx.rows)

    def live_ids(self) -> BitMap:
        return BitMap.union(BitMap(), *(idx.rows for idx in self._tenants.values()))

    # ------------------------------------------------------------------ loading
    def load(self, conn: Connection) -> None:
        """Replace the in-memory index with the persisted one."""
        raw: dict[str, dict[tuple[str, str], FrozenBitMap]] = defaultdict(dict)
        a = db.attr_index.c
        for tenant, attr, value, blob in conn.execute(select(a.tenant, a.attr, a.value, a.bitmap)):
            raw[tenant][(attr, value)] = FrozenBitMap.deserialize(blob)
        derived: dict[str, list[tuple[int, tuple[str | int, ...]]]] = defaultdict(list)
        t = db.rows.c
        for rid, tenant, src in conn.execute(select(t.row_id, t.tenant, t.derived_from).where(t.derived_from.is_not(None), t.state == "live")):
            derived[tenant].append((int(rid), tuple(s if isinstance(s, str) else int(s) for s in src)))
        named = _names_of(conn, {s for rows in derived.values() for _, src in rows for s in src if isinstance(s, int)})
        for rows in derived.values() if named else ():
            rows[:] = [(rid, tuple(dict.fromkeys(named.get(s, s) if isinstance(s, int) else s for s in src))) for rid, src in rows]
        tenants = {}
        for tenant in set(raw) | set(derived):
            idx = _build(raw.get(tenant, {}))
            docs = {d for _, src in derived.get(tenant, []) for d in src if isinstance(d, str)}
            tenants[tenant] = _with_derived(idx, derived.get(tenant, []), (), document_rows(conn, tenant, docs))[0]
        self._tenants = tenants

    def rebuild(self, conn: Connection) -> None:
        """Recompute the persisted index from the live rows (repair tool)."""
        t = db.rows.c
        tenants = [str(x) for x in conn.execute(select(t.tenant).where(t.state == "live").distinct()).scalars()]
        conn.execute(delete(db.attr_index))
        for tenant in tenants:
            keys = _keyed(_live(conn, tenant))
            payload = [_stored(tenant, k, bm) for k, bm in keys.items()]
            for part in db.chunks(payload, 500):
                direct.insert_many(conn, db.attr_index, INDEX_COLUMNS, part)

    # ------------------------------------------------------------------ changes
    def persist(self, conn: Connection, tenant: str, added: Iterable[RowRecord], removed: Iterable[RowRecord]) -> dict[tuple[str, str], FrozenBitMap]:
        """Read-modify-write the persisted bitmaps the rows touch (rows locked
        FOR UPDATE where the database has it); returns the new bitmaps."""
        adds = _keyed(added)
        gone = _keyed(removed)
        keys = set(adds) | set(gone)
        a = db.attr_index.c
        current: dict[tuple[str, str], BitMap] = {}
        # the touched keys alone (``source`` has a value per file: reading every bitmap of the
        # touched attributes would make a write's cost grow with the store), in
        # one statement per 500 values: attr IN … AND value IN … is a seek per pair in the primary
        # key; the few pairs no row touched are left out here
        names = sorted({k[0] for k in keys})
        for part in db.parts(conn, sorted({k[1] for k in keys}), 500):
            q = select(a.attr, a.value, a.bitmap).where(a.tenant == tenant, one_of(a.attr, names, conn.dialect.name), one_of(a.value, part, conn.dialect.name)).with_for_update()
            for attr, value, blob in conn.execute(q):
                if (attr, value) in keys:
                    current[(attr, value)] = BitMap.deserialize(blob)
        out: dict[tuple[str, str], FrozenBitMap] = {}
        inserts, updates, deletes = [], [], []
        for key in keys:
            had, more, less = current.get(key), adds.get(key), gone.get(key)
            if had is None and less is None and more is not None:
                bm = more  # a key new in this write (one per file for ``source``): its rows as they are
            else:
                bm = (had or BitMap()) | (more or BitMap())
                if less is not None:
                    bm -= less
            if key in current:
                if bm or key == TENANT_ROWS:
                    bm.run_optimize()
                    updates.append({"tenant": tenant, "attr": key[0], "value": key[1], "bitmap": bm.serialize()})
                else:
                    deletes.append({"k_attr": key[0], "k_value": key[1]})
            elif bm or key == TENANT_ROWS:
                inserts.append(_stored(tenant, key, bm))
            out[key] = FrozenBitMap(bm)
        # one statement each, executed for many keys (SQLAlchemy's construction
        # of a statement per key would dominate a large folder sync)
        where = and_(a.tenant == tenant, a.attr == bindparam("k_attr"), a.value == bindparam("k_value"))
        if updates:
            direct.update_many(conn, db.attr_index, ("tenant", "attr", "value"), ("bitmap",), updates)
        if deletes:
            conn.execute(delete(db.attr_index).where(where), deletes)
        if inserts:  # new keys: one per file for ``source`` and ``title`` in a folder sync
            direct.insert_many(conn, db.attr_index, INDEX_COLUMNS, inserts)
        return out

    def apply(
        self,
        tenant: str,
        bitmaps: Mapping[tuple[str, str], FrozenBitMap],
        derived_added: list[tuple[int, tuple[str | int, ...]]],
        derived_removed: Iterable[int],
        sources: Mapping[str, FrozenBitMap] | None = None,
    ) -> bool:
        """Swap in a new TenantIndex with ``bitmaps`` (from :meth:`persist`)
        replacing theirs, and ``sources`` (source document → its live rows
        now) replacing those; True if a source of a derived row that was
        already live changed its rows (its readers must be recomputed)."""
        old = self.tenant(tenant)
        rows = bitmaps.get(TENANT_ROWS, old.rows)
        attrs: dict[str, Mapping[str, FrozenBitMap]] = dict(old.attrs)
        classes = dict(old.classes)
        by_attr: dict[str, dict[str, FrozenBitMap]] = defaultdict(dict)
        for (attr, value), bm in bitmaps.items():
            if (attr, value) == TENANT_ROWS:
                continue
            if attr == CLASS_ATTR:
                if bm:
                    classes[int(value)] = bm
                else:
                    classes.pop(int(value), None)
            else:
                by_attr[attr][value] = bm
        for attr, changed in by_attr.items():
            # the changed values alone are copied (catalog/layered.py), not every value of the attribute
            was = attrs.get(attr)
            inner = (was if isinstance(was, Layered) else Layered(was)).changed({v: bm if bm else None for v, bm in changed.items()})
            if inner:
                attrs[attr] = inner
            else:
                attrs.pop(attr, None)
        idx = replace(old, rows=rows, attrs=_frozen(attrs), classes=MappingProxyType(classes))
        self._tenants[tenant], moved = _with_derived(idx, derived_added, derived_removed, sources or {})
        return moved


def _with_derived(idx: TenantIndex, added: list[tuple[int, tuple[str | int, ...]]], removed: Iterable[int], sources: Mapping[str, FrozenBitMap]) -> tuple[TenantIndex, bool]:
    """``idx`` with derived rows added and removed and source documents' rows
    replaced, lineage resolved again; and whether an already known source
    document's rows changed."""
    removed = set(removed)
    if not added and not removed and not sources:
        return idx, False
    lineage = {rid: src for rid, src in idx.lineage.items() if rid not in removed}
    lineage.update(added)
    moved = any(d in idx.sources and idx.sources[d] != bm for d, bm in sources.items())
    wanted = {d for src in lineage.values() for d in src if isinstance(d, str)}
    rows = {d: bm for d, bm in {**idx.sources, **sources}.items() if d in wanted}
    resolved = {rid: _resolve(rid, src, rows) for rid, src in lineage.items()}
    depth: dict[int, int] = {}

    def level(rid: int, path: frozenset[int]) -> int:
        if rid not in resolved or rid in path:  # a plain row, or a cycle (its rows are never visible)
            return 0
        if rid not in depth:
            depth[rid] = 1 + max((level(s, path | {rid}) for s in resolved[rid]), default=0)
        return depth[rid]

    ordered = dict(sorted(resolved.items(), key=lambda kv: (level(kv[0], frozenset()), kv[0])))
    out = replace(idx, derived=MappingProxyType(ordered), derived_all=FrozenBitMap(ordered.keys()), lineage=MappingProxyType(lineage), sources=MappingProxyType(rows))
    return out, moved


def _resolve(rid: int, lineage: tuple[str | int, ...], rows: Mapping[str, FrozenBitMap]) -> tuple[int, ...]:
    """The rows a derived row's visibility needs: every live row of each source
    document (GONE, never visible, for a document with none), or the row IDs
    an older store recorded."""
    out: set[int] = set()
    for d in lineage:
        if isinstance(d, int):
            out.add(d)
        elif rows.get(d):
            out.update(rows[d])
        else:
            out.add(GONE)
    out.discard(rid)
    return tuple(sorted(out))


def _names_of(conn: Connection, row_ids: set[int]) -> dict[int, str]:
    """Older stores' lineage by row ID, read by name from now on: each live
    source row → its external id (a chunk → its document), so that the
    source's next replace keeps the derived row. A source row gone already
    stays a row ID (never visible)."""
    t = db.rows.c
    out: dict[int, str] = {}
    for part in db.chunks(sorted(row_ids)):
        for rid, ext, parent in conn.execute(select(t.row_id, t.external_id, t.parent).where(t.row_id.in_(list(part)), t.state == "live")):
            out[int(rid)] = parent if parent and ext == f"{parent}#{chunk_no(ext)}" else ext
    return out


def _frozen(attrs: dict[str, Mapping[str, FrozenBitMap]]) -> Mapping[str, Mapping[str, FrozenBitMap]]:
    return MappingProxyType({a: v if isinstance(v, (MappingProxyType, Layered)) else MappingProxyType(v) for a, v in attrs.items()})


def _build(raw: Mapping[tuple[str, str], FrozenBitMap]) -> TenantIndex:
    attrs: dict[str, dict[str, FrozenBitMap]] = defaultdict(dict)
    classes: dict[int, FrozenBitMap] = {}
    rows = EMPTY
    for (attr, value), bm in raw.items():
        if (attr, value) == TENANT_ROWS:
            rows = bm
        elif attr == CLASS_ATTR:
            classes[int(value)] = bm
        else:
            attrs[attr][value] = bm
    return TenantIndex(rows, _frozen(dict(attrs)), MappingProxyType(classes))
