"""Permission-aware row IDs: rows that share their policy-relevant
attributes get IDs from blocks of their own.

Such rows ("a visibility class") are visible to exactly the same users, so
if they sit in contiguous ID blocks, every compiled bitmap is a union of few
runs (a small fraction of the bytes of the same rows with scattered IDs)
and runs become a few range terms in a filter. A class's blocks
grow geometrically, so a class of n rows spans O(log n) runs however its rows
were interleaved at ingest. ``mode="sequential"`` hands out IDs in arrival
order instead (the benchmark's baseline).

Each class also gets a small integer ``vclass``, stored with the row in the
catalog and in Milvus: a visible set that is a union of whole classes can be
filtered as ``vclass in [...]``, however scattered the classes' IDs are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from ..domain.acl import Acl
from ..domain.names import class_key
from ..errors import CatalogError
from ..storage import db, direct
from .bitmaps import MAX_ROW_ID
from .rows import RowRecord, RowSpec, one_of

MIN_BLOCK = 64
MAX_BLOCK = 1 << 22
# Where a row came from (set by the file loaders and chunking): per file or
# per chunk, so in the class key they would make every file, or every page of
# it, a class of its own, and a class per file splits every role's rows.
# Rules may still select by them: classes only speed plans up, the planner
# checks every class against the caller's bitmap (search/planner.py).
SOURCE_ATTRS = frozenset({"source", "title", "page", "heading"})
MEMO = 4096  # class keys remembered (the memo starts again when full)


def _memo_key(keep: Mapping[str, Any], keys: list[tuple[str, str]]) -> tuple[Any, ...] | None:
    """A hashable form of normalised attributes (strings and lists of
    strings); None for anything else, which is keyed by its JSON alone (a
    tuple would equate ``True`` with ``1``)."""
    out: list[tuple[str, Any]] = []
    for k, v in keep.items():
        if type(v) is str:
            out.append((k, v))
        elif type(v) is list and all(type(x) is str for x in v):
            out.append((k, tuple(v)))
        else:
            return None
    return (tuple(out), tuple(sorted(keys)))


class Allocator:
    """Row IDs and visibility classes for new rows."""

    def __init__(self, mode: str = "contiguous", policy_attrs: Iterable[str] | None = None) -> None:
        if mode not in ("contiguous", "sequential"):
            raise CatalogError(f"allocation must be 'contiguous' or 'sequential', not {mode!r}")
        self.mode = mode
        self.policy_attrs = frozenset(policy_attrs) if policy_attrs is not None else None
        self.placement: Any = None  # catalog/placement.Placement: class IDs by co-visibility (set by the store)
        self._memo: dict[tuple[Any, ...], str] = {}  # kept (attr, value) pairs and ACL keys → class key

    def class_of(self, attrs: Mapping[str, Any], derived: Sequence[str] | None = None, acl: Acl | None = None) -> str:
        """The class key of a row. Under co-visibility placement with ACLs
        (``group_by="visibility+acl"``) the row's ACL is part of it: rows
        named by one ACL are then classes (and groups) of their own, so a
        user they name searches whole partitions instead of ACL rows
        scattered over every class.
        Elsewhere it is not: a store whose every document has an ACL of its
        own would get a class per document, and role groups split by ACL."""
        if derived:
            return class_key(["derived", sorted(derived)])  # by source documents: readable by the same callers
        names = self.policy_attrs
        keep = {k: v for k, v in attrs.items() if (k not in SOURCE_ATTRS if names is None else k in names)}
        keys = acl.index_keys() if acl is not None and self.placement is not None and self.placement.acls else []
        # a memo keyed on the kept pairs (a document's chunks share their class):
        # the key costs a fraction of the JSON and hash it saves
        memo = _memo_key(keep, keys)
        found = self._memo.get(memo) if memo is not None else None
        if found is None:
            found = class_key([keep, sorted(keys)]) if keys else class_key(keep)
            if memo is not None:
                if len(self._memo) >= MEMO:
                    self._memo.clear()
                self._memo[memo] = found
        return found

    def forget(self, conn: Connection, tenant: str, keep: Callable[[str, int], bool]) -> int:
        """Drop the tenant's class records (key → class ID and ID blocks) that
        ``keep(key, class_id)`` rejects: the next row of such a class starts a
        new class, placed anew (placement/repartition.py). Rows keep their class."""
        b = db.id_blocks.c
        gone = [k for k, cid in conn.execute(select(b.class_key, b.class_id).where(b.tenant == tenant)) if not keep(k, int(cid))]
        for part in db.chunks(gone):
            conn.execute(delete(db.id_blocks).where(b.tenant == tenant, b.class_key.in_(list(part))))
        return len(gone)

    def size_hint(self, specs: Sequence[RowSpec]) -> dict[tuple[str, str], int]:
        """Rows per (tenant, class) of a whole ingest, so that its batches
        share one block per class (see :meth:`allocate`)."""
        hint: dict[tuple[str, str], int] = defaultdict(int)
        for s, key in zip(specs, self._plain_classes(specs)):
            if key is not None:
                hint[(s.tenant, key)] += 1
        return hint

    def _plain_classes(self, specs: Sequence[RowSpec]) -> list[str | None]:
        """The class key of each spec that is not derived (None for those that
        are): once per attrs and ACL object (a document's chunks share them;
        the specs hold them, so no id is reused within the call)."""
        seen: dict[tuple[int, int], str] = {}
        out: list[str | None] = []
        for s in specs:
            if s.derived_from:
                out.append(None)
                continue
            ident = (id(s.attrs), id(s.acl))
            key = seen.get(ident)
            if key is None:
                key = seen[ident] = self.class_of(s.attrs, acl=s.acl)
            out.append(key)
        return out

    def allocate(
        self,
        conn: Connection,
        specs: Sequence[RowSpec],
        sources: Mapping[tuple[str, str], str],
        hint: dict[tuple[str, str], int],
    ) -> list[RowRecord]:
        """Records with fresh IDs for ``specs``, in order.

        ``sources`` maps (tenant, external id) of every derived row's sources
        to their documents (journal.py); a record's ``derived_from`` holds
        those documents. ``hint`` (from :meth:`size_hint`, consumed as rows are
        allocated) sizes each new block for the rows still to come.
        """
        n = len(specs)
        rid_at = [0] * n  # by position in ``specs``
        cid_at = [0] * n

        def source_docs(s: RowSpec) -> tuple[str, ...]:
            return tuple(sorted({sources[(s.tenant, x)] for x in s.derived_from})) if s.derived_from else ()

        if self.mode == "sequential":
            end = _bump_ids(conn, n)
            rid_at = list(range(end - n, end))
            for i, s in enumerate(specs):
                row = (None, None) if s.derived_from else (s.attrs, s.acl)
                cid_at[i] = self._class_row(conn, s.tenant, self.class_of(s.attrs, source_docs(s), s.acl), *row)[0]
        else:
            # Group by (tenant, class) in input order; derived rows come after
            # all plain rows so their sources already have IDs.
            groups: dict[tuple[str, str], list[int]] = {}
            for i, (s, key) in enumerate(zip(specs, self._plain_classes(specs))):
                if key is not None:
                    groups.setdefault((s.tenant, key), []).append(i)
            wanted = []
            for (tenant, key), members in groups.items():
                expected = max(len(members), hint.get((tenant, key), 0))
                if (tenant, key) in hint:
                    hint[(tenant, key)] = max(0, hint[(tenant, key)] - len(members))
                first = specs[members[0]]
                wanted.append((tenant, key, len(members), expected, first.attrs, first.acl))
            for members, (cid, got) in zip(groups.values(), self._take_blocks(conn, wanted) if wanted else []):
                for i, rid in zip(members, got):
                    rid_at[i] = rid
                    cid_at[i] = cid
            for i, s in enumerate(specs):  # one at a time: a derived row's source may be in the batch
                if s.derived_from:
                    cid, (rid,) = self._take_ids(conn, s.tenant, self.class_of({}, source_docs(s)), 1)
                    rid_at[i] = rid
                    cid_at[i] = cid
        return [RowRecord(rid, s.tenant, s.external_id, s.attrs, s.parent, source_docs(s), cid, s.acl) for s, rid, cid in zip(specs, rid_at, cid_at)]

    def _class_row(self, conn: Connection, tenant: str, key: str, attrs: Mapping[str, Any] | None = None, acl: Acl | None = None) -> tuple[int, int, int, int]:
        """(class_id, next_id, end_id, size) of a class, created if new (placed
        by co-visibility where the store asks for it and ``attrs`` are given)."""
        b = db.id_blocks.c
        row = conn.execute(select(b.class_id, b.next_id, b.end_id, b.size).where(b.tenant == tenant, b.class_key == key).with_for_update()).first()
        if row is not None:
            return int(row[0]), int(row[1]), int(row[2]), int(row[3])
        return self._new_class(conn, tenant, key, attrs, acl)

    def _new_class(self, conn: Connection, tenant: str, key: str, attrs: Mapping[str, Any] | None, acl: Acl | None) -> tuple[int, int, int, int]:
        cid = self.placement.class_id(conn, tenant, attrs, acl) if self.placement is not None and attrs is not None else None
        if cid is None:
            cid = db.bump(conn, "next_class_id") - 1
        conn.execute(db.id_blocks.insert().values(tenant=tenant, class_key=key, class_id=cid, next_id=0, end_id=0, size=0))
        return cid, 0, 0, 0

    def _new_classes(self, conn: Connection, new: Sequence[tuple[str, str, Mapping[str, Any] | None, Acl | None]], blocks: dict[tuple[str, str], tuple[int, int, int, int]]) -> None:
        """Classes ``new`` (tenant, key, attrs, acl; distinct, in order) created
        and entered in ``blocks``, numbered in that order (placed by
        co-visibility where the store asks for it and attrs are given)."""
        if not new:
            return
        placed = [i for i, (_, _, attrs, _) in enumerate(new) if attrs is not None] if self.placement is not None else []
        cids = dict(zip(placed, self.placement.class_ids(conn, [(new[i][0], new[i][2] or {}, new[i][3]) for i in placed]))) if placed and self.placement is not None else {}
        rest = [i for i in range(len(new)) if i not in cids]
        if rest:
            first = db.bump(conn, "next_class_id", len(rest)) - len(rest)
            cids.update((i, first + j) for j, i in enumerate(rest))
        for i, (t, k, _, _) in enumerate(new):
            blocks[(t, k)] = (cids[i], 0, 0, 0)
        rows = [(t, k, blocks[(t, k)][0], 0, 0, 0) for t, k, _, _ in new]
        direct.insert_many(conn, db.id_blocks, ("tenant", "class_key", "class_id", "next_id", "end_id", "size"), rows)

    def _take_ids(self, conn: Connection, tenant: str, key: str, n: int, expected: int = 0, attrs: Mapping[str, Any] | None = None, acl: Acl | None = None) -> tuple[int, list[int]]:
        """The class's ID and ``n`` fresh row IDs from its blocks."""
        return self._take_blocks(conn, [(tenant, key, n, expected, attrs, acl)])[0]

    def _take_blocks(self, conn: Connection, wanted: Sequence[tuple[str, str, int, int, Mapping[str, Any] | None, Acl | None]]) -> list[tuple[int, list[int]]]:
        """(class ID, ``n`` fresh row IDs) for each (tenant, class key, n,
        expected, attrs, acl) of ``wanted`` (distinct classes), from the
        classes' blocks: what is left of each current block first, then a new
        block each, of ``expected`` rows at least and twice the last block.

        A few statements for all classes (each statement has a fixed cost,
        and a folder sync's batch touches a class per folder): one read of their
        block records per tenant, one bump of the row-ID counter for every new
        block (carved in order, so the IDs are those one class at a time
        would get), one write of the records."""
        b = db.id_blocks.c
        blocks: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        keys: dict[str, set[str]] = defaultdict(set)
        for tenant, key, *_ in wanted:
            keys[tenant].add(key)
        for tenant, names in keys.items():
            for part in db.parts(conn, sorted(names)):
                q = select(b.class_key, b.class_id, b.next_id, b.end_id, b.size).where(b.tenant == tenant, one_of(b.class_key, part, conn.dialect.name)).with_for_update()
                for key, cid, nxt, end, size in conn.execute(q):
                    blocks[(tenant, key)] = (int(cid), int(nxt), int(end), int(size))
        # new classes at once: one counter bump, one insert (the same IDs as one at a time)
        self._new_classes(conn, [(t, k, attrs, acl) for t, k, _, _, attrs, acl in {(w[0], w[1]): w for w in wanted if (w[0], w[1]) not in blocks}.values()], blocks)
        plans: list[tuple[int, list[int], list[int]]] = []  # (class ID, IDs from its current block, sizes of its new blocks)
        total = 0
        for tenant, key, n, expected, attrs, acl in wanted:
            found = blocks.get((tenant, key))
            cid, nxt, end, size = found if found is not None else self._new_class(conn, tenant, key, attrs, acl)
            ids = list(range(nxt, min(end, nxt + n))) if nxt < end else []
            got, sizes = len(ids), []
            while got < n:
                need = max(n - got, expected - got)
                size = min(MAX_BLOCK, max(MIN_BLOCK, 2 * size, 1 << (need - 1).bit_length()))
                sizes.append(size)
                got += size
            total += sum(sizes)
            plans.append((cid, ids, sizes))
        start = _bump_ids(conn, total) - total if total else 0
        out: list[tuple[int, list[int]]] = []
        records = []
        for (tenant, key, n, *_), (cid, ids, sizes) in zip(wanted, plans):
            found = blocks.get((tenant, key))
            nxt, end, size = (found[1] + len(ids), found[2], found[3]) if found is not None else (0, 0, 0)
            for size in sizes:
                take = min(n - len(ids), size)
                ids.extend(range(start, start + take))
                nxt, end = start + take, start + size
                start += size
            records.append({"tenant": tenant, "class_key": key, "next_id": nxt, "end_id": end, "size": size})
            out.append((cid, ids))
        direct.update_many(conn, db.id_blocks, ("tenant", "class_key"), ("next_id", "end_id", "size"), records)
        return out


def _bump_ids(conn: Connection, n: int) -> int:
    end = db.bump(conn, "next_row_id", n)
    if end - 1 > MAX_ROW_ID:
        raise CatalogError(f"row IDs exhausted: permrag allocates 32-bit row IDs (at most {MAX_ROW_ID})")
    return end
