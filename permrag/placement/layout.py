"""Rows kept physically apart by visibility class: Milvus partitions per class group.

A permissioned search can at best be as fast as a search over a collection
holding only the caller's rows (a per-user *silo*). No filter expression gets
there on Milvus Lite 3.2.2: any filter, even one matching nothing, costs a
Python pass over every row in scope (measured, 100k × 384, FLAT: 108 ms for a
filter matching nothing, 110 ms for ``row_id < 100``), while naming
partitions prunes whole segments before that pass (one partition of 100 rows
3.6 ms, ten 6.2 ms, 100 35 ms; a partition plus a residual filter 2.3 ms).

So each tenant collection is split into partitions by *class group*: a row
of visibility class ``c`` (catalog/allocation.py: rows with equal
policy-relevant attributes) lives in partition ``g<c mod groups>``. A class
never changes for a row ID (row records are immutable; a metadata update is a
replace with new IDs), so a row never moves. A search names only the groups
that hold visible rows and adds a residual filter only where a named group
also holds hidden rows (search/planner.py); every hit is still verified
against the caller's bitmap (search/execute.py), so a stale plan that names
a group cannot make a row visible.

Why ``mod groups`` and not one partition per class: partitions are bounded
(a 2.3.5 server refuses the 4,097th of a collection, and counts partitions
× shards against a cluster-wide cap), while classes are not. Class IDs are
handed out in order of first appearance, so a tenant's first ``groups``
classes get a partition each and later ones share. Partitions are created
on first use, so a tenant with 20 classes has 20 partitions.

A collection records its layout in a marker partition ``permrag_groups_<n>``
created right after it, before its index: a collection cannot be loaded
without its index, and a process that finds one another process is creating
reads the layout only once it loads (backends/milvus.py), so it never takes
a grouped collection for a flat one. A collection without a marker (made by
an older permrag) stays flat: rows in ``_default`` and filters only, so old
stores keep working.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Groups per tenant collection, by backend kind. Lite: a named partition
# costs about 0.2 ms (1,000 partitions of 100 rows, above). A 2.3.5 server
# suffers from many: with 1,000 partitions of 100 rows (100k rows, flushed)
# an unfiltered search took 1.2 s and a one-partition search 138 ms, against
# 3.7 ms with 100 partitions of 1,000 rows.
#
# A store opened with no layout options chooses this many, placed by
# co-visibility with ACLs in the key (placement/covis.py), and records it.
# Measured at 1M rows, roles made before the ingest (bench_search): on a
# 2-core 2.3.5 server 32 groups put 50 % at 1.11-1.19x a silo (64 groups
# 1.19-1.31x: each sealed segment a search names costs ~0.3-0.4 ms of its
# own; flat 1.69-1.97x); on Lite 3.2.2 64 groups put 50 % at 0.76-0.81x.
# Roles made after the ingest leave groups partly visible (exact, not
# faster) until the rows move: the store's placement keeper does that in the
# background (placement/keeper.py), rag.repartition() at once. Partitions are
# created on first use, so a tenant with 5 classes has 5. ``partitions=0``
# keeps one partition and filters only.
#
# A store with an ANN index (HNSW, IVF_FLAT) given no layout stays flat: each
# partition's segments carry an index of their own and a search pays for
# every segment it names, so a large visible set over many partitions costs
# several silos (2.3.5 server, 100k rows, HNSW, 32 partitions: a search of
# every row 17.5 ms against 2.8 ms flat; bench_search --index HNSW). Small sets
# are ranked in process either way, and everything visible is one index search.
DEFAULT_GROUPS = {"lite": 64, "server": 32}
MARKER = "permrag_groups_"
_MARKER_RE = re.compile(rf"^{MARKER}(\d+)$")


@dataclass(frozen=True)
class Grouping:
    """How a grouped collection maps visibility classes to partitions."""

    groups: int

    def of(self, vclass: int) -> int:
        return int(vclass) % self.groups

    @staticmethod
    def partition(group: int) -> str:
        return f"g{int(group)}"

    @property
    def marker(self) -> str:
        return f"{MARKER}{self.groups}"


def read_layout(partitions: Iterable[str]) -> Grouping | None:
    """The grouping a collection's partitions record, or None for a flat one."""
    for p in partitions:
        m = _MARKER_RE.match(p)
        if m:
            return Grouping(int(m.group(1)))
    return None


def by_partition(grouping: Grouping, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows split by the partition of their class, in input order."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(grouping.partition(grouping.of(int(r["vclass"]))), []).append(r)
    return out


class Partitions:
    """One tenant collection's partitions as this process knows them, and its grouping.

    ``c`` is the pymilvus client of the moment (a server reconnect replaces it)."""

    def __init__(self, c: Any, name: str) -> None:
        self.name = name
        self.known: set[str] = set()
        self.grouping: Grouping | None = None
        self.refresh(c)

    def refresh(self, c: Any) -> None:
        self.known = set(c.list_partitions(self.name))
        self.grouping = read_layout(self.known)

    def ensure(self, c: Any, part: str, *, load: bool) -> None:
        """Create ``part`` if needed (a 2.3 server also needs it loaded)."""
        if part in self.known:
            return
        try:
            c.create_partition(self.name, part)
        except Exception:  # another process made it meanwhile: fine
            if not c.has_partition(self.name, part):
                raise
        if load:
            c.load_partitions(self.name, [part])
        self.known.add(part)

    def names(self, c: Any, groups: Sequence[int]) -> list[str] | None:
        """Partition names of ``groups`` that exist (None: search the whole collection).

        A group the catalog knows but this process has not seen created is
        looked up once more; one that still does not exist holds no row."""
        if not groups or self.grouping is None:
            return None
        names = [self.grouping.partition(g) for g in groups]
        if any(p not in self.known for p in names):
            self.refresh(c)
        return [p for p in names if p in self.known]
