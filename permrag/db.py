"""The SQL schema shared by the catalog and the policy store.

One database holds everything that decides visibility: rows, the inverted
index, ID blocks, roles, casbin rules, counters and the audit log. It is a
SQLite file under the home folder by default, or any SQLAlchemy URL (the tests
run it on PostgreSQL too). Counters live in ``meta`` and are bumped with
``UPDATE ... RETURNING`` inside the transaction that makes the change, so a
version number and the change it stands for commit together.
"""

from __future__ import annotations

import logging

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from .errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
metadata = MetaData()

meta = Table(
    "permrag_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

rows = Table(
    "permrag_rows",
    metadata,
    Column("row_id", BigInteger, primary_key=True, autoincrement=False),
    Column("tenant", String(256), nullable=False),
    Column("external_id", String(1024), nullable=False),
    Column("attrs", JSON, nullable=False),
    Column("parent", String(1024), nullable=True),
    Column("derived_from", JSON(none_as_null=True), nullable=True),  # source row ids, or null
    Column("state", String(16), nullable=False, default="live"),
    Column("vclass", BigInteger, nullable=False, default=0),  # visibility class (see catalog.py)
    UniqueConstraint("tenant", "external_id", name="uq_permrag_rows_ext"),
    Index("ix_permrag_rows_parent", "tenant", "parent"),
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

roles = Table(
    "permrag_roles",
    metadata,
    Column("tenant", String(256), primary_key=True),
    Column("name", String(256), primary_key=True),
)

casbin_rule = Table(
    "permrag_casbin_rule",
    metadata,
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
    Index("ix_permrag_audit_user", "user", "ts"),
)

COUNTERS = ("schema_version", "policy_version", "catalog_version", "next_row_id", "next_class_id")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout."""
    try:
        engine = create_engine(url, future=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"cannot use database URL {url!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


def init_schema(engine: Engine) -> None:
    """Create missing tables and counters; refuse a newer schema."""
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            have = {k: v for k, v in conn.execute(select(meta.c.key, meta.c.value))}
            for key in COUNTERS:
                if key not in have:
                    initial = SCHEMA_VERSION if key == "schema_version" else (1 if key.startswith("next_") else 0)
                    conn.execute(meta.insert().values(key=key, value=initial))
            if have.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
                raise ConfigError(
                    f"database schema version {have['schema_version']} is newer than this permrag ({SCHEMA_VERSION})"
                )
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot open the permrag database {engine.url!r}: {exc}") from exc


def bump(conn: Connection, key: str, by: int = 1) -> int:
    """Add ``by`` to counter ``key`` in this transaction; returns the new value."""
    stmt = update(meta).where(meta.c.key == key).values(value=meta.c.value + by).returning(meta.c.value)
    return int(conn.execute(stmt).scalar_one())


def read_counter(conn: Connection, key: str) -> int:
    return int(conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one())


def read_counters(conn: Connection) -> dict[str, int]:
    return {k: int(v) for k, v in conn.execute(select(meta.c.key, meta.c.value))}


def drop_all(engine: Engine) -> None:
    """Drop every permrag table (tests and `permrag reset`)."""
    metadata.drop_all(engine)
