"""The audit log: who searched, when, under which policy version, what came back.

Every serve leaves a record (``event``): ``search`` (searches, retrieval,
recommendations and ``similar``), ``fetch`` (a document read; a refused one
with ``refused: true`` and no rows; a refused ``similar`` seed likewise), ``check`` (``can_read``, the library's
and the agent tools', with the answer), ``wrapped-search`` (an answer of a
LangChain or LlamaIndex ``permissioned()`` wrapper: the retriever and the
external ids served) and ``warm`` (a process starting to serve).

Two modes:

A delegated request (a user acting through an agent) names both: the user in
``user``, the acting agent in ``agent`` (a chain of agents: all of them in
the details' ``agents``).

* ``"sync"`` (default): every record is committed before the call returns;
  a failure to write it fails the search (:class:`BackendError`).
* ``"async"``: records go to a bounded in-memory queue and a background
  thread commits them in batches (every ``flush_interval`` seconds or
  ``batch`` records). A caller blocks only when the queue is full. What is
  in the queue when the process is killed is lost: the loss window is at most
  ``flush_interval`` seconds (or ``max_queue`` records). :meth:`AuditLog.close`
  (and ``PermRAG.close``) flushes it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select

from ..errors import ArgumentError
from . import db, direct

log = logging.getLogger(__name__)
MODES = ("sync", "async", "off")


class AuditLog:
    """Writes and reads ``permrag_audit``."""

    def __init__(self, engine: Engine, mode: str = "sync", *, max_queue: int = 10_000, batch: int = 500, flush_interval: float = 0.5) -> None:
        if mode not in MODES:
            raise ArgumentError(f"audit mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.engine = engine
        self.mode = mode
        self.batch = batch
        self.flush_interval = flush_interval
        self.lost = 0  # records the background writer could not commit
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(self, event: str, user: str | None, tenant: str | None, version: int | None, detail: dict[str, Any], *, agents: Sequence[str] = ()) -> None:
        """One record; ``agents``: a delegated request's agents (the acting one first), named beside the user."""
        if self.mode == "off":
            return
        if len(agents) > 1:
            detail = {**detail, "agents": list(agents)}  # the whole chain; the agent column holds the acting one
        row = {
            "ts": time.time(),
            "event": event,
            "user": user,
            "tenant": tenant,
            "policy_version": version,
            "detail": json.dumps(detail, ensure_ascii=False),
            "agent": agents[0] if agents else None,
        }
        if self.mode == "sync":
            quick = direct.for_engine(self.engine)
            if quick is not None:
                quick.insert_audit(row)
                return
            with db.transaction(self.engine, "writing the audit log") as conn:
                conn.execute(db.audit.insert(), [row])
            return
        self._start()
        self._queue.put(row)

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="permrag-audit", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        stop = False
        while not stop:
            rows: list[dict[str, Any]] = []
            deadline = time.monotonic() + self.flush_interval
            while len(rows) < self.batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                rows.append(item)
            if rows:
                self._write(rows)
            for _ in range(len(rows) + (1 if stop else 0)):
                self._queue.task_done()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        for attempt in range(2):
            try:
                with db.transaction(self.engine, "writing the audit log") as conn:
                    conn.execute(db.audit.insert(), rows)
                return
            except Exception:  # the writer thread must survive any failure
                if attempt == 1:
                    self.lost += len(rows)
                    log.exception("audit log: %d record(s) lost", len(rows))

    def flush(self) -> None:
        """Wait until every queued record is committed (async mode)."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def query(self, *, user: str | None = None, since: float | None = None, limit: int = 100, agent: str | None = None) -> list[dict[str, Any]]:
        """Records, newest first: time, event, user, agent (None: not delegated), tenant, policy version and the event's details."""
        self.flush()
        a = db.audit.c
        q = select(db.audit).order_by(a.id.desc()).limit(limit)
        if user is not None:
            q = q.where(a.user == user)
        if since is not None:
            q = q.where(a.ts >= since)
        if agent is not None:
            q = q.where(a.agent == agent)
        out = []
        with db.reading(self.engine, "reading the audit log") as conn:
            for r in conn.execute(q):
                detail = json.loads(r.detail or "{}")
                out.append({"time": r.ts, "event": r.event, "user": r.user, "agent": r.agent, "tenant": r.tenant, "policy_version": r.policy_version, **detail})
        return out
