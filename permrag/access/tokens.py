"""The store's bearer tokens for the MCP HTTP server and ``permrag serve``
(``permrag token add|list|revoke``); the faces reach them through
:mod:`permrag.toolkit`.

A token names one principal — a user in a tenant, maybe acting through an
agent (``permrag token add USER --agent AGENT``: every call sees only what
the user *and* the agent may read) — and the tool scopes it may use
(``--scope``; none recorded: every search tool, the old behaviour, and never
``scim``). The server acts as that principal for every call made with it. Only a SHA-256 of each
token is stored; the token is shown once, when it is made. Tokens are 256
random bits, so a plain hash is enough (no password-style stretching: there
is nothing to guess), and a lookup by hash is one indexed query.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select, update

from ..errors import ArgumentError
from ..storage import db
from .state import check_principal

log = logging.getLogger(__name__)

PREFIX = "prt_"  # recognisable in logs and secret scanners
SEARCH_SCOPES = ("search", "fetch", "explain", "can_read")  # one per MCP tool
SCIM_SCOPE = "scim"  # the SCIM endpoint of `permrag serve`; never together with a search scope
SCOPES = SEARCH_SCOPES + (SCIM_SCOPE,)


def check_scopes(scopes: object) -> tuple[str, ...]:
    """Scopes as given (a space-separated string or a list), checked, deduplicated, sorted; () for None."""
    if scopes is None:
        return ()
    items = scopes.split() if isinstance(scopes, str) else scopes
    if not isinstance(items, (list, tuple, set, frozenset)) or not all(isinstance(x, str) for x in items):
        raise ArgumentError(f"scopes must be a list of scope names, not {scopes!r}")
    bad = sorted(set(items) - set(SCOPES))
    if bad:
        raise ArgumentError(f"unknown scope(s) {', '.join(map(repr, bad))}: a scope is one of {', '.join(SCOPES)}")
    if not items:
        raise ArgumentError("give at least one scope (or none at all: every search tool)")
    if SCIM_SCOPE in items and len(set(items)) > 1:
        raise ArgumentError("the scim scope stands alone: a SCIM token never searches and a search token never provisions; make two tokens")
    return tuple(sorted(set(items)))


def provisions(scopes: object) -> bool:
    """Whether a token's scopes include ``scim``: such a token is refused by every search verifier."""
    return isinstance(scopes, (list, tuple, set, frozenset)) and SCIM_SCOPE in scopes


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without the token."""

    id: str
    user: str
    tenant: str
    name: str | None
    created: float
    revoked: float | None
    agent: str | None = None  # the agent the token acts through for ``user`` (None: the user alone)
    scopes: tuple[str, ...] = ()  # () : none recorded — every search tool, no scim

    def allows(self, scope: str) -> bool:
        """Whether a call needing ``scope`` may be made with this token."""
        return scope in self.scopes if self.scopes else scope in SEARCH_SCOPES

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "user": self.user, "tenant": self.tenant, "name": self.name, "created": self.created, "revoked": self.revoked, "agent": self.agent, "scopes": list(self.scopes)}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Tokens:
    """The ``permrag_tokens`` table of one store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, user: str, tenant: str, *, name: str | None = None, agent: str | None = None, scopes: object = None) -> tuple[str, TokenInfo]:
        """Make a token for ``user`` in ``tenant`` (acting through ``agent``, limited to
        ``scopes`` if given); returns (the token — shown only now, its record)."""
        check_principal("user", user)
        check_principal("tenant", tenant)
        if agent is not None:
            check_principal("agent", agent)
        checked = check_scopes(scopes)
        if agent is not None and SCIM_SCOPE in checked:
            raise ArgumentError("a SCIM token provisions its tenant; it acts through no agent (drop --agent)")
        if name is not None and (not isinstance(name, str) or len(name) > 256):
            raise ArgumentError("a token name is a string of at most 256 characters")
        token = PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(secrets.token_hex(6), user, tenant, name, time.time(), None, agent, checked)
        row = {**info.to_dict(), "scopes": " ".join(info.scopes) or None}
        with db.transaction(self.engine, "adding a token") as conn:
            conn.execute(db.tokens.insert().values(token_hash=digest(token), **row))
        log.info("token %s made for user %r in tenant %r (agent %r, scopes %s)", info.id, user, tenant, agent, info.scopes or "default")
        return token, info

    def list(self, *, user: str | None = None) -> list[TokenInfo]:
        q = select(db.tokens).order_by(db.tokens.c.created)
        if user is not None:
            q = q.where(db.tokens.c.user == user)
        with db.reading(self.engine, "reading tokens") as conn:
            return [_info(r) for r in conn.execute(q)]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token by its id (from :meth:`list`); it stops working at once."""
        t = db.tokens.c
        with db.transaction(self.engine, "revoking a token") as conn:
            done = conn.execute(update(db.tokens).where(t.id == token_id, t.revoked.is_(None)).values(revoked=time.time())).rowcount
            row = conn.execute(select(db.tokens).where(t.id == token_id)).first()
        if row is None:
            raise ArgumentError(f"no token with id {token_id!r} (see `permrag token list`)")
        if not done:
            raise ArgumentError(f"token {token_id!r} is already revoked")
        return _info(row)

    def lookup(self, token: str) -> TokenInfo | None:
        """The live token's record, or None (unknown, revoked, or not a token at all)."""
        if not isinstance(token, str) or not token.startswith(PREFIX) or len(token) > 200:
            return None
        t = db.tokens.c
        with db.reading(self.engine, "reading tokens") as conn:
            row = conn.execute(select(db.tokens).where(t.token_hash == digest(token), t.revoked.is_(None))).first()
        return None if row is None else _info(row)


def _info(row: object) -> TokenInfo:
    r = row._mapping  # type: ignore[attr-defined]
    scopes = tuple(str(r["scopes"] or "").split())
    revoked = None if r["revoked"] is None else float(r["revoked"])
    return TokenInfo(r["id"], r["user"], r["tenant"], r["name"], float(r["created"]), revoked, r["agent"], scopes)
