"""Ask the backend a question on a worker thread while the search goes on.

A search ranked in process (search/in_process.py) still asks Milvus whether it
holds the tenant's collection, so a search while the backend is down raises
and a collection dropped behind permrag's back returns nothing. That round
trip (a gRPC call to a server) costs about as much as ranking a small set,
so it must not run before the ranking. A dense search asks it on a worker
thread as it starts (search/searcher.py), and the snapshot, the plan, the
encoding and the ranking run meanwhile (the gRPC call releases the GIL); the
search waits for the answer before anything is returned or audited, so the
guarantee is the same and the cost is the longer of the two, not their sum.
The question asks for the collection's load state, the cheapest call that
gives the same answer as ``has_collection``. A dense search that goes to
Milvus after all leaves the answer unread.

The pool belongs to the process: a forked child makes its own (the parent's
worker threads do not exist in it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

WORKERS = 4

_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _after_fork() -> None:
    global _lock, _pool
    _lock = threading.Lock()  # a lock another thread held at the fork stays held in the child
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def ask(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` on a worker thread; its future (its exception, if it raises)."""
    global _pool
    pid = os.getpid()
    with _lock:
        if _pool is None or _pool[0] != pid:
            _pool = (pid, ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="permrag-probe"))
        pool = _pool[1]
    return pool.submit(fn, *args)
