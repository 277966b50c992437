"""The seam between permrag and a vector store: a small protocol.

Everything permrag asks of a search backend is here: bind the store, keep
one collection per tenant (its rows in partitions by visibility-class group,
layout.py), write and delete rows, search under a filter in named groups,
read texts and vectors back, list row IDs (for reconcile). The Milvus
implementation is :mod:`permrag.backends.milvus`; nothing else in permrag
calls pymilvus.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import UnsupportedError

MAX_LIMIT = 16_384  # Milvus' largest topk
MAX_TEXT_BYTES = 65_535


@dataclass(frozen=True)
class Capabilities:
    """What the connected backend can do."""

    kind: str  # "lite" or "server"
    version: tuple[int, int, int]
    bm25: bool

    def require(self, mode: str) -> None:
        if mode in ("keyword", "hybrid") and not self.bm25:
            raise UnsupportedError(
                f"mode {mode!r} needs BM25, which Milvus {self.kind} {'.'.join(map(str, self.version))} lacks (Milvus Lite and servers >= 2.5 have it)",
                hint="use mode='dense'",
                cli_hint="use --mode dense",
            )


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)


def detect(kind: str, version_text: str) -> Capabilities:
    """Capabilities by kind and version: Milvus Lite and servers ≥ 2.5 have
    BM25. (Servers ≥ 2.5 also have filter templates, and newer ones
    ``membership_match`` over a roaring blob; permrag does not use them yet —
    its filters hold few terms — and no server that runs here has them.)"""
    v = parse_version(version_text)
    if kind == "lite":
        return Capabilities("lite", v, bm25=True)
    return Capabilities("server", v, bm25=v >= (2, 5, 0))


@dataclass(frozen=True)
class RawHit:
    """A hit as the backend stored it; verified against the catalog before use.
    ``record``: the catalog record it was verified against (set by the verify
    step, so that a request reads each hit's record once)."""

    row_id: int
    score: float
    text: str
    tenant: str = ""
    external_id: str = ""
    record: Any = field(default=None, compare=False, repr=False)


class SearchBackend(Protocol):
    """What permrag needs from a vector store (tenants are named by number)."""

    kind: str

    @property
    def capabilities(self) -> Capabilities: ...

    def bind(self, store_id: str, *, bound_before: bool) -> None: ...

    def ensure_tenant(self, tenant_no: int, dim: int) -> None: ...

    def has_tenant(self, tenant_no: int) -> bool: ...

    def insert(self, tenant_no: int, rows: Sequence[dict[str, Any]]) -> None: ...

    def delete(self, tenant_no: int, row_ids: Sequence[int]) -> None: ...

    def search(
        self, tenant_no: int, mode: str, *, vectors: np.ndarray | None, texts: Sequence[str] | None, expr: str, limit: int, groups: Sequence[int] = (), admits: float = 1.0
    ) -> list[list[RawHit]]: ...

    def grouping(self, tenant_no: int) -> Any: ...  # layout.Grouping | None

    def texts(self, tenant_no: int, row_ids: Sequence[int]) -> dict[int, str]: ...

    def stored(self, tenant_no: int, row_ids: Sequence[int], fields: Sequence[str] = ("text", "dense"), *, strong: bool = True) -> dict[int, dict[str, Any]]: ...

    def vector(self, tenant_no: int, row_id: int) -> np.ndarray | None: ...

    def all_ids(self, tenant_no: int, expr: str = "", groups: Sequence[int] = ()) -> set[int]: ...

    def flush(self, tenant_no: int) -> None: ...

    def close(self) -> None: ...


def raw_hit(h: Any, sign: float) -> RawHit:
    """A pymilvus search hit as a :class:`RawHit` (``sign`` undoes Lite's negated BM25 scores)."""
    entity = h.get("entity", {}) or {}
    rid = entity.get("row_id", h.get("id", h.get("row_id")))
    return RawHit(int(rid), sign * float(h["distance"]), entity.get("text", ""), entity.get("tenant", ""), entity.get("external_id", ""))
