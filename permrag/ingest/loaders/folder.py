"""Documents from a folder: one document per file a loader is registered for.

A file's external id is its path relative to the folder (``hr/leave.md``).
Its attributes are, in increasing priority:

* its folders: ``{"folder": "hr/public"}``, or with ``folder_attrs=["dept",
  "level"]`` ``{"dept": "hr", "level": "public"}``;
* ``source`` (the relative path) and ``title`` (when the format has one);
* a sidecar file beside it: ``<file>.meta.json`` holding
  ``{"attrs": {...}, "acl": {...}}`` (both optional; ``acl`` as
  ``add_documents`` takes it), or the older ``<file>.attrs.json`` holding
  the attributes alone.

Nothing in a folder aborts the others. A file no loader is registered for,
an empty file, and one that cannot be read (corrupt, not text, bad sidecar,
too long) is reported in :class:`LoadReport` with the reason; hidden files
and folders (``.git``, ``.DS_Store``) and sidecars are passed over silently.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ...catalog import row_spec
from ...errors import CatalogError, PermragError
from .jsonl import load_jsonl
from .registry import Parsed, loader_for

log = logging.getLogger(__name__)

SIDECARS = (".meta.json", ".attrs.json")
MAX_LABEL = 200  # characters kept of a title or heading attribute


@dataclass
class LoadReport:
    """What a folder gave: ``documents`` and the files left out, as
    ``(relative path, reason)`` — ``skipped`` (no loader for the type, or
    empty) and ``failed`` (could not be read)."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # external id → file

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self, limit: int = 20) -> str:
        lines = []
        for what, items in (("skipped", self.skipped), ("failed", self.failed)):
            if items:
                lines.append(f"{len(items)} file(s) {what}:")
                lines += [f"  {p}: {why}" for p, why in items[:limit]]
                if len(items) > limit:
                    lines.append(f"  … and {len(items) - limit} more")
        return "\n".join(lines)


def label(text: str | None) -> str | None:
    """A title or heading as an attribute value: one line, trimmed, bounded."""
    if not text:
        return None
    one = re.sub(r"\s+", " ", text).strip()
    return one[:MAX_LABEL].rstrip() or None


def read_sidecar(f: Path) -> tuple[dict[str, Any] | None, Any]:
    """(attrs, acl) from ``f``'s sidecar; (None, None) when it has none."""
    for suffix in SIDECARS:
        side = f.with_name(f.name + suffix)
        if not side.is_file():
            continue
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CatalogError(f"sidecar {side.name} is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CatalogError(f"sidecar {side.name} must hold a JSON object")
        if suffix == ".attrs.json":
            return data, None
        unknown = set(data) - {"attrs", "acl"}
        if unknown:
            raise CatalogError(f"sidecar {side.name}: unknown key(s) {sorted(unknown)} (expected 'attrs', 'acl')")
        attrs = data.get("attrs") or {}
        if not isinstance(attrs, dict):
            raise CatalogError(f"sidecar {side.name}: 'attrs' must be an object")
        return attrs, data.get("acl")
    return None, None


def document(root: Path, f: Path, parsed: Parsed, folder_attrs: Sequence[str] | None) -> dict[str, Any]:
    """The document mapping of one parsed file (see the module docstring)."""
    rel = f.relative_to(root)
    parts = list(rel.parent.parts)
    attrs: dict[str, Any] = dict(zip(folder_attrs, parts)) if folder_attrs else ({"folder": "/".join(parts)} if parts else {})
    attrs["source"] = rel.as_posix()
    title = label(parsed.title)
    if title:
        attrs["title"] = title
    attrs.update(parsed.meta)
    side_attrs, acl = read_sidecar(f)
    attrs.update(side_attrs or {})
    doc: dict[str, Any] = {
        "external_id": rel.as_posix(),
        "text": parsed.text,
        "attrs": attrs,
        "sections": [{"text": s.text, "page": s.page, "heading": label(s.heading)} for s in parsed.sections if s.text.strip()],
    }
    # Every file sits in its folder: folder ACLs (rag.identity.set_folder_acl)
    # reach it unless its sidecar's acl says "inherit": false.
    doc["acl"] = {"folder": "/" + "/".join(parts), **acl} if isinstance(acl, dict) else acl if acl is not None else {"folder": "/" + "/".join(parts)}
    return doc


def files_of(root: Path, sidecars: set[Path] | None = None) -> list[Path]:
    """Every file below ``root`` that is neither hidden nor a sidecar, sorted
    (and the sidecars' paths added to ``sidecars``, where given)."""
    out = []
    for f in root.rglob("*"):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if f.name.endswith(SIDECARS):
            if sidecars is not None:
                sidecars.add(f)
            continue
        out.append(f)
    return sorted(out)


def load_file(root: Path, f: Path, folder_attrs: Sequence[str] | None, report: LoadReport, max_chars: int | None, *, validate: bool = True) -> None:
    """Load one file into ``report`` (a document, or the reason it is not one;
    ``validate=False``: its id, attributes and ACL are left for the caller to check)."""
    rel = f.relative_to(root).as_posix()
    loader = loader_for(f)
    if loader is None:
        report.skipped.append((rel, f"no loader for {f.suffix.lower() or 'files without a suffix'}"))
        return
    try:
        if f.stat().st_size == 0:
            report.skipped.append((rel, "empty file"))
            return
        doc = document(root, f, loader(f), folder_attrs)
        if not doc["text"].strip():
            report.skipped.append((rel, "no text in it"))
            return
        if max_chars is not None and len(doc["text"]) > max_chars:
            raise CatalogError(f"{len(doc['text']):,} characters, over the limit of {max_chars:,} (max_document_chars)")
        if validate:
            row_spec(doc)  # the external id and attributes, checked per file
    except PermragError as exc:
        report.failed.append((rel, str(exc).replace(f"{f}: ", "").replace(str(f), rel)))
        return
    except OSError as exc:
        report.failed.append((rel, exc.strerror or str(exc)))
        return
    except Exception as exc:  # a parser of a real file can fail in any way; report it, go on
        log.debug("loader failed on %s", f, exc_info=True)
        report.failed.append((rel, f"{type(exc).__name__}: {str(exc)[:200]}"))
        return
    report.documents.append(doc)
    report.files[doc["external_id"]] = f


def load_folder(path: str | Path, folder_attrs: Sequence[str] | None = None, *, max_chars: int | None = None) -> LoadReport:
    """Every loadable file below ``path`` as a document; what was left out, and why."""
    root = Path(path)
    if not root.is_dir():
        raise CatalogError(f"{path}: not a folder")
    report = LoadReport()
    for f in files_of(root):
        load_file(root, f, folder_attrs, report, max_chars)
    return report


def load_path(path: str | Path, folder_attrs: Sequence[str] | None = None, *, max_chars: int | None = None) -> LoadReport:
    """Documents from a JSONL file (all or nothing) or a folder (file by file)."""
    p = Path(path)
    if p.is_dir():
        return load_folder(p, folder_attrs, max_chars=max_chars)
    if p.is_file():
        return LoadReport(documents=load_jsonl(p))
    raise CatalogError(f"{path}: no such file or folder")
