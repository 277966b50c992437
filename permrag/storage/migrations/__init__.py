"""The catalog database's schema changes, as Alembic revisions run in-process.

Revision ``0001`` is the schema of permrag 0.2.0; each later revision is one
change of :mod:`permrag.storage.db`'s tables (``versions/``). The revision a store is
at lives in its own table, ``permrag_alembic_version`` (a PostgreSQL database
shared with another Alembic project keeps the two apart). A store made before
Alembic (0.2.0) has no such table: it is taken to be at ``0001``.

Every function here (and in :mod:`.runner`, which holds the Alembic side,
imported only when a store is made or migrated) works inside the caller's transaction and never commits:
:mod:`permrag.storage.create` takes the schema lock first, runs the pending revisions
and commits once, so a revision that fails midway leaves the store as it was
(SQLite and PostgreSQL both roll DDL back). No ``alembic.ini`` and no
``env.py``: the script folder is this package, found from this file, so a
wheel install runs the same revisions as a checkout.

A revision declares ``additive = True`` when it only adds (tables, nullable
columns, indexes): a process still running the previous permrag reads and
writes the store as before, so :func:`permrag.storage.create.open_store` applies such
revisions at open. Any other revision waits for ``permrag upgrade``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ...errors import ConfigError

VERSION_TABLE = "permrag_alembic_version"
FIRST = "0001"  # the schema of permrag 0.2.0, the revision a store made before Alembic is at
HEAD = "0003"  # the newest revision in versions/ (runner.head() checks; a new revision moves it)


@dataclass(frozen=True)
class Revision:
    """One revision: its id, its first docstring line, whether it only adds."""

    id: str
    message: str
    additive: bool


@dataclass(frozen=True)
class Plan:
    """Where a store is and what brings it to this permrag's head.

    ``current``: the store's revision (``None``: no store schema yet);
    ``stamped``: whether the store records it (False for a 0.2.0 store,
    which is at :data:`FIRST` without saying so); ``pending``: the revisions
    to run, oldest first."""

    current: str | None
    stamped: bool
    head: str
    pending: tuple[Revision, ...]

    @property
    def additive(self) -> bool:
        return all(r.additive for r in self.pending)


def recorded(conn: Connection, tables: set[str]) -> str | None:
    """The revision the store records (None: no version table, or an empty one);
    ``tables``: the database's table names. Plain SQL: an open of a store at
    the head never imports Alembic."""
    if VERSION_TABLE not in tables:
        return None
    found = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return str(found[0]) if len(found) == 1 else None


def newer(url: str, current: str, top: str) -> ConfigError:
    """The refusal of a store at a revision this permrag does not know."""
    return ConfigError(
        f"the permrag store in {url} is at schema revision {current}, which this permrag does not know (its newest is {top}): a newer permrag upgraded it",
        hint="open it with that newer permrag (pip install -U permrag); stores are never downgraded",
    )
