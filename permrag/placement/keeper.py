"""The placement keeper: rows moved to their co-visibility partitions in the
background as the policy drifts, so a store needs no ``rag.repartition()``.

Co-visibility placement (placement/covis.py) puts a class in the group its
signature owns under the policy of the moment. A role made or changed after
the ingest leaves classes where they were: exact, but their readers' searches
name partly visible groups with a residual filter instead of whole groups.
Each open store with co-visibility placement runs one keeper, a daemon thread:

* Every ``every`` seconds it reads the stored policy version (one counter).
  A version it has not settled, unchanged since its previous look (the
  policy has been quiet for a whole period), starts a check: a dry run of
  the repartition of each tenant. A tenant with at least ``MISPLACED_SHARE``
  of its rows outside their groups is repartitioned; then the version is
  settled. Users joining or leaving roles change no signature; grants,
  denies and roles do.
* One process moves at a time: a lease in the store's settings, taken under
  the allocation lock and renewed between batches. A process that finds
  another's live lease leaves the work to it and looks again later.
  Correctness never rests on the lease: a repartition is exact throughout
  and leaves a document another writer changed as it is; the lease only
  saves moving rows twice.
* It never blocks a search: searches read their snapshot; rows move whole
  documents at a time, as a metadata update moves them.
* ``close()`` stops it between two batches (every document is then moved or
  not; the next look finishes the job). A failure is logged and the check is
  tried again at the next look; it never reaches a caller.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import weakref
from typing import Any

from sqlalchemy import func, select

from ..storage import db
from .repartition import repartition

log = logging.getLogger(__name__)

EVERY_S = 300.0  # the default period of a keeper's look (Options.repartition_every): rows move 5-10 minutes after the policy settles
MISPLACED_SHARE = 0.01  # a tenant with this share of its live rows outside their groups is repartitioned
LEASE = "placement_lease"
LEASE_S = 300.0  # a lease not renewed for this long is free (its holder died)
GRACE_S = 5.0  # moved rows' old copies stay in Milvus this long after the run (retired: no bitmap holds them)


class Stopped(Exception):
    """Raised between two batches of a move when the store closes."""


class Keeper:
    """The background placement keeper of one open store (see the module docstring).

    It holds its store weakly: a store dropped without ``close()`` is
    collected as before, and its keeper stops."""

    def __init__(self, store: Any, every: float = EVERY_S) -> None:
        self._stop = threading.Event()
        stop = self._stop
        self._store = weakref.ref(store, lambda _: stop.set())
        self.every = every
        self.me = uuid.uuid4().hex
        self.settled: int | None = None  # the policy version last checked through
        self.seen: int | None = None  # the version of the previous look
        self.moved_rows = 0  # every row this keeper moved
        self.runs = 0  # repartitions this keeper ran
        self._renewed = 0.0
        self._thread = threading.Thread(target=self._loop, name="permrag-placement", daemon=True)

    def _engine(self) -> Any:
        store = self._store()
        if store is None:
            raise Stopped()
        return store.catalog.engine

    def _repartition(self, tenant: str, **kw: Any) -> Any:
        store = self._store()
        if store is None:
            raise Stopped()
        return repartition(store.ingester, store.catalog.allocator.placement, tenant, before=store.refresh, **kw)

    def _drop(self, retired: list[Any]) -> None:
        """The moved rows' old copies out of Milvus and the catalog (what is left: the next open's reconcile)."""
        store = self._store()
        if store is not None:
            store.ingester._drop(retired)

    def _tenants(self) -> list[str]:
        store = self._store()
        return [] if store is None else list(store.catalog.tenants.all())

    def start(self) -> Keeper:
        self._thread.start()
        return self

    def close(self, wait: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(wait)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.look()
            except Stopped:
                return
            except Exception as exc:  # never reaches a caller; the next look tries again
                log.warning("placement keeper: %s", db.first_line(exc))

    def look(self) -> bool:
        """One look (see the module docstring); True if it checked the tenants."""
        with db.reading(self._engine(), "reading the policy version") as conn:
            version = db.read_counter(conn, "policy_version")
        quiet, self.seen = version == self.seen, version
        if version == self.settled or not quiet:
            return False
        todo = []
        for tenant in self._tenants():
            report = self._repartition(tenant, dry_run=True)
            if report.groups and report.misplaced_rows and report.misplaced_rows >= MISPLACED_SHARE * _live(self._engine(), tenant):
                todo.append(tenant)
        if todo and not self._lease(take=True):
            return True  # another process moves them; look again later
        retired: list[Any] = []
        try:
            for tenant in todo:
                report = self._repartition(tenant, tick=self._tick, later=retired.extend)
                self.moved_rows += report.moved_rows
                self.runs += 1
        finally:
            if retired:
                self._stop.wait(GRACE_S)  # searches whose snapshot predates a batch still find its old rows
                self._drop(retired)
            if todo:
                self._lease(take=False)
        self.settled = version
        return True

    def _tick(self) -> None:
        """Between two batches of a move: stop if the store closes; renew the lease."""
        if self._stop.is_set():
            raise Stopped()
        if time.time() - self._renewed > LEASE_S / 3 and not self._lease(take=True):
            raise Stopped()  # the lease went to another process meanwhile (this one stalled): it finishes

    def _lease(self, *, take: bool) -> bool:
        """Take (or renew) the store's placement lease, or give it back; True if this keeper holds it."""
        now = time.time()
        with db.transaction(self._engine(), "taking the placement lease") as conn:
            db.bump(conn, "next_row_id", 0)  # the allocation lock: one lease change at a time
            raw = db.get_setting(conn, LEASE)
            held = json.loads(raw) if raw else {}
            mine = held.get("holder") == self.me
            if not take:
                if mine:
                    db.set_setting(conn, LEASE, "{}")
                return False
            if held and not mine and float(held.get("until", 0)) > now:
                return False
            db.set_setting(conn, LEASE, json.dumps({"holder": self.me, "until": now + LEASE_S}))
        self._renewed = now
        return True


def _live(engine: Any, tenant: str) -> int:
    t = db.rows.c
    with db.reading(engine, "counting rows") as conn:
        return int(conn.execute(select(func.count()).select_from(db.rows).where(t.tenant == tenant, t.state == "live", t.derived_from.is_(None))).scalar_one())
