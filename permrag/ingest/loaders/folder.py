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
an empty file, one that cannot be read (corrupt, not text, bad sidecar, too
long), a folder that cannot be listed and a link out of the folder are
reported in :class:`LoadReport` with the reason (the listing:
:mod:`.walk`). A file whose sidecar cannot be read (a link out of the
folder, a broken link, not a regular file) is failed, never loaded without
its sidecar's attributes and ACL; hidden files and folders (``.git``, ``.DS_Store``) and
sidecars are passed over silently. Each file is read once, with its
sidecars, and parsed from the bytes read.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ...catalog import row_spec
from ...errors import CatalogError, PermragError
from .jsonl import load_jsonl
from .registry import Parsed, loader_for, parse, takes_data
from .walk import SIDECARS, Listing, list_folder

log = logging.getLogger(__name__)

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


@dataclass
class FileBytes:
    """One file as read, once: the bytes that are hashed are the bytes that are parsed."""

    rel: str  # path relative to the folder
    path: Path  # the real file
    data: bytes
    sides: dict[str, bytes]  # sidecar suffix → the sidecar's bytes, for those it has


def read_file(listing: Listing, rel: str) -> FileBytes:
    """Read the file ``rel`` of ``listing`` and its sidecars (OSError if it
    cannot; CatalogError if one of its sidecars was not listed as a readable
    file: the file is not read without it, see :mod:`.walk`)."""
    for x in SIDECARS:
        why = listing.bad_sidecars.get(rel + x)
        if why is not None:
            raise CatalogError(f"its sidecar {PurePosixPath(rel).name + x} cannot be read ({why}); the file is not stored without it")
    path = listing.files[rel]
    sides = {x: listing.sidecars[rel + x].read_bytes() for x in SIDECARS if rel + x in listing.sidecars}
    return FileBytes(rel, path, path.read_bytes(), sides)


def read_sidecar(sides: dict[str, bytes], file_name: str) -> tuple[dict[str, Any] | None, Any]:
    """(attrs, acl) from the sidecar bytes of the file ``file_name``; (None, None) when it has none."""
    for suffix in SIDECARS:
        if suffix not in sides:
            continue
        name = file_name + suffix
        try:
            data = json.loads(sides[suffix].decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CatalogError(f"sidecar {name} is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CatalogError(f"sidecar {name} must hold a JSON object")
        if suffix == ".attrs.json":
            return data, None
        unknown = set(data) - {"attrs", "acl"}
        if unknown:
            raise CatalogError(f"sidecar {name}: unknown key(s) {sorted(unknown)} (expected 'attrs', 'acl')")
        attrs = data.get("attrs") or {}
        if not isinstance(attrs, dict):
            raise CatalogError(f"sidecar {name}: 'attrs' must be an object")
        return attrs, data.get("acl")
    return None, None


def document(item: FileBytes, parsed: Parsed, folder_attrs: Sequence[str] | None, external_id: str | None = None) -> dict[str, Any]:
    """The document mapping of one parsed file (see the module docstring)."""
    rel = PurePosixPath(item.rel)
    parts = list(rel.parent.parts)
    attrs: dict[str, Any] = dict(zip(folder_attrs, parts)) if folder_attrs else ({"folder": "/".join(parts)} if parts else {})
    attrs["source"] = item.rel
    title = label(parsed.title)
    if title:
        attrs["title"] = title
    attrs.update(parsed.meta)
    side_attrs, acl = read_sidecar(item.sides, rel.name)
    attrs.update(side_attrs or {})
    doc: dict[str, Any] = {
        "external_id": external_id or item.rel,
        "text": parsed.text,
        "attrs": attrs,
        "sections": [{"text": s.text, "page": s.page, "heading": label(s.heading)} for s in parsed.sections if s.text.strip()],
    }
    # Every file sits in its folder: folder ACLs (rag.identity.set_folder_acl)
    # reach it unless its sidecar's acl says "inherit": false.
    doc["acl"] = {"folder": "/" + "/".join(parts), **acl} if isinstance(acl, dict) else acl if acl is not None else {"folder": "/" + "/".join(parts)}
    return doc


def skip_reason(rel: str) -> str | None:
    """Why a file is not loaded at all (no loader for its type), or None."""
    if loader_for(Path(rel)) is None:
        return f"no loader for {PurePosixPath(rel).suffix.lower() or 'files without a suffix'}"
    return None


def load_file(item: FileBytes, folder_attrs: Sequence[str] | None, report: LoadReport, max_chars: int | None, *, validate: bool = True, external_id: str | None = None) -> None:
    """Load one file, as read, into ``report`` (a document, or the reason it is
    not one; ``validate=False``: its id, attributes and ACL are left for the
    caller to check)."""
    rel, f = item.rel, item.path
    loader = loader_for(Path(rel))
    if loader is None:
        report.skipped.append((rel, skip_reason(rel) or ""))
        return
    try:
        if not item.data:
            report.skipped.append((rel, "empty file"))
            return
        parsed = parse(loader, f, item.data)
        if not takes_data(loader) and f.read_bytes() != item.data:  # it read the file itself: what it read may not be what was hashed
            raise CatalogError("changed while it was read; it is read again at the next sync")
        doc = document(item, parsed, folder_attrs, external_id)
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
    listing = list_folder(root)
    report = LoadReport(skipped=list(listing.skipped), failed=list(listing.failed))
    for rel in listing.files:
        if skip_reason(rel):
            report.skipped.append((rel, skip_reason(rel) or ""))
            continue
        try:
            item = read_file(listing, rel)
        except CatalogError as exc:
            report.failed.append((rel, str(exc)))
            continue
        except OSError as exc:
            report.failed.append((rel, exc.strerror or str(exc)))
            continue
        load_file(item, folder_attrs, report, max_chars)
    return report


def load_path(path: str | Path, folder_attrs: Sequence[str] | None = None, *, max_chars: int | None = None) -> LoadReport:
    """Documents from a JSONL file (all or nothing) or a folder (file by file)."""
    p = Path(path)
    if p.is_dir():
        return load_folder(p, folder_attrs, max_chars=max_chars)
    if p.is_file():
        return LoadReport(documents=load_jsonl(p))
    raise CatalogError(f"{path}: no such file or folder")
