"""Planner statistics kept fresh after bulk writes (PostgreSQL).

The catalog's lookups by name (rows.py, :func:`~.rows.named`) let the planner
choose between indexes by its statistics of ``permrag_rows``. A store filled
faster than autovacuum analyzes it (or with autovacuum off) is planned with
the statistics of a much smaller table, or of one whose rows were all
pending: the planner then expects a few dozen rows for the tenant, or none
with a ``live_key``, and reads every live row of the tenant for each slice
of names (a bitmap scan on the tenant prefix of another index, or the unique
index's ``live_key IS NOT NULL`` range), so each batch costs more as the
store grows.

So a writer counts the rows it made live or retired, and once they pass a
share of the table as last analyzed (or the table was never analyzed) it
runs ``ANALYZE`` of the catalog's write-path tables itself: after its write
committed, never inside it, under a short lock timeout (an ANALYZE already
running elsewhere does the same work: this one is skipped). ANALYZE reads a
sample of fixed size, so one costs about the same at any store size, and the
share makes them rarer as the store grows. Rows only prepared (pending) are
never counted: statistics taken then would see a ``NULL`` live key on them.
SQLite plans these lookups by its indexes alone and is left as it is.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine, text

from ..storage import db

log = logging.getLogger(__name__)

SHARE = 0.2  # rows changed since the last ANALYZE, as a share of the rows it counted
MIN_ROWS = 1000  # fewer changed rows than this are never worth a look
LOCK_TIMEOUT_MS = 200
TABLES = (db.rows.name, db.attr_index.name, db.id_blocks.name)


class PlannerStats:
    """Counts one process's row changes and analyzes the catalog when they pass :data:`SHARE`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.enabled = engine.dialect.name == "postgresql"
        self.runs = 0  # ANALYZEs this process ran (benchmarks and tests read it)
        self._changed = 0
        self._next = MIN_ROWS  # changed rows at which to look at the statistics again
        self._lock = threading.Lock()
        self._busy = False

    def changed(self, rows: int) -> None:
        """``rows`` were made live or retired by a write that committed."""
        if not self.enabled or rows <= 0:
            return
        with self._lock:
            self._changed += rows
            if self._changed < self._next or self._busy:
                return
            counted, self._busy = self._changed, True
        try:
            known = self._known()
            if known is None or 0 <= counted < SHARE * known:  # unreadable, or fresh enough
                with self._lock:
                    self._next = counted + MIN_ROWS if known is None else max(MIN_ROWS, int(SHARE * known))
                return
            with self._lock:
                self._changed -= counted
                self._next = MIN_ROWS
            self._analyze()
        finally:
            with self._lock:
                self._busy = False

    def _known(self) -> float | None:
        """The rows ``permrag_rows`` held when last analyzed (negative: never; None: unreadable)."""
        try:
            with db.reading(self.engine, "reading planner statistics") as conn:
                known = conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"), {"t": db.rows.name}).scalar()
        except Exception as exc:  # noqa: BLE001 - a statistics look-up never fails the write that committed
            log.info("planner statistics not read: %s", exc)
            return None
        return -1.0 if known is None else float(known)

    def _analyze(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
                conn.execute(text("ANALYZE " + ", ".join(TABLES)))
            self.runs += 1
        except Exception as exc:  # noqa: BLE001 - another ANALYZE holds the lock, or no right to run one: planning goes on as it was
            log.info("ANALYZE of the catalog skipped: %s", db.first_line(exc))
