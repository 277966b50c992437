"""SQLite's write-ahead log: switched on for every connection, and
checkpointed in a background thread rather than inside a commit."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("permrag.db")


def to_wal(cur: Any, wait_s: float = 30.0) -> None:
    """Switch the connection's database to WAL. SQLite answers "database is
    locked" at once, without its busy handler, when another connection is
    switching a fresh file at the same moment; that is retried for ``wait_s``."""
    deadline = time.monotonic() + wait_s
    pause = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


class Checkpointer:
    """SQLite WAL checkpoints in a background thread, never inside a commit.

    SQLite's automatic checkpoint runs in whichever commit crosses 1,000 WAL
    pages: that commit copies the pages back into the database and syncs it
    (measured: the few revokes or audited searches that drew it took 3–6 ms
    against a ~1 ms median). Here every connection has the automatic one off
    and this thread runs a PASSIVE checkpoint (it never blocks a reader or a
    writer) a moment after this process committed. The WAL stays bounded by
    what is written in one interval; the last connection to close checkpoints
    and removes it as usual. Each process checkpoints its own writes.
    """

    INTERVAL = 0.25  # seconds between checks

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)  # a store never closed still lets its engine go (and this thread ends)
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0  # the process the thread runs in (a forked child starts its own)
        self._lock = threading.Lock()
        self.runs = 0  # checkpoints run (for tests)
        event.listen(engine, "commit", self._committed)

    def _committed(self, _conn: object) -> None:
        self._dirty.set()
        if self._thread is None or self._pid != os.getpid():
            with self._lock:
                if (self._thread is None or self._pid != os.getpid()) and not self._stop.is_set():
                    self._pid = os.getpid()
                    self._thread = threading.Thread(target=self._run, name="permrag-wal-checkpoint", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            if self._engine() is None:
                return  # its store was dropped without close()
            if self._dirty.is_set():
                self._dirty.clear()
                self.checkpoint()

    def checkpoint(self) -> bool:
        """One passive checkpoint; False once the engine is gone."""
        engine = self._engine()
        if engine is None:
            return False
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            self.runs += 1
        except SQLAlchemyError as exc:  # the next commit tries again; the WAL only grows meanwhile
            log.debug("WAL checkpoint failed: %s", exc)
        return True

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
