"""A store's open: its tables, counters and store id made, or an older
store's schema brought to this version (Alembic, :mod:`permrag.storage.migrations`),
once, however many processes open it at the same moment — and a store made
only by an open that may create one; any other finds one or creates nothing."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass

from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..config import PRIVATE_FILE, Settings, mask, recorded, sqlite_path, store_elsewhere
from ..errors import ConfigError, NoStoreError
from . import migrations
from .db import COUNTERS, SCHEMA_VERSION, dispose, first_line, get_setting, make_engine, meta, metadata, read_counter, settings

log = logging.getLogger(__name__)

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
    """Make a new store, or bring an older one to this permrag's schema.

    Without ``create``, a database that holds no store (no store id) raises
    ``refused`` (default: :class:`NoStoreError` naming the database) and is
    left as it was: a missing SQLite file is not made, no table is added.
    A new SQLite file is made private (0600) before SQLite opens it; its
    WAL and SHM files take the database file's mode.

    A store at this permrag's head revision is only read. Else, in one
    transaction that first takes the database's write lock (SQLite: ``BEGIN
    IMMEDIATE``; PostgreSQL: an advisory lock), a new store gets its tables
    (stamped at the head) and an older one its pending *additive* revisions
    (:mod:`permrag.storage.migrations`); processes that open it at once do this one
    after the other, and the later ones find it done. A store that needs a
    revision which is not additive is refused, naming ``permrag upgrade``;
    one a newer permrag upgraded is refused, naming both revisions."""
    url = mask(str(engine.url))
    refused = refused or no_store(url)
    _sqlite_file(engine, create, refused)
    for attempt in range(3):
        try:
            with engine.connect() as conn:
                if not create and not _has_store(conn):
                    conn.rollback()
                    raise refused
                if not _at_head(conn):
                    conn.rollback()  # the check's reads end before the lock is taken
                    _lock(conn)
                    _make_or_migrate(conn, url, at_open=True)
                    conn.commit()
            return
        except IntegrityError:  # a database of neither kind: another process initialised it at the same moment
            if attempt == 2:
                raise
        except SQLAlchemyError as exc:
            raise ConfigError(f"cannot open the permrag database {url}: {first_line(exc)}") from None


@dataclass(frozen=True)
class Upgrade:
    """What ``permrag upgrade`` found (and, unless ``dry_run``, did): the
    store's revision before (``start``; ``recorded``: whether the store said
    so, False for a 0.2.0 store), this permrag's head, the revisions run."""

    url: str
    start: str
    recorded: bool
    head: str
    pending: tuple[migrations.Revision, ...]
    dry_run: bool


def upgrade_store(cfg: Settings, *, dry_run: bool = False) -> Upgrade:
    """Bring the store ``cfg`` points at to this permrag's head revision,
    additive or not (``permrag upgrade``); ``dry_run`` only says what would run.

    The revisions run in one transaction under the schema lock: one that
    fails leaves the store as it was. Never creates a store."""
    url = mask(cfg.database_url)
    refused = no_store(url)
    engine = make_engine(cfg.database_url)
    try:
        _sqlite_file(engine, False, refused)
        with engine.connect() as conn:
            if not _has_store(conn):
                raise refused
            if not dry_run:
                conn.rollback()
                _lock(conn)
            todo = _make_or_migrate(conn, url, at_open=False, dry_run=dry_run)
            if todo is None:  # not reached: a store with a store id is never made anew
                raise refused
            if dry_run:
                conn.rollback()
            else:
                conn.commit()
        return Upgrade(url, todo.current or migrations.FIRST, todo.stamped, todo.head, todo.pending, dry_run)
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot upgrade the permrag database {url}: {first_line(exc)}") from None
    finally:
        dispose(engine)


def _lock(conn: Connection) -> None:
    """Take the database's schema lock for this transaction (SQLite: its write lock)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")


def _at_head(conn: Connection) -> bool:
    """Whether every table, counter, the store id and the head revision are there (read only)."""
    tables = set(inspect(conn).get_table_names())
    if not set(metadata.tables) <= tables:
        return False
    have = {k for (k,) in conn.execute(select(meta.c.key))}
    if not set(COUNTERS) <= have or get_setting(conn, "store_id") is None:
        return False
    return read_counter(conn, "schema_version") == SCHEMA_VERSION and migrations.recorded(conn, tables) == migrations.HEAD


def _make_or_migrate(conn: Connection, url: str, *, at_open: bool, dry_run: bool = False) -> migrations.Plan | None:
    """Under the schema lock: make a new store (None), or run an older one's
    pending revisions (its plan); refuse another schema or a newer store."""
    tables = set(inspect(conn).get_table_names())
    if meta.name in tables:
        _check_counter(conn, url)
    if migrations.VERSION_TABLE not in tables and not _has_store(conn):
        _make(conn)
        return None
    # Alembic is imported only by an open that has work to do
    from .migrations import runner

    todo = runner.plan(conn, url, before_alembic=True)
    if dry_run:
        return todo
    if at_open and not todo.additive:
        raise ConfigError(
            f"the permrag store in {url} is at schema revision {todo.current}; this permrag needs {todo.head}, "
            f"through revisions that change what older versions read ({', '.join(r.id for r in todo.pending if not r.additive)})",
            hint="stop every process that uses the store, back it up, and run permrag.storage.create.upgrade_store (permrag upgrade)",
            cli_hint="stop every process that uses the store, back it up, and run `permrag upgrade`",
        )
    if todo.pending or not todo.stamped:
        _migrate(conn, url, todo)
    _fill(conn)
    return todo


def _migrate(conn: Connection, url: str, todo: migrations.Plan) -> None:
    from .migrations import runner

    applied: list[str] = []
    try:
        runner.run(conn, todo, applied=applied)
    except Exception as exc:  # a revision's own error as much as the database's
        failed = next((r.id for r in todo.pending if r.id not in applied), todo.head)
        raise ConfigError(
            f"upgrading the permrag store in {url} from schema revision {todo.current} to {todo.head} failed at revision {failed} ({first_line(exc)}); the store was left at {todo.current}, unchanged",
            hint="it still opens with the permrag that wrote it",
        ) from exc
    log.info("upgraded the permrag store in %s from schema revision %s to %s", url, todo.current, todo.head)


def _check_counter(conn: Connection, url: str) -> None:
    """Refuse a store of another schema family (its ``schema_version``
    counter; Alembic's revisions are steps inside one family)."""
    row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
    if row is not None and int(row[0]) != SCHEMA_VERSION:
        raise ConfigError(f"the database {url} has permrag schema {int(row[0])}; this permrag uses {SCHEMA_VERSION}: export its policy with the permrag that wrote it and start a new store")


def _make(conn: Connection) -> None:
    """A new store: this permrag's tables, stamped at the head, with its counters and store id."""
    from .migrations import runner

    metadata.create_all(conn)
    runner.stamp_head(conn)
    _fill(conn)


def _fill(conn: Connection) -> None:
    """The counters a store lacks, and its store id if it has none."""
    have = {k for (k,) in conn.execute(select(meta.c.key))}
    missing = [{"key": k, "value": v} for k, v in COUNTERS.items() if k not in have]
    if missing:
        conn.execute(meta.insert(), missing)
    if get_setting(conn, "store_id") is None:
        conn.execute(settings.insert().values(key="store_id", value=uuid.uuid4().hex))


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
