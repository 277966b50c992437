"""How a store is opened: one validated :class:`Options` value.

``PermRAG.open(home, **options)`` and ``PermRAG.open(home, options=Options(…))``
are the same: keyword options become an :class:`Options`, checked as a whole
before anything is opened. An unknown option is an error that names the
closest known one; the partition options' old names (``groups``,
``group_by``: the word belongs to identity groups) are accepted for one more
release with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .embed import Encoder
from .errors import ConfigError
from .ingest import MAX_DOCUMENT_CHARS
from .placement.keeper import EVERY_S
from .search import Planner
from .search.aio import DEFAULT_WORKERS
from .search.in_process import CACHE_MB, LOCAL_ROWS, PREFETCH_ROWS

RENAMED = {"groups": "partitions", "group_by": "partition_by"}  # old name → new (deprecated for one release)


@dataclass(frozen=True)
class Options:
    """Every option of a store, with its default (see ``PermRAG.open`` for each one's meaning)."""

    encoder: Encoder | str | None = None
    collection: str | None = None
    chunk_size: int = 1000
    chunk_overlap: int = 100
    chunk_unit: str = "chars"
    index: str = "FLAT"
    consistency: str = "Bounded"
    analyzer: str | dict[str, Any] | None = None
    allocation: str = "contiguous"
    policy_attrs: Iterable[str] | None = None
    planner: Planner | None = None
    max_document_chars: int = MAX_DOCUMENT_CHARS
    stale_ingest_after: float = 3600.0
    audit: str = "sync"
    async_workers: int = DEFAULT_WORKERS
    clock: Callable[[], float] | None = None
    partitions: int | None = None
    partition_by: str | None = None
    local_rows: int = LOCAL_ROWS
    prefetch_rows: int = PREFETCH_ROWS
    cache_mb: int = CACHE_MB
    repartition_every: float = EVERY_S
    catalog_only: bool = False

    def __post_init__(self) -> None:
        _count("chunk_size", self.chunk_size, 1, 16_000, "(Milvus VARCHAR holds 65535 bytes)")  # the overlap: Chunker's check
        _count("max_document_chars", self.max_document_chars, 1, None, "")
        _count("async_workers", self.async_workers, 1, 1024, "")
        _count("local_rows", self.local_rows, 0, None, "(0: always search in Milvus)")
        _count("prefetch_rows", self.prefetch_rows, 0, None, "(0: no background read)")
        _count("cache_mb", self.cache_mb, 1, None, "(MiB of rows kept for in-process ranking, every tenant together)")
        if self.partitions is not None:
            _count("partitions", self.partitions, 0, 4096, "(0: one partition, filters only)")
        if isinstance(self.stale_ingest_after, bool) or not isinstance(self.stale_ingest_after, (int, float)) or self.stale_ingest_after < 0:
            raise ConfigError(f"stale_ingest_after {self.stale_ingest_after!r} must be a number of seconds (>= 0)")
        if isinstance(self.repartition_every, bool) or not isinstance(self.repartition_every, (int, float)) or not 0 <= self.repartition_every < float("inf"):
            raise ConfigError(f"repartition_every {self.repartition_every!r} must be a number of seconds (>= 0; 0: rows move only by rag.repartition())")
        if not isinstance(self.catalog_only, bool):
            raise ConfigError(f"catalog_only {self.catalog_only!r} must be True or False")
        for name in ("collection", "chunk_unit", "index", "consistency", "allocation", "audit", "partition_by"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} {value!r} must be a string")
        if self.clock is not None and not callable(self.clock):
            raise ConfigError("clock must be a function returning epoch seconds")

    @classmethod
    def of(cls, given: Mapping[str, Any], base: Options | None = None) -> Options:
        """``base`` (default: the defaults) with the keyword options ``given``."""
        known = {f.name for f in fields(cls)}
        out: dict[str, Any] = {}
        for name, value in given.items():
            if name in RENAMED:
                new = RENAMED[name]
                warnings.warn(f"the option {name}= is deprecated: use {new}= (partitions of the vector collection, not identity groups)", DeprecationWarning, stacklevel=3)
                if new in given:
                    raise ConfigError(f"give {new}= alone, not also its old name {name}=")
                name = new
            if name not in known:
                near = difflib.get_close_matches(name, sorted(known), n=1)
                raise ConfigError(f"unknown option {name!r}" + (f"; did you mean {near[0]!r}?" if near else f"; the options are {', '.join(sorted(known))}"))
            out[name] = value
        return replace(base or cls(), **out)


def _count(name: str, value: object, low: int, high: int | None, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ConfigError(f"{name} {value!r} must be a whole number {span} {why}".rstrip())
