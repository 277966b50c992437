"""A store's first open: its tables, counters and store id made, once,
however many processes open a fresh database at the same moment."""

from __future__ import annotations

import uuid

from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .db import (
    COUNTERS,
    SCHEMA_VERSION,
    first_line,
    get_setting,
    mask,
    meta,
    metadata,
    read_counter,
    settings,
)
from .errors import ConfigError

SCHEMA_LOCK = 0x7065726D72616701  # PostgreSQL advisory lock key: making a database's tables ("permrag" + 1)


def init_schema(engine: Engine) -> None:
    """Create missing tables, counters and the store id; refuse other schemas.

    A store that has them all is only read. Else they are made in one
    transaction that first takes the database's write lock (SQLite: ``BEGIN
    IMMEDIATE``; PostgreSQL: an advisory lock), so processes that open a fresh
    database at once make its tables one after the other, and the later ones
    find them (each checking, then creating, failed on "table already
    exists")."""
    url = mask(str(engine.url))
    for attempt in range(3):
        try:
            with engine.connect() as conn:
                if not _initialised(conn):
                    conn.rollback()  # the check's reads end before the lock is taken
                    if engine.dialect.name == "sqlite":
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                    elif engine.dialect.name == "postgresql":
                        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
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
            return
        except IntegrityError:  # a database of neither kind: another process initialised it at the same moment
            if attempt == 2:
                raise
        except SQLAlchemyError as exc:
            raise ConfigError(f"cannot open the permrag database {url}: {first_line(exc)}") from None


def _initialised(conn: Connection) -> bool:
    """Whether every table, counter and the store id are there (read only)."""
    if not set(metadata.tables) <= set(inspect(conn).get_table_names()):
        return False
    have = {k for (k,) in conn.execute(select(meta.c.key))}
    return set(COUNTERS) <= have and get_setting(conn, "store_id") is not None
