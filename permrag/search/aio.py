"""Async calls: the sync code path, run on one bounded thread pool per store.

``rag.asearch``, ``aretrieve``, ``arecommend`` and the async methods of the
LangChain, LlamaIndex and MCP faces all go through :meth:`AsyncRunner.run`,
which runs the *same* sync call (snapshot → plan → Milvus → verify → audit)
on a worker thread and awaits it. There is no second, async copy of the
search path: the path the tests hold to a brute-force reference is the only
one. An async Milvus client would not help here: Milvus Lite has none (the
pymilvus ``AsyncMilvusClient`` talks to a server only), and the work around
the Milvus call — encoding, bitmap snapshots, verify, the audit write — is
sync anyway.

Bounded: each :class:`~permrag.core.PermRAG` owns one pool of at most
``workers`` threads (``PermRAG.open(..., async_workers=n)``, default 8), made
on first use and shut down by ``rag.close()``. A burst of 200 concurrent
calls queues on it; it never starts a thread per call.

Cancellation leaves nothing half-done: a call still waiting in the queue is
cancelled and never starts; a call already running finishes in its thread
(a search and its audit record are written together, an ingest publishes or
rolls back as it does when called directly) and its result is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_WORKERS = 8  # Milvus calls release the GIL; more threads than this only queue inside Milvus Lite
MAX_WORKERS = 256
_numbers = itertools.count(1)


class AsyncRunner:
    """Runs sync library calls off the event loop, on at most ``workers`` threads."""

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
            raise ConfigError(f"async_workers must be an integer from 1 to {MAX_WORKERS}, not {workers!r}")
        self.workers = workers
        self.prefix = f"permrag-async-{next(_numbers)}"
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise ConfigError("this PermRAG is closed: its async calls cannot run")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=self.prefix)
            return self._pool

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the pool; its result or its exception."""
        loop = asyncio.get_running_loop()
        queued = self._executor().submit(functools.partial(fn, *args, **kwargs))
        waiter = _Call(queued, loop)
        queued.add_done_callback(waiter.copy_from)
        return await waiter

    @property
    def threads(self) -> int:
        """Worker threads alive now (at most ``workers``)."""
        return sum(1 for t in threading.enumerate() if t.name.startswith(self.prefix + "_"))

    def close(self) -> None:
        """Cancel queued calls, wait for running ones, stop the threads."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _Call(asyncio.Future):
    """What a task awaits for one pool call. ``Task.cancel()`` cancels the future
    it awaits at once, in the caller's thread: so does this one the pool's future,
    and a call still queued never starts. (``run_in_executor`` passes the
    cancellation on only when the event loop next runs, and meanwhile the worker
    may start queued calls that are being cancelled.)"""

    def __init__(self, queued: Future, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._queued = queued

    def cancel(self, msg: Any = None) -> bool:
        self._queued.cancel()  # False once running: it finishes, its result is dropped
        return super().cancel(msg=msg)

    def copy_from(self, done: Future) -> None:
        """The pool's outcome, handed to the event loop (called in the worker thread)."""
        try:
            self.get_loop().call_soon_threadsafe(self._settle, done)
        except RuntimeError:  # the loop is closed: nobody awaits this any more
            pass

    def _settle(self, done: Future) -> None:
        if self.done():
            return
        if done.cancelled():
            super().cancel()
            return
        exc = done.exception()
        if exc is not None:
            self.set_exception(exc)
        else:
            self.set_result(done.result())
