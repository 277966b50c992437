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
from pathlib import PurePosixPath
from typing import Sequence

from ..catalog import RowRecord
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


def doc_print(rows: Sequence[RowRecord]) -> str | None:
    """A document's rows in the catalog as one value (None: it has none): their
    ids, attributes and ACL. Not their row IDs, which a regroup or a
    metadata update renews without changing the document."""
    if not rows:
        return None
    parts = sorted(([r.external_id, r.attrs, r.acl.to_json() if r.acl is not None else None] for r in rows), key=lambda p: p[0])
    return _sha(json.dumps(parts, sort_keys=True, default=str).encode())[:32]


def pack(meta: str, printed: str | None) -> str:
    """The metadata column: the metadata hash's first 31 digits, '.', the print."""
    return f"{meta[:31]}.{printed or NO_PRINT}"


def unpack(stored: str) -> tuple[str, str | None]:
    """(metadata hash prefix, print); records written before prints have none."""
    if len(stored) == 64 and stored[31] == ".":
        return stored[:31], stored[32:]
    return stored[:31], None
