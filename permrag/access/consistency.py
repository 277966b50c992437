"""Consistency tokens: what an answer is worth, and read-your-writes anywhere.

A token names the policy and catalog versions an answer was computed under
(or a write left the store at): ``pr1.<policy>.<catalog>.<mac>``, where the
MAC is an HMAC-SHA256 keyed by the store's id, so a token is bound to its
store and an edited one is refused (for callers who cannot read the store's
database; a token grants nothing, it only asks to wait). Parsing is strict:
anything else is an :class:`ArgumentError`, never "no constraint".

``at_least=token`` on a read answers only once this process's copy reflects
at least those versions: at once when it already does (no query), else after
catching up with the stored versions, re-checked with a short back-off for
at most ``wait`` seconds (the token may come from a replica's future or from
a process whose write is still committing), then :class:`StaleReadError`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine

from ..errors import ArgumentError, StaleReadError
from ..storage import db

PREFIX = "pr1"
DEFAULT_WAIT = 2.0  # seconds an at_least read waits for the store to reach the token
_TOKEN = re.compile(r"pr1\.(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})\.([0-9a-f]{16})")
_KEYS: weakref.WeakKeyDictionary[Engine, bytes] = weakref.WeakKeyDictionary()
_KEYS_LOCK = threading.Lock()


def _key(engine: Engine) -> bytes:
    """The store's id (read once per process): the MAC key."""
    with _KEYS_LOCK:
        key = _KEYS.get(engine)
    if key is None:
        with db.reading(engine, "reading the store id") as conn:
            key = (db.get_setting(conn, "store_id") or "").encode()
        with _KEYS_LOCK:
            _KEYS[engine] = key
    return key


@functools.lru_cache(maxsize=1024)  # every answer at one pair of versions carries the same token
def _mac(key: bytes, policy: int, catalog: int) -> str:
    return hmac.new(key, f"{PREFIX}.{policy}.{catalog}".encode(), hashlib.sha256).hexdigest()[:16]


def make_token(engine: Engine, policy: int, catalog: int) -> str:
    """The token of ``(policy, catalog)`` versions for this store."""
    return f"{PREFIX}.{policy}.{catalog}.{_mac(_key(engine), policy, catalog)}"


def parse_token(engine: Engine, token: object) -> tuple[int, int]:
    """(policy version, catalog version) of a token of this store; else :class:`ArgumentError`."""
    if not isinstance(token, str):
        raise ArgumentError(f"at_least must be a consistency token (a string like 'pr1.…'), not {type(token).__name__}")
    m = _TOKEN.fullmatch(token)
    if m is None:
        raise ArgumentError(f"at_least {token[:80]!r} is not a consistency token (expected 'pr1.<policy>.<catalog>.<check>')")
    policy, catalog = int(m.group(1)), int(m.group(2))
    if not hmac.compare_digest(m.group(3), _mac(_key(engine), policy, catalog)):
        raise ArgumentError("at_least: this consistency token was altered or belongs to another store")
    return policy, catalog


def check_wait(wait: object) -> float:
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 60:
        raise ArgumentError(f"wait must be a number of seconds from 0 to 60, not {wait!r}")
    return float(wait)


def reach(access: Any, token: object, wait: float = DEFAULT_WAIT) -> tuple[int, int]:
    """Return once ``access``'s copy is at or past ``token``'s versions (see the module docstring)."""
    policy, catalog = parse_token(access.engine, token)
    wait = check_wait(wait)
    if access.policy.version >= policy and access.catalog.version >= catalog:
        return policy, catalog
    deadline, pause = time.monotonic() + wait, 0.001
    while True:
        access.refresh()
        if access.policy.version >= policy and access.catalog.version >= catalog:
            return policy, catalog
        left = deadline - time.monotonic()
        if left <= 0:
            raise StaleReadError(
                f"the store has not reached policy version {policy} and catalog version {catalog} after {wait:g} s "
                f"(it is at {access.policy.version} and {access.catalog.version}); nothing was answered"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)


def current_token(access: Any) -> str:
    """The token of the stored versions now (after catching up): what a write just made holds."""
    access.refresh()
    return make_token(access.engine, access.policy.version, access.catalog.version)


class ConsistencyFaces:
    """The consistency contract on the façade (mixed into :class:`permrag.PermRAG`)."""

    access: Any
    policy: Any

    def consistency_token(self) -> str:
        """A token of the store's versions now: after a write, pass it as ``at_least=`` to a read
        (in any process) to read that write (docs/consistency.md)."""
        return current_token(self.access)

    def wait_for(self, token: str, *, wait: float = DEFAULT_WAIT) -> None:
        """Return once this process reflects ``token``'s versions; else :class:`StaleReadError` after ``wait`` seconds."""
        reach(self.access, token, wait)

    def exposure(self, *, document: str | None = None, user: str | None = None, since: float | None = None, tenant: str = "default", version: int | None = None) -> list[Any]:
        """Audited serves of rows the user may not read now (or at policy ``version``), with the path
        that allowed each then: see :mod:`permrag.access.exposure`."""
        from .exposure import exposure

        return exposure(self.access, document=document, user=user, since=since, tenant=tenant, version=version)

    def policy_history(self, days: float | None = None) -> float:
        """Days of policy history kept for exposure reports (``days`` given: set it; see policy/deltas.py)."""
        from ..policy.deltas import get_retention, set_retention

        return get_retention(self.access.engine) if days is None else set_retention(self.access.engine, days)

    def follow(self) -> bool:
        """On PostgreSQL, apply other processes' policy changes as they commit (LISTEN/NOTIFY); False elsewhere."""
        return bool(self.policy.follow())
