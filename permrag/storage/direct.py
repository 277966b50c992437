"""The two statements every request makes, straight on the driver.

Each search reads the stored versions (one ``SELECT`` of ``permrag_meta``)
and, with the synchronous audit, commits its audit record; when the policy
version moved, the search reads the change log's new records here too. Through the
engine each of them costs a pool checkout with a liveness ping, SQLAlchemy's
statement machinery and a rollback on return — several times the statement
itself on a local PostgreSQL. Here they run on driver connections of their
own:

* taken from the engine's pool once and detached from it (the engine's
  ``connect`` hooks, SQLite's WAL and busy timeout among them, ran on it),
  then put in autocommit: the read sees the latest commit, the insert is
  committed when ``execute`` returns;
* kept in a small free list of their own, one per thread at a time;
* a connection the server closed (restart, terminated backend, idle timeout)
  is dropped and the statement runs once more on a new one, which is what
  the pool's ping gave; any other driver error, or a second failure, is a
  :class:`BackendError` — never a stale answer or a silent loss (a server
  that dies after committing an audit record but before answering may get
  it twice: a search is never audited less than once);
* after a fork the parent's connections are neither used nor closed in the
  child (closing would end the parent's sessions); the child opens its own;
* only the driver's connections are kept (not the pool's wrappers, which
  refer back to the engine): a store dropped without ``close()`` lets its
  engine go, and its connections close with it.

Also here, for writes: :func:`insert_many`, many rows inserted in a write
transaction by one ``executemany`` of the driver (an ingest's pending rows,
the inverted index's new keys), without SQLAlchemy's per-row processing.

Only engines with a pool of real connections take this path (a file or a
server; not an in-memory SQLite database, whose every connection is another
database): :func:`for_engine` returns None for the others and callers use
the engine.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Engine, Table, bindparam, event, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.pool import QueuePool

from ..errors import BackendError
from . import db

KEEP = 8  # idle connections kept per engine (the async pool's default threads); more threads at once open and close extra ones
AUDIT_FIELDS = ("ts", "event", "user", "tenant", "policy_version", "detail", "agent")  # as permrag/storage/audit.py writes them
_ORPHANS: list[Any] = []  # a forked parent's connections: never used, never closed here


class Direct:
    """Versions read and audit inserts of one engine on detached driver connections."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)  # a store dropped without close() still lets its engine go
        self.dialect = engine.dialect
        self.dbapi_error = engine.dialect.loaded_dbapi.Error
        self._idle = _Idle()
        self._lock = threading.Lock()
        weakref.finalize(engine, self._idle.close_all)  # ... and its connections close with it
        self._closed = False
        self.counters_sql = self._compile(select(db.meta.c.key, db.meta.c.value))
        self.audit_sql = self._compile(db.audit.insert().values({k: bindparam(k) for k in AUDIT_FIELDS}))
        L = db.policy_log.c
        self.log_sql = self._compile(select(L.version, L.ts, L.kind, L.detail).where(L.version > bindparam("after")).order_by(L.version))
        self.opened = 0  # connections opened (for tests)

    def _compile(self, stmt: Any) -> tuple[str, Sequence[str] | None]:
        c = stmt.compile(dialect=self.dialect)
        return str(c), (tuple(c.positiontup or ()) if c.positional else None)

    # ------------------------------------------------------------------ statements
    def counters(self) -> dict[str, int]:
        """The stored counters (``policy_version``, ``catalog_version``, ...), as committed now."""
        rows = self._run(self.counters_sql, {}, True, "reading the policy version")
        return {str(k): int(v) for k, v in rows}

    def policy_log(self, after: int) -> list[Any]:
        """The policy change log's records after version ``after``, as committed now."""
        return list(self._run(self.log_sql, {"after": after}, True, "reading policy changes"))

    def insert_audit(self, row: dict[str, Any]) -> None:
        """One audit record, committed when this returns."""
        self._run(self.audit_sql, row, False, "writing the audit log")
        engine = self._engine()
        if engine is not None:
            db.note_commit(engine)

    def _run(self, compiled: tuple[str, Sequence[str] | None], params: dict[str, Any], fetch: bool, what: str) -> Any:
        sql, order = compiled
        args: Any = tuple(params[k] for k in order) if order is not None else params
        for attempt in (0, 1):
            conn = self._checkout(what)
            try:
                cur = conn.cursor()
                try:
                    cur.execute(sql, args) if args else cur.execute(sql)
                    out = cur.fetchall() if fetch else None
                finally:
                    cur.close()
            except self.dbapi_error as exc:
                gone = self._is_disconnect(exc, conn)
                self._discard(conn)
                if gone and attempt == 0:
                    continue  # the server closed it: once more on a new connection
                raise BackendError(f"{what} failed: {db.first_line(exc)}") from exc
            except BaseException:
                self._discard(conn)
                raise
            self._checkin(conn)
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def _is_disconnect(self, exc: Any, conn: Any) -> bool:  # exc: the driver's DBAPI Error (of the dialect's driver module)
        try:
            return bool(self.dialect.is_disconnect(exc, conn, None))
        except Exception:  # pragma: no cover - a dialect that cannot tell
            return False

    # ------------------------------------------------------------------ connections
    def _checkout(self, what: str) -> Any:
        with self._lock:
            engine = self._engine()
            if self._closed or engine is None:
                raise BackendError(f"{what} failed: the store is closed")
            if self._idle:
                return self._idle.pop()
        try:
            fairy = engine.raw_connection()
            fairy.detach()
            # the driver's connection alone: the pool's wrapper refers back to the engine
            conn = fairy.dbapi_connection
            del fairy
            if conn is None:
                raise BackendError("the pool gave no driver connection")
            self.dialect.set_isolation_level(conn, "AUTOCOMMIT")
        except Exception as exc:
            raise BackendError(f"{what} failed: {db.first_line(exc)}") from exc
        self.opened += 1
        return conn

    def _checkin(self, conn: Any) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < KEEP:
                self._idle.append(conn)
                return
        self._discard(conn)

    def _discard(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception:  # pragma: no cover - a broken connection may refuse even that
            pass

    def forked(self) -> None:
        """In a forked child (before anything else runs in it): the parent's
        idle connections set aside, never used or closed here; a fresh lock
        (another thread may have held it at the fork)."""
        self._lock = threading.Lock()
        _ORPHANS.extend(self._idle)
        self._idle.clear()
        self._idle.pid = os.getpid()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._idle.close_all()


class _Idle(list[Any]):
    """Idle connections, and the process they belong to."""

    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()

    def close_all(self) -> None:
        if self.pid != os.getpid():
            return  # the parent's: never closed from a child
        while self:
            try:
                self.pop().close()
            except Exception:  # pragma: no cover - a broken connection may refuse even that
                pass


def insert_many(conn: Connection, table: Table, columns: Sequence[str], values: Sequence[tuple[Any, ...]], *, as_text: Sequence[str] = ()) -> None:
    """Rows (tuples in ``columns``' order) inserted in ``conn``'s transaction by
    one ``executemany`` of the driver: SQLAlchemy's per-row parameter
    processing was most of the catalog's insert of an ingest's rows. JSON
    columns are serialised here as SQLAlchemy would (None: SQL NULL where the
    column says ``none_as_null``, else JSON ``null``), except those named in
    ``as_text``, which the caller gives as JSON text already."""
    if not values:
        return
    key = (type(conn.dialect), conn.dialect.paramstyle, table.name, tuple(columns))
    found = _INSERTS.get(key)
    if found is None:
        c = table.insert().values({k: bindparam(k) for k in columns}).compile(dialect=conn.dialect)
        order = [list(columns).index(k) for k in c.positiontup or ()] if c.positional else None
        if order == list(range(len(columns))):
            order = []  # the columns' own order
        found = _INSERTS[key] = (str(c), order)
    sql, order = found
    json_at = {i: t.none_as_null for i, k in enumerate(columns) if isinstance(t := table.c[k].type, JSON) and k not in as_text}
    if json_at:
        values = [tuple(_json(v, json_at[i]) if i in json_at else v for i, v in enumerate(row)) for row in values]
    if conn.dialect.name == "postgresql":  # one statement of column arrays, not a statement per row
        _insert_arrays(conn, table, columns, values, json_at.keys() | {columns.index(k) for k in as_text})
        return
    if order is None:
        args: Sequence[Any] = [dict(zip(columns, row)) for row in values]
    else:
        args = [tuple(row[i] for i in order) for row in values] if order else values
    conn.exec_driver_sql(sql, args)


def update_many(conn: Connection, table: Table, keys: Sequence[str], columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Set ``columns`` of the rows of ``table`` whose ``keys`` match each of
    ``rows`` (dicts of both; rows already locked by the caller, one per key).
    On PostgreSQL one ``UPDATE … FROM unnest(…)`` of column arrays: an
    ``executemany`` runs a statement per row there (most of a large ingest's
    catalog time); elsewhere (and for JSON columns) an ``executemany`` of one statement."""
    if not rows:
        return
    if conn.dialect.name == "postgresql" and not any(isinstance(table.c[c].type, JSON) for c in columns):
        names = [*keys, *columns]
        pairs = ", ".join(f"{_q(conn, c)} = v.{_q(conn, c)}" for c in columns)
        match = " AND ".join(f"t.{_q(conn, k)} = v.{_q(conn, k)}" for k in keys)
        source, params = _arrays(conn, table, names, [tuple(r[c] for c in names) for r in rows], set())
        conn.exec_driver_sql(f"UPDATE {_q(conn, table.name)} AS t SET {pairs} FROM {source} WHERE {match}", params)
        return
    where = [table.c[k] == bindparam(f"k_{k}") for k in keys]
    stmt = update(table).where(*where).values({c: bindparam(f"k_{c}") for c in columns})
    conn.execute(stmt, [{f"k_{c}": r[c] for c in (*keys, *columns)} for r in rows])


def _insert_arrays(conn: Connection, table: Table, columns: Sequence[str], values: Sequence[tuple[Any, ...]], json_at: set[int]) -> None:
    if conn.dialect.driver == "psycopg":  # psycopg 3: COPY, half the time of the statement below (its index upkeep is the rest)
        cols = ", ".join(_q(conn, c) for c in columns)
        with conn.connection.dbapi_connection.cursor() as cur, cur.copy(f"COPY {_q(conn, table.name)} ({cols}) FROM STDIN") as copy:  # type: ignore[union-attr]
            for row in values:
                copy.write_row(row)
        return
    source, params = _arrays(conn, table, columns, values, json_at)
    picked = ", ".join(f"v.{_q(conn, c)}::JSON" if i in json_at else f"v.{_q(conn, c)}" for i, c in enumerate(columns))
    cols = ", ".join(_q(conn, c) for c in columns)
    conn.exec_driver_sql(f"INSERT INTO {_q(conn, table.name)} ({cols}) SELECT {picked} FROM {source}", params)


def _arrays(conn: Connection, table: Table, columns: Sequence[str], values: Sequence[tuple[Any, ...]], json_at: set[int]) -> tuple[str, dict[str, list[Any]]]:
    """``unnest(%(a0)s::T[], …) AS v(columns)`` and its parameters: one array
    per column (JSON columns as text, cast by the caller)."""
    casts = ", ".join(f"%(a{i})s::{'TEXT' if i in json_at or isinstance(table.c[c].type, JSON) else table.c[c].type.compile(conn.dialect)}[]" for i, c in enumerate(columns))
    params = {f"a{i}": pg_array([row[i] for row in values]) for i in range(len(columns))}
    return f"unnest({casts}) AS v({', '.join(_q(conn, c) for c in columns)})", params


def pg_array(values: list[Any]) -> Any:
    """``values`` as PostgreSQL's text form of an array (``{1,2,NULL,"a b"}``)
    where every value is None, an int or a str, for a ``%s::T[]`` cast; else
    ``values`` unchanged, for the driver to send. The driver's own array
    dumper is pure Python per element: it was a tenth of a bulk ingest's time
    on PostgreSQL."""
    kinds = set(map(type, values))
    if kinds <= {int}:
        return "{" + ",".join(map(str, values)) + "}"
    if not kinds <= {int, str, type(None)}:
        return values  # bool, float, …: the driver knows them
    return "{" + ",".join("NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' if type(v) is str else str(v) for v in values) + "}"


def _q(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _json(value: Any, none_as_null: bool) -> str | None:
    return None if value is None and none_as_null else json.dumps(value)


_INSERTS: dict[tuple[Any, str, str, tuple[str, ...]], tuple[str, list[int] | None]] = {}
_DIRECT: weakref.WeakKeyDictionary[Engine, Direct] = weakref.WeakKeyDictionary()
_DIRECT_LOCK = threading.Lock()


def for_engine(engine: Engine) -> Direct | None:
    """The engine's direct statements, or None where the engine must be used."""
    found = _DIRECT.get(engine)
    if found is not None:
        return found
    if not isinstance(engine.pool, QueuePool):
        return None
    with _DIRECT_LOCK:
        found = _DIRECT.get(engine)
        if found is None:
            found = _DIRECT[engine] = Direct(engine)
            event.listen(engine, "engine_disposed", _disposed)
        return found


def _disposed(engine: Engine) -> None:
    with _DIRECT_LOCK:
        found = _DIRECT.pop(engine, None)
    if found is not None:
        found.close()


def _after_fork() -> None:
    global _DIRECT_LOCK
    _DIRECT_LOCK = threading.Lock()
    for found in list(_DIRECT.values()):
        found.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
