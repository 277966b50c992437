"""Listing a folder for ingest, with every error reported.

A listing that hides errors is dangerous to a sync: ``pathlib``'s ``rglob``
passes over a folder it may not list as if it were empty, and a sync that
trusted it deleted every document from that folder. Here each folder is
listed with :func:`os.scandir`; one that cannot be listed, and an entry whose
kind cannot be told, is reported and marked *unlisted*, so that a caller
deletes nothing below it.

Symbolic links never lead out of the root: a link whose target resolves
outside it (or nowhere) is skipped and reported, since the folder's author
could otherwise pull any file of the host into the store, with attributes of
their choosing. Links inside are followed, each real folder and file listed
once (real entries before links to them), so a loop of links ends. Hidden
entries (``.git``, ``.DS_Store``) are passed over.

Sidecars (``<file>.meta.json``, ``<file>.attrs.json``) carry their file's
attributes and ACL, so one is never dropped in silence: a sidecar link whose
target is a regular file inside the root is followed for that sidecar even if
the target was listed already, and a sidecar that is a link out of the root,
a broken link, not a regular file or of a kind that cannot be told is
recorded in :attr:`Listing.bad_sidecars`; its file is then not read at all
(:func:`.folder.read_file` refuses it), so the file is never stored without
the ACL its sidecar gives it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

SIDECARS = (".meta.json", ".attrs.json")


@dataclass
class Listing:
    """What a folder holds, by path relative to it (``hr/leave.md``)."""

    root: Path  # the folder, resolved
    files: dict[str, Path] = field(default_factory=dict)  # relative path → the real file to read
    sidecars: dict[str, Path] = field(default_factory=dict)  # the same, for sidecar files
    skipped: list[tuple[str, str]] = field(default_factory=list)  # links out of the root, special files
    failed: list[tuple[str, str]] = field(default_factory=list)  # what could not be listed, and why
    unlisted: list[str] = field(default_factory=list)  # relative folders not (fully) seen; "" is the root
    bad_sidecars: dict[str, str] = field(default_factory=dict)  # relative sidecar path → why it cannot be read

    def covers_unlisted(self, rel: str) -> bool:
        """Whether ``rel`` may lie below something that could not be listed."""
        return any(d == "" or rel == d or rel.startswith(d + "/") for d in self.unlisted)


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def list_folder(path: str | Path) -> Listing:
    """Every entry below ``path`` (see the module docstring); never raises for
    what it finds inside, only reports it."""
    real_root = os.path.realpath(path)
    out = Listing(Path(real_root))
    seen = {real_root}  # real folders and files listed
    folders: list[tuple[str, str]] = [("", real_root)]
    links: list[tuple[str, str]] = []  # (relative path, link path), followed once every real entry is listed
    while folders or links:
        while folders:
            rel_dir, real_dir = folders.pop()
            folders.extend(reversed(_list_one(out, rel_dir, real_dir, seen, links)))
        if links:
            rel, link = links.pop(0)
            folders.extend(_follow(out, rel, link, seen))
    out.files = dict(sorted(out.files.items()))
    return out


def _list_one(out: Listing, rel_dir: str, real_dir: str, seen: set[str], links: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """List one real folder: its files into ``out``, its links into
    ``links``; returns its subfolders."""
    try:
        with os.scandir(real_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        out.failed.append((rel_dir + "/" if rel_dir else "./", f"folder not listed: {_why(exc)}"))
        out.unlisted.append(rel_dir)
        return []
    subfolders = []
    for e in entries:
        if e.name.startswith("."):
            continue
        rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
        sidecar = rel.endswith(SIDECARS)
        try:
            if e.is_symlink():
                links.append((rel, e.path))
            elif e.is_dir(follow_symlinks=False):
                seen.add(e.path)
                subfolders.append((rel, e.path))
                if sidecar:  # listed as a folder; the file it is named after is not read
                    out.bad_sidecars[rel] = "not a regular file"
            elif e.is_file(follow_symlinks=False):
                seen.add(e.path)
                _add_file(out, rel, Path(e.path))
            elif sidecar:
                out.bad_sidecars[rel] = "not a regular file"
            else:
                out.skipped.append((rel, "not a regular file"))
        except OSError as exc:  # its kind is unknown: it may be a folder, so nothing below it is deleted
            if sidecar:  # reported with its file, which is then not read
                out.bad_sidecars[rel] = f"its kind cannot be told: {_why(exc)}"
                continue
            out.failed.append((rel, _why(exc)))
            out.unlisted.append(rel)
    return subfolders


def _follow(out: Listing, rel: str, link: str, seen: set[str]) -> list[tuple[str, str]]:
    """A link's target, if it is inside the root and not listed yet: a folder
    to list (returned) or a file (added)."""
    target = os.path.realpath(link)
    if rel.endswith(SIDECARS):
        _follow_sidecar(out, rel, target)
        return []
    if not _inside(target, str(out.root)):
        out.skipped.append((rel, "link to outside the folder"))
        return []
    if target in seen:
        out.skipped.append((rel, "link to an entry listed already"))
        return []
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        out.skipped.append((rel, "broken link"))
        return []
    except OSError as exc:  # unknown what it leads to: nothing below it is deleted
        out.failed.append((rel, _why(exc)))
        out.unlisted.append(rel)
        return []
    seen.add(target)
    if stat.S_ISDIR(mode):
        return [(rel, target)]
    if stat.S_ISREG(mode):
        _add_file(out, rel, Path(target))
    else:
        out.skipped.append((rel, "link to something not a regular file"))
    return []


def _follow_sidecar(out: Listing, rel: str, target: str) -> None:
    """A sidecar link: its target if it is a regular file inside the root
    (listed already or not: it is read for this sidecar), else a bad sidecar."""
    if not _inside(target, str(out.root)):
        out.bad_sidecars[rel] = "link to outside the folder"
        return
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        out.bad_sidecars[rel] = "broken link"
        return
    except OSError as exc:
        out.bad_sidecars[rel] = f"link not followed: {_why(exc)}"
        return
    if stat.S_ISREG(mode):
        out.sidecars[rel] = Path(target)
    else:
        out.bad_sidecars[rel] = "link to something not a regular file"


def _add_file(out: Listing, rel: str, real: Path) -> None:
    if rel.endswith(SIDECARS):
        out.sidecars[rel] = real
    else:
        out.files[rel] = real
