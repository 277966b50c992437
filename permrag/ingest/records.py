"""What a folder sync records of each document: the hashes of the file as
read and the document's print in the catalog (see :mod:`.sync`).

The ``permrag_sync`` table has two 64-character columns: the content hash,
and the metadata hash's first 31 hex digits, a dot and the print (32 hex
digits). Records written before prints hold the whole metadata hash (no
dot); their documents are checked for presence until their next write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy.engine import Engine

from ..catalog.rows import named_rows
from ..storage import db
from .loaders.folder import FileBytes
from .loaders.walk import SIDECARS

NO_PRINT = "0" * 32  # the print of a document the catalog did not hold right after its write


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def hashes(item: FileBytes, folder_attrs: Sequence[str] | None, settings: bytes) -> tuple[str, str]:
    """(content hash, metadata hash) of one file as read, without parsing it."""
    content = _sha(item.data, settings)
    sides = [item.sides.get(x, b"-") for x in SIDECARS]
    meta = _sha(json.dumps([list(folder_attrs or ()), list(PurePosixPath(item.rel).parent.parts)]).encode(), *sides)
    return content, meta


def doc_print(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str | None:
    """A document's live rows in the catalog, ``(external id, stored
    attributes)`` each (the ACL among them), as one value (None: it has
    none). Not their row IDs, which a regroup or a metadata update renews
    without changing the document."""
    if not rows:
        return None
    parts = [[ext, attrs] for ext, attrs in sorted(rows, key=lambda r: r[0])]
    return _sha(json.dumps(parts, sort_keys=True, default=str).encode())[:32]


def catalog_prints(engine: Engine, tenant: str, ids: Sequence[str]) -> dict[str, str | None]:
    """The print of each document of ``ids`` as the catalog holds it now: one
    read of the stored rows (their attributes as stored, nothing parsed)."""
    t = db.rows.c
    found: dict[str, list[tuple[str, Mapping[str, Any]]]] = {e: [] for e in ids}
    with db.reading(engine, "reading documents") as conn:
        for part in db.chunks(sorted(found)):
            for row in named_rows(conn, tenant, part, columns=[t.row_id, t.external_id, t.parent, t.attrs]):
                doc = row.parent if row.parent in found else row.external_id
                if doc in found:
                    found[doc].append((row.external_id, row.attrs))
    return {e: doc_print(rows) for e, rows in found.items()}


def pack(meta: str, printed: str | None) -> str:
    """The metadata column: the metadata hash's first 31 digits, '.', the print."""
    return f"{meta[:31]}.{printed or NO_PRINT}"


def unpack(stored: str) -> tuple[str, str | None]:
    """(metadata hash prefix, print); records written before prints have none."""
    if len(stored) == 64 and stored[31] == ".":
        return stored[:31], stored[32:]
    return stored[:31], None
