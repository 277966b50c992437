"""The store's bearer tokens for the MCP HTTP server (``permrag token add|list|revoke``).

A token names one principal — a user in a tenant — and nothing else: the
server acts as that user for every call made with it. Only a SHA-256 of each
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

from .. import db
from ..access import check_principal
from ..errors import ArgumentError

log = logging.getLogger(__name__)

PREFIX = "prt_"  # recognisable in logs and secret scanners


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without the token."""

    id: str
    user: str
    tenant: str
    name: str | None
    created: float
    revoked: float | None

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "user": self.user, "tenant": self.tenant, "name": self.name, "created": self.created, "revoked": self.revoked}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Tokens:
    """The ``permrag_tokens`` table of one store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, user: str, tenant: str, *, name: str | None = None) -> tuple[str, TokenInfo]:
        """Make a token for ``user`` in ``tenant``; returns (the token — shown only now, its record)."""
        check_principal("user", user)
        check_principal("tenant", tenant)
        if name is not None and (not isinstance(name, str) or len(name) > 256):
            raise ArgumentError("a token name is a string of at most 256 characters")
        token = PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(secrets.token_hex(6), user, tenant, name, time.time(), None)
        with db.transaction(self.engine, "adding a token") as conn:
            conn.execute(db.tokens.insert().values(token_hash=digest(token), **info.to_dict()))
        log.info("token %s made for user %r in tenant %r", info.id, user, tenant)
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
    return TokenInfo(r["id"], r["user"], r["tenant"], r["name"], float(r["created"]), None if r["revoked"] is None else float(r["revoked"]))
