"""The SQL schema and the few helpers every SQL access goes through.

One database holds everything that decides visibility: rows, the inverted
index, ID blocks, tenants, roles, casbin rules, counters, the store's
settings (its identity, its encoder) and the audit log. It is a SQLite file
under the home folder by default, or any SQLAlchemy URL (the tests run it on
PostgreSQL too).

Counters live in ``permrag_meta``. A change bumps its counter with
``UPDATE … RETURNING`` as the *first* statement of its transaction: on
PostgreSQL that takes the counter's row lock, on SQLite the database write
lock, so writers of one kind are serialised across processes and every one of
them then reads, validates and writes against the latest committed state; the
version number and the change it stands for commit together.

Every SQL access goes through :func:`transaction` or :func:`reading`, which
turn driver errors into :class:`BackendError` (SQL errors are wrapped
everywhere, never leaked as SQLAlchemy exceptions).
"""

from __future__ import annotations

import importlib.util
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import JSON, BigInteger, Column, Engine, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text, UniqueConstraint, create_engine, event, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError as SAArgumentError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.sql.expression import Executable

from ..config import mask
from ..errors import BackendError, ConfigError
from .sqlite_wal import Checkpointer, to_wal

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
IN_CHUNK = 1000  # values per SQL IN (...) list
T = TypeVar("T")
metadata = MetaData()

meta = Table(
    "permrag_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

settings = Table(
    "permrag_settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

tenants = Table(
    "permrag_tenants",
    metadata,
    Column("tenant", String(256), primary_key=True),
    Column("no", BigInteger, nullable=False, unique=True),  # names the tenant's Milvus collection
)

rows = Table(
    "permrag_rows",
    metadata,
    Column("row_id", BigInteger, primary_key=True, autoincrement=False),
    Column("tenant", String(256), nullable=False),
    Column("external_id", String(1024), nullable=False),
    # external_id while the row is live, NULL while pending or retired: one
    # live row per external id, and a replacement can be prepared beside the
    # row it replaces (see catalog/journal.py).
    Column("live_key", String(1024), nullable=True),
    Column("attrs", JSON, nullable=False),
    Column("parent", String(1024), nullable=True),
    Column("derived_from", JSON(none_as_null=True), nullable=True),  # source row ids, or null
    Column("state", String(16), nullable=False),  # pending | live | deleted
    Column("vclass", BigInteger, nullable=False),  # visibility class (catalog/allocation.py)
    Column("ingest_id", BigInteger, nullable=True),
    UniqueConstraint("tenant", "live_key", name="uq_permrag_rows_live"),
    Index("ix_permrag_rows_ext", "tenant", "external_id"),
    Index("ix_permrag_rows_parent", "tenant", "parent"),
    Index("ix_permrag_rows_state", "state"),
)

attr_index = Table(
    "permrag_attr_index",
    metadata,
    Column("tenant", String(256), primary_key=True),
    Column("attr", String(256), primary_key=True),
    Column("value", String(1024), primary_key=True),
    Column("bitmap", LargeBinary, nullable=False),
)

id_blocks = Table(
    "permrag_id_blocks",
    metadata,
    Column("tenant", String(256), primary_key=True),
    Column("class_key", String(64), primary_key=True),
    Column("class_id", BigInteger, nullable=False),
    Column("next_id", BigInteger, nullable=False),
    Column("end_id", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
)

# Co-visibility placement (placement/covis.py): which class group the
# classes of one role-rule signature go to, per tenant.
class_groups = Table(
    "permrag_class_groups",
    metadata,
    Column("tenant", String(256), primary_key=True),
    Column("signature", String(64), primary_key=True),  # sha1 of the sorted rule tokens
    Column("grp", Integer, nullable=False),
    Column("tokens", Text, nullable=False),  # the tokens, JSON (for the nearest signature once groups run out)
)

roles = Table(
    "permrag_roles",
    metadata,
    Column("tenant", String(256), primary_key=True),
    Column("name", String(256), primary_key=True),
)

casbin_rule = Table(
    "permrag_casbin_rule",
    metadata,
    # The rules as casbin reads them (policy/model.conf). Subjects of `g`
    # lines are kind-prefixed where they are not roles: `user:<id>`.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ptype", String(8), nullable=False),
    Column("v0", String(1024), nullable=False),
    Column("v1", String(1024), nullable=False),
    Column("v2", String(1024), nullable=False),
    Column("v3", String(1024), nullable=True),
    Column("v4", String(1024), nullable=True),
    Column("v5", String(1024), nullable=True),
    Index("ix_permrag_casbin_rule", "ptype", "v0", "v1"),
)

ingests = Table(
    "permrag_ingests",
    metadata,
    # One row per prepared, not yet published batch: who is writing it, so a
    # batch whose process died can be told from one still in progress.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),  # -1: abandoned by its writer
    Column("pid_start", BigInteger, nullable=False),  # /proc start time, against PID reuse
    Column("started", Float, nullable=False),
    Column("row_ids", LargeBinary, nullable=False),  # serialized roaring bitmap
)

audit = Table(
    "permrag_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("event", String(32), nullable=False),
    Column("user", String(256), nullable=True),
    Column("tenant", String(256), nullable=True),
    Column("policy_version", BigInteger, nullable=True),
    Column("detail", Text, nullable=True),
    Column("agent", String(256), nullable=True),  # a delegated request's agent (revision 0002: permrag/storage/migrations)
    Index("ix_permrag_audit_user", "user", "ts"),
)

tokens = Table(
    "permrag_tokens",
    metadata,
    # Bearer tokens of the MCP HTTP server (permrag/access/tokens.py): only a
    # SHA-256 of each token is kept; the token itself is shown once.
    Column("id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("user", String(256), nullable=False),
    Column("tenant", String(256), nullable=False),
    Column("name", String(256), nullable=True),
    Column("created", Float, nullable=False),
    Column("revoked", Float, nullable=True),
    Column("agent", String(256), nullable=True),  # the agent the token acts through for ``user`` (None: the user)
    Column("scopes", String(256), nullable=True),  # space-separated tool scopes (None: every search tool)
)

sync_state = Table(
    "permrag_sync",
    metadata,
    # Folder sync (permrag/ingest/sync.py): what each synced file was when it
    # was last written, so a re-sync re-embeds only changed content.
    Column("tenant", String(256), primary_key=True),
    Column("root", String(1024), primary_key=True),  # the folder, resolved
    Column("external_id", String(1024), primary_key=True),  # the file's relative path
    Column("content_hash", String(64), nullable=False),  # text and chunking settings
    Column("meta_hash", String(64), nullable=False),  # attributes and ACL
)

policy_log = Table(
    "permrag_policy_log",
    metadata,
    # One row per policy version (policy/deltas.py): its kind, whom it touched,
    # the rule rows it added and removed (JSON in ``detail``); pruned by age.
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", Float, nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("detail", Text, nullable=False),
)

COUNTERS = {
    "schema_version": SCHEMA_VERSION,
    "policy_version": 0,
    "catalog_version": 0,
    "next_row_id": 1,
    "next_class_id": 1,
    "next_tenant_no": 1,
    "placement_version": 0,  # bumped when a regroup rewrites the signature → group map (placement/covis.py)
}


def _driver_url(url: str) -> str:
    """``postgresql://`` with whichever PostgreSQL driver is installed
    (psycopg 3 from the ``postgres`` extra, else psycopg2)."""
    try:
        parsed = make_url(url)
    except SAArgumentError as exc:
        raise ConfigError(f"cannot use database URL {mask(url)!r}: {exc}") from None
    if parsed.drivername not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return parsed.set(drivername=driver).render_as_string(hide_password=False)
    raise ConfigError("no PostgreSQL driver is installed: pip install 'permrag[postgres]'")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout."""
    try:
        engine = create_engine(_driver_url(url), future=True, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"cannot use database URL {mask(url)!r}: {mask(str(exc))}") from None
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")  # first: switching a fresh file to WAL waits for another opener's lock
            to_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer does it, off the write path
            cur.close()

        _CHECKPOINTERS[engine] = Checkpointer(engine)
    return engine


def on_dispose(engine: Engine, stop: Callable[[], None]) -> None:
    """Run ``stop`` (a background reader's end) when :func:`dispose` closes ``engine``."""
    _STOPS.setdefault(engine, []).append(stop)


def dispose(engine: Engine) -> None:
    """Stop the engine's checkpointer (if any) and background readers, and close its connections."""
    for stop in _STOPS.pop(engine, []):
        stop()
    ckpt = _CHECKPOINTERS.pop(engine, None)
    if ckpt is not None:
        ckpt.close()
    engine.dispose()


_CHECKPOINTERS: weakref.WeakKeyDictionary[Engine, Checkpointer] = weakref.WeakKeyDictionary()
_STOPS: weakref.WeakKeyDictionary[Engine, list[Callable[[], None]]] = weakref.WeakKeyDictionary()


def note_commit(engine: Engine) -> None:
    """A commit made on a connection outside the engine's pool (permrag/storage/direct.py): SQLite's checkpointer follows it too."""
    ckpt = _CHECKPOINTERS.get(engine)
    if ckpt is not None:
        ckpt._committed(None)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask(text[0]) if text else exc.__class__.__name__


@contextmanager
def transaction(engine: Engine, what: str) -> Iterator[Connection]:
    """A write transaction; driver errors become :class:`BackendError`.

    :class:`IntegrityError` is re-raised as it is, for callers that turn a
    constraint into their own error inside the block.
    """
    try:
        with engine.begin() as conn:
            yield conn
    except IntegrityError:
        raise
    except SQLAlchemyError as exc:
        raise BackendError(f"{what} failed: {first_line(exc)}") from exc


@contextmanager
def reading(engine: Engine, what: str) -> Iterator[Connection]:
    """A read-only connection; driver errors become :class:`BackendError`."""
    try:
        with engine.connect() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise BackendError(f"{what} failed: {first_line(exc)}") from exc


def chunks(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``values`` in slices small enough for one SQL ``IN (...)`` list."""
    for i in range(0, len(values), size):
        yield values[i : i + size]


ARRAY_CHUNK = 50_000  # values per PostgreSQL array parameter


def parts(conn: Connection, values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``values`` in slices for a lookup by ``catalog.rows.one_of`` on ``conn``:
    ``size`` a slice where it is an ``IN (...)`` list, and far fewer slices on
    PostgreSQL, where it is one array parameter (each statement that scans an
    index for the slice's rows reads that index once, not once per slice)."""
    return chunks(values, ARRAY_CHUNK if conn.dialect.name == "postgresql" else size)


def bump(conn: Connection, key: str, by: int = 1) -> int:
    """Add ``by`` to counter ``key`` in this transaction; returns the new value.

    As the first statement of a transaction it also serialises writers of
    this counter (row lock on PostgreSQL, write lock on SQLite).
    """
    stmt = update(meta).where(meta.c.key == key).values(value=meta.c.value + by).returning(meta.c.value)
    return int(conn.execute(stmt).scalar_one())


def read_counter(conn: Connection, key: str) -> int:
    return int(conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one())


def read_counters(conn: Connection) -> dict[str, int]:
    return {k: int(v) for k, v in conn.execute(select(meta.c.key, meta.c.value))}


def get_setting(conn: Connection, key: str) -> str | None:
    row = conn.execute(select(settings.c.value).where(settings.c.key == key)).first()
    return None if row is None else str(row[0])


def set_setting(conn: Connection, key: str, value: str) -> None:
    upsert(conn, settings, ("key",), [{"key": key, "value": value}])


def upsert(conn: Connection, table: Table, keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table``, or overwrite the rows whose primary key (``keys``) is there: one ``INSERT … ON CONFLICT DO UPDATE``
    a slice, so writers racing on a new key never fail on the key (an UPDATE that finds nothing, then an INSERT, did on PostgreSQL: both
    found nothing, the second insert broke the key). The last writer's values stay. Rows are written in key order, so two writers of
    overlapping keys lock them in one order (no deadlock)."""
    if not rows:
        return
    rows = sorted(rows, key=lambda r: tuple(r[k] for k in keys))
    name = conn.dialect.name
    if name not in ("postgresql", "sqlite"):
        upsert_rowwise(conn, table, keys, rows)
        return
    if name == "postgresql":
        from sqlalchemy.dialects import postgresql

        pg = postgresql.insert(table)
        stmt: Executable = pg.on_conflict_do_update(index_elements=list(keys), set_={c: pg.excluded[c] for c in rows[0] if c not in keys})
    else:
        from sqlalchemy.dialects import sqlite

        lite = sqlite.insert(table)
        stmt = lite.on_conflict_do_update(index_elements=list(keys), set_={c: lite.excluded[c] for c in rows[0] if c not in keys})
    for part in chunks(rows):
        conn.execute(stmt, list(part))


def upsert_rowwise(conn: Connection, table: Table, keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """:func:`upsert` for a database without ``ON CONFLICT``: each row updated,
    else inserted in a savepoint; an insert that lost the race to another
    writer becomes an update."""
    for row in rows:
        match = [table.c[k] == row[k] for k in keys]
        if conn.execute(update(table).where(*match).values(row)).rowcount:
            continue
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(row))
        except IntegrityError:
            conn.execute(update(table).where(*match).values(row))
