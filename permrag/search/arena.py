"""The memory of in-process ranking (search/in_process.py): one block of rows per tenant.

Each tenant's cached rows live once, in one block of unit vectors (its
:class:`Arena`) with their texts and names beside; a visible set
(:class:`VisibleSet`) is the arena slots of its rows, so the sets of many users
share their rows instead of holding copies. Rows are only appended; making room
builds a new arena, and the sets of the old one stay valid for the searches
that hold them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyroaring import AbstractBitMap

ROW_OVERHEAD = 200  # bytes per cached row beside its vector and text (slot map, names)
WHOLE_ARENA = 3  # a set of at least 1/3 of its arena's rows is ranked by one product over the arena


@dataclass(frozen=True)
class Row:
    unit: np.ndarray  # the stored vector, scaled to length 1 (zeros stay zeros)
    text: str
    tenant: str
    external_id: str


class Arena:
    """One tenant's cached rows: unit vectors in one block (row ``slot[id]``), names and texts beside.
    Rows are only appended; making room builds a new arena (sets of the old one stay valid)."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.vectors = np.zeros((max(1, capacity), dim), dtype=np.float32)
        self.n = 0
        self.slot: dict[int, int] = {}
        self.meta: list[tuple[str, str, str]] = []  # (text, tenant, external id) by slot
        self.text_bytes = 0
        self.used = time.monotonic()

    @property
    def nbytes(self) -> int:
        return self.vectors.nbytes + self.text_bytes + ROW_OVERHEAD * self.n

    def add(self, rows: Iterable[tuple[int, Row]], room: int) -> None:
        """Append rows not held yet; the block grows by a quarter at a time, within ``room`` bytes of vectors."""
        new = [(i, r) for i, r in rows if i not in self.slot]
        if not new:
            return
        need = self.n + len(new)
        if need > len(self.vectors):
            row_bytes = self.vectors.shape[1] * 4
            cap = max(need, min(int(need * 1.25), need + max(0, room) // max(1, row_bytes)))
            grown = np.zeros((cap, self.vectors.shape[1]), dtype=np.float32)
            grown[: self.n] = self.vectors[: self.n]
            self.vectors = grown  # (a search ranking meanwhile holds the old block: its rows are the same)
        for i, r in new:
            self.vectors[self.n] = r.unit
            self.meta.append((r.text, r.tenant, r.external_id))
            self.text_bytes += len(r.text)
            self.slot[i] = self.n
            self.n += 1  # (after the row is written: a reader sees only whole rows)

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """The slots of rows held (each of ``ids`` must be)."""
        return np.fromiter((self.slot[i] for i in ids.tolist()), dtype=np.int64, count=len(ids))

    def bytes_of(self, ids: set[int]) -> int:
        """What the held rows ``ids`` take."""
        return sum(len(self.meta[self.slot[i]][0]) for i in ids) + len(ids) * (self.vectors.shape[1] * 4 + ROW_OVERHEAD)

    def kept(self, ids: set[int]) -> Arena:
        """A new arena holding the rows ``ids`` (held here) alone."""
        order = np.asarray(sorted(ids), dtype=np.int64)
        slots = self.slots_of(order)
        new = Arena(self.vectors.shape[1], len(order))
        new.vectors[: len(order)] = self.vectors[slots]
        new.meta = [self.meta[s] for s in slots.tolist()]
        new.slot = {i: n for n, i in enumerate(order.tolist())}
        new.text_bytes = sum(len(m[0]) for m in new.meta)
        new.n = len(order)
        return new


@dataclass(frozen=True)
class VisibleSet:
    visible: AbstractBitMap  # the snapshot's bitmap this entry was built for (identity-checked)
    ids: np.ndarray  # row IDs with a stored row, ascending
    slots: np.ndarray  # their rows in ``arena``
    arena: Arena

    def vectors(self, copy: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The block to score and, unless it is the set's own rows in order, which of its scores are the set's."""
        if copy is not None:
            return copy, None
        if WHOLE_ARENA * len(self.slots) >= self.arena.n:  # (the whole arena too)
            block = self.arena.vectors
            return block[: min(self.arena.n, len(block))], self.slots
        return self.arena.vectors[self.slots], None


def row_of(rec: dict[str, Any]) -> Row:
    v = np.asarray(rec["dense"], dtype=np.float32)
    n = float(np.linalg.norm(v))
    return Row(v / n if n > 0 else v, str(rec.get("text", "")), str(rec.get("tenant", "")), str(rec.get("external_id", "")))
