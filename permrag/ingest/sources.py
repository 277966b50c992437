"""Sync sources: each synced folder is a source of its own within a tenant.

A source has a name (by default the folder's name; ``source=`` /
``--source NAME``) and its documents' external ids are ``<name>/<relative
path>``, so two folders never overwrite or delete each other's documents. A
folder is keyed by its absolute path as given, not resolved: a link
``current -> r1`` repointed to ``r2`` is the same source, whose content
changed (the sync's deletions and its mass-deletion guard apply), and its
default name is the name typed (``current``). A name belongs to one folder
per tenant, and a folder to one name: a second folder under a taken name, a
folder synced before under another name, and a folder that lies inside
another source's folder or holds one (their real paths compared: the same
files would be stored twice) are refused
(:class:`~permrag.errors.SourceClashError`) before anything changes.

Stores whose sync records predate sources keep their ids: a folder that has
sync records but no source is recorded, at its next sync, as a source whose
ids carry no prefix (the relative path alone, as they were written).

Sources are kept in the store's settings table, one row each, under a key
made of the tenant and the name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import PurePath

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ..errors import ArgumentError, SourceClashError
from ..storage import db

log = logging.getLogger(__name__)

KEY_PREFIX = "sync_source:"
MAX_NAME = 200


@dataclass(frozen=True)
class Source:
    """A synced folder of a tenant: its name, absolute path (as given) and id prefix."""

    tenant: str
    name: str
    root: str
    prefix: str  # "<name>/", or "" for a folder synced before sources

    def external_id(self, rel: str) -> str:
        return self.prefix + rel

    def relative(self, external_id: str) -> str | None:
        """The relative path of one of this source's external ids (None: not one of them)."""
        return external_id[len(self.prefix) :] if external_id.startswith(self.prefix) else None


def check_source_name(name: object) -> str:
    """A source name: one path segment of printable characters, not hidden."""
    if not isinstance(name, str) or not name.strip():
        raise ArgumentError("a sync source name must be a non-empty string (--source NAME)")
    bad = "/" in name or "\\" in name or name.startswith(".") or name != name.strip() or not name.isprintable()
    if bad or len(name) > MAX_NAME:
        raise ArgumentError(f"sync source name {name!r}: one folder-like name of at most {MAX_NAME} printable characters, without '/' or '\\', not starting with '.'")
    return name


def _key(tenant: str, name: str) -> str:
    return KEY_PREFIX + hashlib.sha1(json.dumps([tenant, name]).encode()).hexdigest()


def sources(engine: Engine, tenant: str) -> list[Source]:
    """Every sync source of ``tenant``, by name."""
    t = db.settings.c
    with db.reading(engine, "reading sync sources") as conn:
        values = conn.execute(select(t.value).where(t.key.like(KEY_PREFIX + "%"))).scalars().all()
    found = [Source(**json.loads(v)) for v in values]
    return sorted((s for s in found if s.tenant == tenant), key=lambda s: s.name)


def resolve_source(engine: Engine, tenant: str, root: str, name: str | None, *, has_records: bool) -> tuple[Source, bool]:
    """The source of folder ``root`` (absolute, as given) in ``tenant``, and whether it
    is new (not recorded yet: :func:`register` records it)."""
    known = sources(engine, tenant)
    mine = next((s for s in known if s.root == root), None)
    if mine is not None:
        if name is not None and name != mine.name:
            raise SourceClashError(f"{root} is synced into tenant {tenant!r} as source {mine.name!r}, not {name!r}: sync it as {mine.name!r} (--source {mine.name})")
        return mine, False
    _no_overlap(known, tenant, root)
    want = check_source_name(name if name is not None else PurePath(root).name)
    taken = next((s for s in known if s.name == want), None)
    if taken is not None:
        raise SourceClashError(f"sync source {want!r} of tenant {tenant!r} is the folder {taken.root}: give {root} a name of its own (--source NAME)")
    return Source(tenant, want, root, "" if has_records else want + "/"), True


def _no_overlap(known: list[Source], tenant: str, root: str) -> None:
    """Refuse a new folder that is, lies inside or holds another source's
    folder of the tenant, by their real paths now."""
    real = os.path.realpath(root)
    for s in known:
        other = os.path.realpath(s.root)
        if _within(real, other) or _within(other, real):
            where = "is" if real == other else "lies inside" if _within(real, other) else "holds"
            raise SourceClashError(
                f"{root} {where} the folder {s.root} of sync source {s.name!r} of tenant {tenant!r} (real paths {real}, {other}): "
                f"its files would be stored twice; sync {s.root} (as {s.name!r}), or give each source a folder of its own"
            )


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def register(engine: Engine, source: Source) -> Source:
    """Record a new source; if another process recorded its name meanwhile,
    that one is kept and a clash with another folder is refused."""
    value = json.dumps({"tenant": source.tenant, "name": source.name, "root": source.root, "prefix": source.prefix})
    try:
        with db.transaction(engine, "recording a sync source") as conn:
            conn.execute(insert(db.settings).values(key=_key(source.tenant, source.name), value=value))
    except IntegrityError:
        found, _ = resolve_source(engine, source.tenant, source.root, source.name, has_records=False)
        return found
    log.info("sync source %r of tenant %r: %s (ids %s…)", source.name, source.tenant, source.root, source.prefix or "without prefix")
    return source
