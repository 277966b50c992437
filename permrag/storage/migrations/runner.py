"""Alembic, run in-process on the caller's connection and transaction
(see :mod:`permrag.storage.migrations`): no ``alembic.ini``, no ``env.py``; the
script folder is this package, found from this file."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection

from ...errors import ConfigError
from ..db import metadata
from . import FIRST, HEAD, VERSION_TABLE, Plan, Revision, newer, recorded

HERE = str(Path(__file__).resolve().parent)
LOCATION = HERE  # where the revisions are read from (a test points it at a copy with one more)
_RUNNING = threading.Lock()  # Alembic's `op` and `context` are process-wide: one run at a time per process


def scripts(location: str | None = None) -> ScriptDirectory:
    """The revisions under ``location`` (default: :data:`LOCATION`), read once per process."""
    return _scripts(location or LOCATION)


@functools.lru_cache(maxsize=8)
def _scripts(location: str) -> ScriptDirectory:
    return ScriptDirectory(location)


def forget() -> None:
    """Read the revisions again at the next use (one was added)."""
    _scripts.cache_clear()


def head(location: str | None = None) -> str:
    """The newest revision under ``location``; this package's must be :data:`HEAD`."""
    location = location or LOCATION
    found = scripts(location).get_heads()
    if len(found) != 1:
        raise ConfigError(f"the permrag revisions in {location} have {len(found)} heads ({', '.join(found)}); they must form one line")
    if location == HERE and found[0] != HEAD:
        raise ConfigError(f"the newest permrag revision is {found[0]} but permrag.storage.migrations.HEAD says {HEAD}: set HEAD to {found[0]}")
    return found[0]


def _context(conn: Connection, **opts: object) -> MigrationContext:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, **opts})


def plan(conn: Connection, url: str, *, location: str | None = None, before_alembic: bool = False) -> Plan:
    """What brings the store on ``conn`` to the head (read only).

    ``before_alembic``: the store was made before Alembic (its tables are
    there, no revision is recorded), so it is at :data:`FIRST`. A revision
    this permrag does not know (a newer permrag upgraded the store) is
    refused with :class:`ConfigError` naming both revisions."""
    script, top = scripts(location), head(location)
    current = recorded(conn, set(inspect(conn).get_table_names()))
    stamped = current is not None
    if current is None and before_alembic:
        current = FIRST
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError:
            raise newer(url, current, top) from None
    steps = list(script.iterate_revisions(top, current))  # newest first, ``current`` itself left out
    pending = tuple(Revision(s.revision, _message(s.doc), bool(getattr(s.module, "additive", False))) for s in reversed(steps))
    return Plan(current, stamped, top, pending)


def _message(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].rstrip(".") if lines else ""


def run(conn: Connection, todo: Plan, *, location: str | None = None, applied: list[str] | None = None) -> None:
    """Run ``todo``'s pending revisions on ``conn``, in its transaction (no commit).

    A store made before Alembic is stamped at :data:`FIRST` first; the version
    table is written by each step, so it says the head only if every step ran.
    ``applied`` gets the id of each revision once it has run."""
    script = scripts(location)
    if not todo.stamped and todo.current is not None:
        _context(conn).stamp(script, todo.current)
    if not todo.pending:
        return

    def steps(rev: str, _context: MigrationContext) -> list[Any]:
        return script._upgrade_revs(todo.head, rev)  # what `alembic upgrade` runs

    with _RUNNING, EnvironmentContext(Config(), script, fn=steps, destination_rev=todo.head) as env:
        env.configure(connection=conn, target_metadata=metadata, version_table=VERSION_TABLE, on_version_apply=_note(applied))
        env.run_migrations()


def _note(applied: list[str] | None) -> Callable[..., None]:
    def note(*, ctx: MigrationContext, step: MigrationInfo, heads: set[str], run_args: dict[str, Any]) -> None:
        if applied is not None:
            applied.extend(step.up_revision_ids)

    return note


def stamp_head(conn: Connection, *, location: str | None = None) -> None:
    """Record that the store on ``conn`` (just made with ``metadata.create_all``) is at the head."""
    _context(conn).stamp(scripts(location), head(location))


def drift(conn: Connection, target: MetaData = metadata) -> list[Any]:
    """How the store's schema differs from ``target`` (Alembic's autogenerate
    comparison; empty when they agree). Only permrag's own tables are compared."""
    from alembic.autogenerate import compare_metadata

    def ours(name: str | None, kind: str, _parent: object) -> bool:
        return kind != "table" or bool(name and name.startswith("permrag_") and name != VERSION_TABLE)

    ctx = _context(conn, include_name=ours, compare_type=True, compare_server_default=False)
    return list(compare_metadata(ctx, target))
