"""Milvus Lite's derived files, repaired when a crash left them torn.

Milvus Lite (3.x) builds each segment's index in a background thread and
writes it as a sidecar file (``*.idx`` for vectors, ``*.sidx`` for scalars)
in place, not by rename. A process killed while that thread writes leaves a
truncated sidecar, and every later load of the collection fails ("No data
left in file") although the segment data itself is intact. Sidecars are
caches that Lite rebuilds from the segments when they are missing, so a load
that fails is retried once after the collection's sidecars are removed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("permrag.backends")

SIDECAR_SUFFIXES = (".idx", ".sidx")


def sidecars(lite_dir: str | Path, collection: str) -> list[Path]:
    """The index sidecar files of ``collection`` in the Lite data folder."""
    base = Path(lite_dir) / "collections" / collection / "partitions"
    if not base.is_dir():
        return []
    return sorted(p for p in base.glob("*/indexes/*") if p.suffix in SIDECAR_SUFFIXES and p.is_file())


def load_collection(c: Any, collection: str, lite_dir: str | None) -> None:
    """``c.load_collection(collection)``; on Milvus Lite a failed load is
    retried once after the collection's index sidecars are removed (Lite
    rebuilds them from the segment data). Other failures raise as they are."""
    try:
        c.load_collection(collection)
        return
    except Exception:
        if lite_dir is None:
            raise
        files = sidecars(lite_dir, collection)
        if not files:
            raise
    for f in files:
        f.unlink(missing_ok=True)
    log.warning(
        "Milvus Lite could not load collection %r from %s; removed %d index file(s) "
        "(a crash may have torn one) and loading again, which rebuilds them",
        collection,
        lite_dir,
        len(files),
    )
    c.load_collection(collection)


def load_when_ready(c: Any, collection: str, lite_dir: str | None, wait_s: float = 10.0) -> None:
    """:func:`load_collection` for a collection another process may be creating
    at this moment (its index not made yet, so it cannot load): retried for up
    to ``wait_s`` seconds, then the last failure raises."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            load_collection(c, collection, lite_dir)
            return
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
