"""A store's first open: its tables, counters and store id made, once,
however many processes open a fresh database at the same moment — and only
by an open that may create a store; any other finds one or creates nothing."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import Column, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .config import PRIVATE_FILE, Settings, recorded, sqlite_path, store_elsewhere
from .db import (
    COUNTERS,
    SCHEMA_VERSION,
    dispose,
    first_line,
    get_setting,
    make_engine,
    mask,
    meta,
    metadata,
    read_counter,
    settings,
)
from .errors import ConfigError, NoStoreError

SCHEMA_LOCK = 0x7065726D72616701  # PostgreSQL advisory lock key: making a database's tables ("permrag" + 1)


def open_store(cfg: Settings, create: bool | None) -> Engine:
    """The engine of the store ``cfg`` points at, its schema checked.

    ``create``: True makes a store where there is none (``permrag init``,
    ``PermRAG.open(..., create=True)``); False never does (every other
    command); None makes one only for a home that records no store yet (a new
    user's first open; :func:`permrag.config.store_elsewhere`), so a home
    whose store is elsewhere, pointed at a database without it, is refused
    with nothing created there."""
    refused = no_store(mask(cfg.database_url))  # the URL as the user gave it, not the driver's
    if create is None:
        create = not store_elsewhere(cfg)
        if not create:
            refused = _elsewhere(cfg)
    engine = make_engine(cfg.database_url)
    try:
        init_schema(engine, create=create, refused=refused)
    except BaseException:
        dispose(engine)
        raise
    return engine


def no_store(url: str) -> NoStoreError:
    """The refusal of an open that may not create a store, of a database without one."""
    return NoStoreError(f"no permrag store in {url}", hint="run `permrag init` (or open it with create=True)", cli_hint="run `permrag init`")


def _elsewhere(cfg: Settings) -> NoStoreError:
    url, own = mask(cfg.database_url), recorded(cfg.home).database_url
    where = "there, which holds none now" if own == cfg.database_url else f"in {mask(own)}"
    return NoStoreError(
        f"no permrag store in {url}: the home {cfg.home} records its store {where}",
        hint="open it with create=True to make a new store in that database, or give the store's own database_url",
        cli_hint="run `permrag init` (with --force to point the home at another database)",
    )


def init_schema(engine: Engine, *, create: bool = True, refused: NoStoreError | None = None) -> None:
    """Create missing tables, counters and the store id; refuse other schemas.

    Without ``create``, a database that holds no store (no store id) raises
    ``refused`` (default: :class:`NoStoreError` naming the database) and is
    left as it was: a missing SQLite file is not made, no table is added.
    A new SQLite file is made private (0600) before SQLite opens it; its
    WAL and SHM files take the database file's mode.

    A store that has them all is only read. Else they are made in one
    transaction that first takes the database's write lock (SQLite: ``BEGIN
    IMMEDIATE``; PostgreSQL: an advisory lock), so processes that open a fresh
    database at once make its tables one after the other, and the later ones
    find them (each checking, then creating, failed on "table already
    exists")."""
    url = mask(str(engine.url))
    refused = refused or no_store(url)
    _sqlite_file(engine, create, refused)
    for attempt in range(3):
        try:
            with engine.connect() as conn:
                if not create and not _has_store(conn):
                    conn.rollback()
                    raise refused
                if not _initialised(conn):
                    conn.rollback()  # the check's reads end before the lock is taken
                    _lock(conn)
                    metadata.create_all(conn)
                    have = {k for (k,) in conn.execute(select(meta.c.key))}
                    missing = [{"key": k, "value": v} for k, v in COUNTERS.items() if k not in have]
                    if missing:
                        conn.execute(meta.insert(), missing)
                    if get_setting(conn, "store_id") is None:
                        conn.execute(settings.insert().values(key="store_id", value=uuid.uuid4().hex))
                schema = read_counter(conn, "schema_version")
                if schema != SCHEMA_VERSION:
                    raise ConfigError(
                        f"the database {url} has permrag schema {schema}; this permrag uses {SCHEMA_VERSION}: "
                        "export its policy with the permrag that wrote it and start a new store"
                    )
                conn.commit()
                _add_columns(conn)
            return
        except IntegrityError:  # a database of neither kind: another process initialised it at the same moment
            if attempt == 2:
                raise
        except SQLAlchemyError as exc:
            raise ConfigError(f"cannot open the permrag database {url}: {first_line(exc)}") from None


def _lock(conn: Connection) -> None:
    """Take the database's schema lock for this transaction (SQLite: its write lock)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")


def _missing_columns(conn: Connection) -> list[tuple[str, Column]]:
    """Nullable columns this version's tables have and the store's lack (the
    store was made by an older permrag: the audit's and tokens' ``agent``, the tokens' ``scopes``)."""
    found = inspect(conn)
    out = []
    for table in metadata.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)}
        out += [(table.name, c) for c in table.columns if c.name not in have]
    return out


def _add_columns(conn: Connection) -> None:
    """Add the missing columns, once, however many processes open an older
    store at the same moment: each looks, and only when one is missing takes
    the schema lock, looks again under it (another may have just added it) and adds what is still missing."""
    if not _missing_columns(conn):
        conn.rollback()
        return
    conn.rollback()
    _lock(conn)
    quote = conn.dialect.identifier_preparer.quote
    for table, column in _missing_columns(conn):
        if not column.nullable:
            raise ConfigError(f"the store lacks column {table}.{column.name}, which cannot be added in place")
        conn.exec_driver_sql(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column.name)} {column.type.compile(dialect=conn.dialect)}")
    conn.commit()


def _initialised(conn: Connection) -> bool:
    """Whether every table, counter and the store id are there (read only)."""
    if not set(metadata.tables) <= set(inspect(conn).get_table_names()):
        return False
    have = {k for (k,) in conn.execute(select(meta.c.key))}
    return set(COUNTERS) <= have and get_setting(conn, "store_id") is not None


def _has_store(conn: Connection) -> bool:
    """Whether the database holds a permrag store (its settings table with a store id)."""
    return settings.name in inspect(conn).get_table_names() and get_setting(conn, "store_id") is not None


def _sqlite_file(engine: Engine, create: bool, refused: NoStoreError) -> None:
    """A SQLite store's file: made empty and private here when missing (SQLite
    would make it with the umask's mode), or, when this open may not create a
    store, the refusal — before SQLite makes the file."""
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is None or path.exists():
        return
    if not create:
        raise refused
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:  # another process made it this moment
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the permrag database {path}: {exc.strerror}") from None
