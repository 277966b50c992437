"""Read documents for ingest: a JSONL file, or a folder of .txt / .md files.

JSONL: one object per line with ``external_id``, ``text`` and optional
``tenant``, ``attrs``, ``parent``; an invalid line is an error naming the
line. Folder: every ``*.txt`` / ``*.md`` below it is one document whose
external id is its relative path; its attributes come from a sidecar
``<file>.attrs.json`` if present, else from its folders
(``hr/public/leave.md`` → ``{"dept": "hr", "level": "public"}`` with
``folder_attrs=["dept", "level"]``, or ``{"folder": "hr/public"}`` by default).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..catalog import row_spec
from ..errors import CatalogError, PermragError

SUFFIXES = (".txt", ".md")


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


def load_folder(path: Path, folder_attrs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    docs = []
    for f in sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
        rel = f.relative_to(path)
        sidecar = f.with_name(f.name + ".attrs.json")
        try:
            if sidecar.exists():
                try:
                    attrs = json.loads(sidecar.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise CatalogError(f"{sidecar}: not JSON ({exc.msg})") from None
            else:
                parts = list(rel.parent.parts)
                attrs = dict(zip(folder_attrs, parts)) if folder_attrs else ({"folder": "/".join(parts)} if parts else {})
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{f}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise CatalogError(f"{f}: {exc.strerror or exc}") from None
        docs.append({"external_id": rel.as_posix(), "text": text, "attrs": attrs})
    return docs


def load_path(path: str | Path, folder_attrs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Documents from a JSONL file or a folder."""
    p = Path(path)
    if p.is_dir():
        return load_folder(p, folder_attrs)
    if p.is_file():
        return load_jsonl(p)
    raise CatalogError(f"{path}: no such file or folder")
