"""The policy change log: one typed record per policy version, and how another
process catches up by applying them instead of reloading everything.

Every policy change (policy/versioned.py ``_change``, the one way to change) writes,
in its own transaction, a :class:`Delta` under the version it took: its kind,
the tenants it touched, the roles and users whose cached bitmaps it changes
(``None``: all of the tenant's), and the stored rule rows it added and removed
(``permrag_casbin_rule`` rows as ``(ptype, v0, …, v5)`` and role rows as
``("role", tenant, name)``). The rows are those policy/writes.py removed (read
as stored, just before their delete) and inserted, so the log says exactly
what the store did; policy/records.py reads a record back strictly and names
each row as a typed change (a rule, an assignment, a membership, a folder ACL
entry…).

A process whose copy is at version *v* while the store is at *w* reads the
deltas *v+1 … w*: if all are there it applies their rows to its copy
(persist.py ``apply_rows``, as the writing process did) without reading any
tenant, and drops only the caches their scopes name (a change in tenant X leaves every
other tenant's bitmaps, plans and cached rows alone); if one is missing (the
log was pruned, or written by an older permrag) it reloads everything, as
before. The rows also let the exposure report (access/exposure.py) rebuild
the policy as it was at any retained version.

The log is pruned by age (``policy_history_days``, stored in the store's
settings; default :data:`DEFAULT_DAYS`) but never below the last
:data:`KEEP_LAST` versions, so a process that slept catches up by deltas.

On PostgreSQL a change also sends ``NOTIFY permrag_policy`` with its version
(at commit); :class:`Pusher` listens and catches up at once, so a revoke holds
in the other process before its next search. The per-search version check
(access/state.py) stays: without the push every answer is still at the stored
versions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.engine import Connection, Engine

from ..errors import ArgumentError, PolicyError
from ..storage import db, direct
from .model import TenantPolicy
from .persist import apply_rows, build, read_all
from .records import Change, Delta, MalformedRecord

log = logging.getLogger(__name__)

DEFAULT_DAYS = 90.0
KEEP_LAST = 1000  # versions always kept, whatever their age
RETENTION_KEY = "policy_history_days"
CHANNEL = "permrag_policy"
Row = tuple[Any, ...]


# ---------------------------------------------------------------------- writing
def _scope(v: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if v is None else tuple(sorted(v))


def record(conn: Connection, version: int, change: Change, rows: tuple[list[Row], list[Row]], now: float) -> Delta:
    """Log ``change`` as ``version`` with the (removed, added) rows its statements
    changed (inside its transaction), push it on PostgreSQL, prune old entries."""
    removed, added = rows
    delta = Delta(version, now, change.kind, tuple(sorted(change.tenants)), _scope(change.roles), _scope(change.users), tuple(added), tuple(removed))
    conn.execute(db.policy_log.insert().values(version=version, ts=now, kind=delta.kind, detail=delta.detail()))
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:ch, :v)"), {"ch": CHANNEL, "v": str(version)})
    if version % 64 == 0:  # pruning is rare work: one indexed delete every 64 versions
        keep = retention_days(conn)
        conn.execute(delete(db.policy_log).where(db.policy_log.c.ts < now - keep * 86400.0, db.policy_log.c.version <= version - KEEP_LAST))
    return delta


def retention_days(conn: Connection) -> float:
    value = db.get_setting(conn, RETENTION_KEY)
    return DEFAULT_DAYS if value is None else float(value)


def set_retention(engine: Engine, days: object) -> float:
    """Keep policy history for ``days`` days (a non-negative number); returns it."""
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 <= days <= 36500:
        raise ArgumentError(f"policy history retention must be a number of days from 0 to 36500, not {days!r}")
    with db.transaction(engine, "setting the policy history retention") as conn:
        db.set_setting(conn, RETENTION_KEY, repr(float(days)))
    return float(days)


def get_retention(engine: Engine) -> float:
    with db.reading(engine, "reading the policy history retention") as conn:
        return retention_days(conn)


# ---------------------------------------------------------------------- reading
def _between(conn: Connection, after: int, upto: int | None) -> Any:
    L = db.policy_log.c
    q = select(L.version, L.ts, L.kind, L.detail).where(L.version > after).order_by(L.version)
    return conn.execute(q if upto is None else q.where(L.version <= upto))


def read_log(conn: Connection, after: int, upto: int | None = None) -> list[Delta]:
    """Logged deltas with ``after < version <= upto``, in order; :class:`PolicyError` if one is malformed."""
    try:
        return [Delta.from_row(*r) for r in _between(conn, after, upto)]
    except MalformedRecord as exc:
        raise PolicyError(f"the policy change log is damaged ({exc}): older policy versions cannot be rebuilt from it") from None


def oldest(conn: Connection) -> int | None:
    """The oldest retained version (None: nothing logged)."""
    v = conn.execute(select(func.min(db.policy_log.c.version))).scalar()
    return None if v is None else int(v)


@dataclass
class CatchUp:
    """What one catch-up read: the stored version and the deltas up to it, or
    (``deltas`` None: not all retained) every tenant's policy, read whole."""

    version: int
    deltas: list[Delta] | None
    tenants: dict[str, TenantPolicy]


_AFTER = select(db.policy_log.c.version, db.policy_log.c.ts, db.policy_log.c.kind, db.policy_log.c.detail).where(db.policy_log.c.version > bindparam("after")).order_by(db.policy_log.c.version)
_VERSION = select(db.meta.c.value).where(db.meta.c.key == "policy_version")


def read_catch_up(engine: Engine, have: int, seen: int | None = None) -> CatchUp | None:
    """The deltas after ``have``, consistent with the stored version; None if the
    store is at ``have`` (or at ``seen``, the version a caller just read, and
    this copy is there already).

    First one read of the log on the driver connection (direct.py): every
    record is committed with its version, so the records from ``have + 1``
    on, without a gap, bring the copy to a version the store had — the last
    one's, which is at least ``seen`` (the log is read after ``seen`` was).
    Anything else (no record, a gap, a malformed record) takes the path below.
    """
    quick = direct.for_engine(engine)
    if quick is not None:
        deltas = _parsed(quick.policy_log(have))
        if deltas and [d.version for d in deltas] == list(range(have + 1, have + 1 + len(deltas))) and deltas[-1].version >= (seen or 0):
            return CatchUp(deltas[-1].version, deltas, {})
        if not deltas and (seen <= have if seen is not None else quick.counters()["policy_version"] == have):
            return None  # nothing new (a store that went back takes the path below: a full reload)
    return _read_catch_up(engine, have)


def _read_catch_up(engine: Engine, have: int) -> CatchUp | None:
    """:func:`read_catch_up` through the engine. Two reads: the log, then the version — equal to the
    last delta read only if nothing committed in between (a change bumps the
    version and writes its delta in one transaction), else read again. The
    deltas' rows are applied to the copy (persist.py ``apply_rows``): no
    tenant is read again."""
    for _ in range(10):
        with db.reading(engine, "reading policy changes") as conn:
            deltas = _parsed(conn.execute(_AFTER, {"after": have}))
            if deltas and [d.version for d in deltas] != list(range(have + 1, have + 1 + len(deltas))):
                deltas = None  # a gap: pruned, or written by a permrag without the log
            version = int(conn.execute(_VERSION).scalar_one())
        if version == have and not deltas:
            return None
        if deltas is None or version < have or (deltas and version == deltas[-1].version):
            return CatchUp(version, deltas, {}) if deltas is not None and version > have else _full(engine)
        if not deltas and version > have and not _logged(engine, have + 1):
            return _full(engine)  # the next version was never logged (an older permrag wrote it)
    return _full(engine)


def _parsed(rows: Iterable[Any]) -> list[Delta] | None:
    """Records read back strictly (records.py); None if one is malformed: a full reload."""
    try:
        return [Delta.from_row(*r) for r in rows]
    except MalformedRecord as exc:
        log.warning("policy change log: %s; reloading the whole policy", exc)
        return None


def _logged(engine: Engine, version: int) -> bool:
    with db.reading(engine, "reading policy changes") as conn:
        return conn.execute(select(db.policy_log.c.version).where(db.policy_log.c.version == version)).first() is not None


def _full(engine: Engine) -> CatchUp:
    """A consistent full read (the version re-read until it did not move)."""
    for _ in range(10):
        with db.reading(engine, "reading the policy") as conn:
            version = int(conn.execute(_VERSION).scalar_one())
            tenants = read_all(conn)
            if int(conn.execute(_VERSION).scalar_one()) == version:
                break
    return CatchUp(version, None, tenants)


def read_all_now(engine: Engine) -> dict[str, TenantPolicy]:
    with db.reading(engine, "reading the policy") as conn:
        return read_all(conn)


def rebuild(current: Sequence[Row], deltas_after: Sequence[Delta]) -> tuple[list[Row], list[Row]]:
    """The stored rows as they were before ``deltas_after`` (newest undone first):
    ``current`` rows (role rows and rule rows, as logged) → (role rows, rule rows)."""
    rows: dict[Row, int] = {}
    for r in current:
        rows[r] = rows.get(r, 0) + 1
    for d in sorted(deltas_after, key=lambda d: -d.version):
        for r in d.added:
            if rows.get(r, 0) > 0:
                rows[r] -= 1
        for r in d.removed:
            rows[r] = rows.get(r, 0) + 1
    roles = [(r[1], r[2]) for r, n in rows.items() if n > 0 and r[0] == "role"]
    rules = [r for r, n in rows.items() for _ in range(n) if r[0] != "role"]
    return roles, rules


def stored_rows(conn: Connection, tenant: str) -> list[Row]:
    """One tenant's stored rows in the log's form."""
    tp_roles = [("role", tenant, n) for (n,) in conn.execute(select(db.roles.c.name).where(db.roles.c.tenant == tenant))]
    c = db.casbin_rule.c
    rules = conn.execute(select(c.ptype, c.v0, c.v1, c.v2, c.v3, c.v4, c.v5).where(((c.ptype == "g") & (c.v2 == tenant)) | ((c.ptype != "g") & (c.v1 == tenant))))
    return tp_roles + [tuple(r) for r in rules]


def policy_at(conn: Connection, tenant: str, version: int) -> TenantPolicy | None:
    """``tenant``'s policy as it was at ``version`` (None: older than the retained history)."""
    first = oldest(conn)
    now = db.read_counter(conn, "policy_version")
    if version > now or version < 0:
        raise ArgumentError(f"policy version {version} is not one this store has had (it is at {now})")
    if version < now and (first is None or first > version + 1):
        return None
    later = [d for d in read_log(conn, version, now) if tenant in d.tenants]
    roles, rules = rebuild(stored_rows(conn, tenant), later)
    return build(roles, rules).get(tenant) or TenantPolicy()


# ---------------------------------------------------------------------- push
class Pusher:
    """PostgreSQL ``LISTEN permrag_policy``: on each notification, ``on_change()``
    (the policy's catch-up) runs at once on this thread. A lost connection is
    retried; meanwhile the per-search check keeps answers correct."""

    def __init__(self, engine: Engine, on_change: Callable[[], object]) -> None:
        self.engine = engine
        self.on_change = on_change
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="permrag-policy-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # a dropped connection: listen again shortly
                log.debug("policy push listener: %s", exc)
                self._stop.wait(1.0)

    def _listen(self) -> None:
        import select as sel

        raw = self.engine.raw_connection()
        try:
            dbapi: Any = raw.driver_connection
            if hasattr(dbapi, "set_isolation_level"):  # psycopg2
                dbapi.set_isolation_level(0)
            else:
                dbapi.autocommit = True
            cur = dbapi.cursor()
            cur.execute(f"LISTEN {CHANNEL}")
            while not self._stop.is_set():
                if not sel.select([dbapi], [], [], 0.5)[0]:
                    continue
                got = _drain(dbapi)
                if got:
                    self.received += got
                    self.on_change()
        finally:
            raw.invalidate()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _drain(dbapi: Any) -> int:
    """Notifications waiting on a psycopg2 or psycopg 3 connection."""
    if hasattr(dbapi, "poll"):  # psycopg2
        dbapi.poll()
        n = len(dbapi.notifies)
        dbapi.notifies.clear()
        return n
    return sum(1 for _ in dbapi.notifies(timeout=0))


class Following:
    """The catch-up half of :class:`~permrag.policy.versioned.Policy` (mixed in):
    apply the logged deltas since this copy's version."""

    engine: Engine
    lock: Any
    version: int
    _tenants: dict[str, TenantPolicy]
    _pusher: Pusher | None = None
    catch_ups = 0  # catch-ups by deltas (for tests and benchmarks)
    full_reloads = 0

    def _notify(self, tenant: str | None, roles: set[str] | None, users: set[str] | None) -> None: ...

    def catch_up(self, seen: int | None = None) -> bool:
        """Bring this copy to the stored version (at least ``seen``, a version the
        caller read); True if it moved.

        By deltas when every one since this copy's version is logged: their rows
        are applied to the copy and only the caches they name dropped;
        else a full reload. The store is read without the state lock (searches
        of other tenants go on meanwhile); what was read is applied under it if
        the copy is still at the version it was read for, else read again."""
        for _ in range(100):
            have = self.version
            got = read_catch_up(self.engine, have, seen)
            with self.lock:
                if self.version == have:
                    return self._apply(got)
                if seen is not None and self.version >= seen:  # another thread brought the copy there meanwhile
                    return True
        with self.lock:  # moved under us a hundred times: read under the lock
            return self._apply(read_catch_up(self.engine, self.version, seen))

    def _apply(self, got: CatchUp | None) -> bool:
        if got is None:
            return False
        self._take(got)
        self._announce(got.deltas)
        return True

    def _behind(self, conn: Connection, upto: int) -> list[Delta] | None:
        """Inside a change's transaction (other writers wait on its lock): bring this
        copy to ``upto`` by the logged deltas (returned, for :meth:`_announce` once
        the change is done), or by a full read (None)."""
        deltas = _parsed(_between(conn, self.version, upto))
        if upto < self.version or [d.version for d in deltas or ()] != list(range(self.version + 1, upto + 1)):
            deltas = None
        self._take(CatchUp(upto, deltas, read_all(conn) if deltas is None else {}))
        return deltas

    def _take(self, got: CatchUp) -> None:
        if got.deltas is None:
            self._tenants = got.tenants
            self.full_reloads += 1
        else:
            for d in got.deltas:
                apply_rows(self._tenants, d.removed, d.added, d.tenants)
            self.catch_ups += 1
        self.version = got.version

    def _announce(self, deltas: list[Delta] | None) -> None:
        """Tell the listeners (the compiler's caches) what the deltas touched; None: everything."""
        if deltas is None:
            self._notify(None, None, None)
            return
        for d in deltas:
            roles, users = d.scope()  # the recorded scope, widened if the typed changes reach past it
            for t in d.tenants:
                self._notify(t, roles, users)

    def follow(self) -> bool:
        """On PostgreSQL, listen for other processes' changes and catch up as they
        commit (idempotent); False elsewhere."""
        if self.engine.dialect.name != "postgresql":
            return False
        with self.lock:
            if self._pusher is None:
                self._pusher = Pusher(self.engine, self.catch_up)
                db.on_dispose(self.engine, self.stop_following)
        return True

    def stop_following(self) -> None:
        with self.lock:
            pusher, self._pusher = self._pusher, None
        if pusher is not None:
            pusher.close()
