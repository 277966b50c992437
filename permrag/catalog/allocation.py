"""Permission-aware row IDs: rows that share their policy-relevant
attributes get IDs from blocks of their own.

Such rows ("a visibility class") are visible to exactly the same users, so
if they sit in contiguous ID blocks, every compiled bitmap is a union of few
runs (ARCHITECTURE.md: 178 bytes vs 126 KB for a 20-of-200-departments union
over 1M rows) and runs become a few range terms in a filter. A class's blocks
grow geometrically, so a class of n rows spans O(log n) runs however its rows
were interleaved at ingest. ``mode="sequential"`` hands out IDs in arrival
order instead (the benchmark's baseline).

Each class also gets a small integer ``vclass``, stored with the row in the
catalog and in Milvus: a visible set that is a union of whole classes can be
filtered as ``vclass in [...]``, however scattered the classes' IDs are.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from .. import db
from ..acl import Acl
from ..errors import CatalogError
from .bitmaps import MAX_ROW_ID
from .rows import RowRecord, RowSpec

MIN_BLOCK = 64
MAX_BLOCK = 1 << 22
# Where a row came from (set by the file loaders and chunking): per file or
# per chunk, so in the class key they would make every file, or every page of
# it, a class of its own (measured: 165 classes for 349 chunks of 60 files).
# Rules may still select by them: classes only speed plans up, the planner
# checks every class against the caller's bitmap (search/planner.py).
SOURCE_ATTRS = frozenset({"source", "title", "page", "heading"})
MEMO = 4096  # class keys remembered (the memo starts again when full)


def class_key(payload: object) -> str:
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(raw.encode()).hexdigest()


def _memo_key(keep: Mapping[str, Any], keys: list[tuple[str, str]]) -> tuple | None:
    """A hashable form of normalised attributes (strings and lists of
    strings); None for anything else, which is keyed by its JSON alone (a
    tuple would equate ``True`` with ``1``)."""
    out = []
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
        self._memo: dict[tuple, str] = {}  # kept (attr, value) pairs and ACL keys → class key

    def class_of(self, attrs: Mapping[str, Any], derived: Sequence[int] | None = None, acl: Acl | None = None) -> str:
        """The class key of a row. Under co-visibility placement with ACLs
        (``group_by="visibility+acl"``) the row's ACL is part of it: rows
        named by one ACL are then classes (and groups) of their own, so a
        user they name searches whole partitions instead of ACL rows
        scattered over every class (benchmarks/bench_search.py, ACL-heavy).
        Elsewhere it is not: a store whose every document has an ACL of its
        own would get a class per document, and role groups split by ACL."""
        if derived:
            return class_key(["derived", sorted(int(d) for d in derived)])
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
        new class, placed anew (ingest/regroup.py). Rows keep their class."""
        b = db.id_blocks.c
        gone = [k for k, cid in conn.execute(select(b.class_key, b.class_id).where(b.tenant == tenant)) if not keep(k, int(cid))]
        for part in db.chunks(gone):
            conn.execute(delete(db.id_blocks).where(b.tenant == tenant, b.class_key.in_(list(part))))
        return len(gone)

    def size_hint(self, specs: Sequence[RowSpec]) -> dict[tuple[str, str], int]:
        """Rows per (tenant, class) of a whole ingest, so that its batches
        share one block per class (see :meth:`allocate`)."""
        hint: dict[tuple[str, str], int] = defaultdict(int)
        for s in specs:
            if not s.derived_from:
                hint[(s.tenant, self.class_of(s.attrs, acl=s.acl))] += 1
        return hint

    def allocate(
        self,
        conn: Connection,
        specs: Sequence[RowSpec],
        sources: Mapping[tuple[str, str], int],
        hint: dict[tuple[str, str], int],
    ) -> list[RowRecord]:
        """Records with fresh IDs for ``specs``, in order.

        ``sources`` maps (tenant, external id) of already stored sources to
        their row IDs; a source in the same batch must come before its
        derived row. ``hint`` (from :meth:`size_hint`, consumed as rows are
        allocated) sizes each new block for the rows still to come.
        """
        ids: dict[tuple[str, str], int] = {}
        vclass: dict[tuple[str, str], int] = {}

        def source_ids(s: RowSpec) -> list[int]:
            if not s.derived_from:
                return []
            return sorted({ids.get((s.tenant, x), sources.get((s.tenant, x), -1)) for x in s.derived_from})

        if self.mode == "sequential":
            end = _bump_ids(conn, len(specs))
            for i, s in enumerate(specs):
                ids[(s.tenant, s.external_id)] = end - len(specs) + i
            for s in specs:
                row = (None, None) if s.derived_from else (s.attrs, s.acl)
                vclass[(s.tenant, s.external_id)] = self._class_row(conn, s.tenant, self.class_of(s.attrs, source_ids(s), s.acl), *row)[0]
        else:
            # Group by (tenant, class) in input order; derived rows come after
            # all plain rows so their sources already have IDs.
            groups: dict[tuple[str, str], list[RowSpec]] = {}
            for s in specs:
                if not s.derived_from:
                    groups.setdefault((s.tenant, self.class_of(s.attrs, acl=s.acl)), []).append(s)
            for (tenant, key), members in groups.items():
                expected = max(len(members), hint.get((tenant, key), 0))
                if (tenant, key) in hint:
                    hint[(tenant, key)] = max(0, hint[(tenant, key)] - len(members))
                cid, got = self._take_ids(conn, tenant, key, len(members), expected, members[0].attrs, members[0].acl)
                for s, rid in zip(members, got):
                    ids[(s.tenant, s.external_id)] = rid
                    vclass[(s.tenant, s.external_id)] = cid
            for s in specs:  # one at a time: a derived row's source may be in the batch
                if s.derived_from:
                    cid, (rid,) = self._take_ids(conn, s.tenant, self.class_of({}, source_ids(s)), 1)
                    ids[(s.tenant, s.external_id)] = rid
                    vclass[(s.tenant, s.external_id)] = cid
        return [
            RowRecord(
                ids[(s.tenant, s.external_id)], s.tenant, s.external_id, s.attrs, s.parent, tuple(source_ids(s)), vclass[(s.tenant, s.external_id)], s.acl
            )
            for s in specs
        ]

    def _class_row(self, conn: Connection, tenant: str, key: str, attrs: Mapping[str, Any] | None = None, acl: Acl | None = None) -> tuple[int, int, int, int]:
        """(class_id, next_id, end_id, size) of a class, created if new (placed
        by co-visibility where the store asks for it and ``attrs`` are given)."""
        b = db.id_blocks.c
        row = conn.execute(
            select(b.class_id, b.next_id, b.end_id, b.size).where(b.tenant == tenant, b.class_key == key).with_for_update()
        ).first()
        if row is not None:
            return int(row[0]), int(row[1]), int(row[2]), int(row[3])
        cid = self.placement.class_id(conn, tenant, attrs, acl) if self.placement is not None and attrs is not None else None
        if cid is None:
            cid = db.bump(conn, "next_class_id") - 1
        conn.execute(db.id_blocks.insert().values(tenant=tenant, class_key=key, class_id=cid, next_id=0, end_id=0, size=0))
        return cid, 0, 0, 0

    def _take_ids(
        self, conn: Connection, tenant: str, key: str, n: int, expected: int = 0, attrs: Mapping[str, Any] | None = None, acl: Acl | None = None
    ) -> tuple[int, list[int]]:
        """The class's ID and ``n`` fresh row IDs from its blocks."""
        b = db.id_blocks.c
        cid, nxt, end, size = self._class_row(conn, tenant, key, attrs, acl)
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
        conn.execute(update(db.id_blocks).where(b.tenant == tenant, b.class_key == key).values(next_id=nxt, end_id=end, size=size))
        return cid, ids


def _bump_ids(conn: Connection, n: int) -> int:
    end = db.bump(conn, "next_row_id", n)
    if end - 1 > MAX_ROW_ID:
        raise CatalogError(f"row IDs exhausted: permrag allocates 32-bit row IDs (at most {MAX_ROW_ID})")
    return end
