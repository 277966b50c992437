"""Documents from a JSONL file: one object per line with ``external_id``,
``text`` and optional ``tenant``, ``attrs``, ``parent``, ``acl``; an invalid
line is an error naming the line (a JSONL file is one unit: nothing of it is
ingested if a line is wrong)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...catalog import row_spec
from ...errors import CatalogError, PermragError


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    docs = []
    try:
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CatalogError(f"{path}, line {n}: not JSON ({exc.msg})") from None
                if not isinstance(doc, dict):
                    raise CatalogError(f"{path}, line {n}: expected an object")
                try:
                    row_spec(doc)
                    if "text" in doc and not isinstance(doc["text"], str):
                        raise CatalogError(f"text must be a string, not {type(doc['text']).__name__}")
                except PermragError as exc:
                    raise CatalogError(f"{path}, line {n}: {exc}") from None
                docs.append(doc)
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise CatalogError(f"{path}: {exc.strerror or exc}") from None
    return docs
