"""Milvus Lite's folder: made private, handed over between processes, and
its derived files repaired when a crash left them torn.

**One process at a time.** pymilvus serves a Lite folder from an in-process
server (``milvus_lite.server_manager``) that holds an exclusive lock on the
folder until it is released; closing a client does not release it. This
process's backends count their clients per folder and release the server
when the last one closes, so another process can open the store while this
one lives on. A folder another process holds raises :class:`StoreLockedError`
saying what may hold it, not pymilvus' "Open local milvus failed".

**Torn index files.** Milvus Lite (3.x) builds each segment's index in a background thread and
writes it as a sidecar file (``*.idx`` for vectors, ``*.sidx`` for scalars)
in place, not by rename. A process killed while that thread writes leaves a
truncated sidecar, and every later load of the collection fails ("No data
left in file") although the segment data itself is intact. Sidecars are
caches that Lite rebuilds from the segments when they are missing, so a load
that fails is retried once after the collection's sidecars are removed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import PRIVATE_DIR
from ..errors import StoreLockedError

log = logging.getLogger("permrag.backends")
_users: dict[str, int] = {}  # Lite folder → this process's open clients of it
_users_lock = threading.Lock()

SIDECAR_SUFFIXES = (".idx", ".sidx")
_folder_locks: dict[str, threading.RLock] = {}


def folder_lock(uri: str) -> threading.RLock:
    """The lock of this process's backends of one Lite folder. Milvus Lite
    opens a collection on the first request that names it, without a lock
    of its own: two threads that open one at once leave two copies, and the
    one kept may not be the one loaded. Whatever may open a collection first
    (a load, a check beside it) holds this lock."""
    path = os.path.abspath(uri)
    with _users_lock:
        return _folder_locks.setdefault(path, threading.RLock())


def sidecars(lite_dir: str | Path, collection: str) -> list[Path]:
    """The index sidecar files of ``collection`` in the Lite data folder."""
    base = Path(lite_dir) / "collections" / collection / "partitions"
    if not base.is_dir():
        return []
    return sorted(p for p in base.glob("*/indexes/*") if p.suffix in SIDECAR_SUFFIXES and p.is_file())


def load_collection(c: Any, collection: str, lite_dir: str | None) -> None:
    """``c.load_collection(collection)``; on Milvus Lite a failed load is
    retried once after the collection's index sidecars are removed (Lite
    rebuilds them from the segment data). Other failures raise as they are."""
    try:
        c.load_collection(collection)
        return
    except Exception:
        if lite_dir is None:
            raise
        files = sidecars(lite_dir, collection)
        if not files:
            raise
    for f in files:
        f.unlink(missing_ok=True)
    log.warning(
        "Milvus Lite could not load collection %r from %s; removed %d index file(s) (a crash may have torn one) and loading again, which rebuilds them",
        collection,
        lite_dir,
        len(files),
    )
    c.load_collection(collection)


def load_when_ready(c: Any, collection: str, lite_dir: str | None, wait_s: float = 10.0) -> None:
    """:func:`load_collection` for a collection another process may be creating
    at this moment (its index not made yet, so it cannot load): retried for up
    to ``wait_s`` seconds, then the last failure raises."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            load_collection(c, collection, lite_dir)
            return
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def connect(uri: str, make: Callable[[], Any]) -> Any:
    """``make()``, a client of the Lite folder ``uri``: the folder made private
    (0700) if new, refused with :class:`StoreLockedError` when another process
    holds it, and counted until :func:`closed`."""
    opening(uri)
    try:
        client = make()
    except Exception:
        check_free(os.path.abspath(uri))  # another process took it since the check
        raise
    with _users_lock:
        _users[os.path.abspath(uri)] = _users.get(os.path.abspath(uri), 0) + 1
    return client


def opening(uri: str) -> None:
    """Before a client of the Lite folder ``uri`` is made: the folder is made
    private (0700) if new, and one another process holds raises."""
    path = os.path.abspath(uri)
    if not os.path.exists(path) and os.path.isdir(os.path.dirname(path)):
        try:
            os.mkdir(path, PRIVATE_DIR)
        except FileExistsError:  # another process made it this moment
            pass
    if not _served_here(path):
        check_free(path)


def closed(uri: str) -> None:
    """A client of the folder was closed; the last one releases the folder's
    server and with it the lock, so another process may open the store."""
    path = os.path.abspath(uri)
    with _users_lock:
        left = _users.get(path, 0) - 1
        if left > 0:
            _users[path] = left
            return
        _users.pop(path, None)
    try:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)
    except Exception:  # releasing is best effort: the process's exit releases it too
        log.debug("releasing the Milvus Lite folder %s failed", path, exc_info=True)


def _served_here(path: str) -> bool:
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return False
    return path in getattr(server_manager_instance, "_servers", {})


def check_free(path: str) -> None:
    """Raise :class:`StoreLockedError` when another process holds the Lite
    folder's lock (milvus-lite takes an exclusive ``flock`` on its LOCK file)."""
    try:
        import fcntl
    except ImportError:  # Windows: milvus-lite's own error stands
        return
    try:
        fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR)
    except OSError:  # no LOCK file: nobody has opened it yet
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        raise StoreLockedError(
            f"the Milvus Lite folder {path} is in use by another process: a running `permrag mcp` server, or another program with this store open; Milvus Lite serves one process at a time",
            hint="stop that process (or close its PermRAG), or keep a store that several processes use on a Milvus server",
            cli_hint="stop that process, or keep a store that several processes use on a Milvus server (permrag init --milvus-uri http://HOST:19530)",
        ) from None
    finally:
        os.close(fd)
