"""Who may call ``permrag serve``: SCIM and search tokens never cross over.

* ``/scim/v2`` takes the secret of ``--scim-token-file`` (compared in
  constant time) or a store token made with the ``scim`` scope
  (``permrag token add --scope scim``); the request provisions the tenant the
  token names (the server's ``--tenant`` for the file's secret). Any other
  token, a search token included, is 401: a search token never writes identity.
* ``/mcp`` takes the MCP server's verifiers (store tokens, JWTs) but never a
  token with the ``scim`` scope, and the SCIM secret is no MCP token at all:
  a SCIM token never searches.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp.server.auth.provider import AccessToken, TokenVerifier
from starlette.requests import Request

from ..errors import ConfigError
from .scim_resources import ScimError

SCIM_SCOPE = "scim"
MIN_SECRET = 32


def read_secret(path: str | Path) -> str:
    """The SCIM bearer secret in ``path`` (at least 32 characters, surrounding blanks dropped)."""
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read the SCIM token file {str(path)!r}: {exc.__class__.__name__}") from None
    if len(secret) < MIN_SECRET or any(c.isspace() for c in secret):
        raise ConfigError(f"the SCIM token in {str(path)!r} must be one word of at least {MIN_SECRET} characters (e.g. `openssl rand -hex 32`)")
    return secret


def scim_scoped(info: Any) -> bool:
    return info is not None and SCIM_SCOPE in tuple(getattr(info, "scopes", ()) or ())


class ScimAuth:
    """Authorizes a SCIM request; returns the tenant it provisions."""

    def __init__(self, rag: Any, *, secret: str | None, lookup: Callable[[str], Any] | None, tenant: str) -> None:
        self.rag, self.secret, self.lookup, self.tenant = rag, secret, lookup, tenant

    async def __call__(self, request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if self.secret is not None and hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self.secret.encode()):
                return self.tenant
            if self.lookup is not None:
                info = await self.rag.aio.run(self.lookup, token)
                if scim_scoped(info):
                    return str(info.tenant)
        raise ScimError(401, "a SCIM bearer token is required: the secret of --scim-token-file or a store token with the scim scope (a search token cannot provision)")


class NoScimTokens(TokenVerifier):
    """The MCP verifiers, refusing any store token that carries the ``scim`` scope."""

    def __init__(self, inner: TokenVerifier, lookup: Callable[[str], Any] | None, rag: Any) -> None:
        self.inner, self.lookup, self.rag = inner, lookup, rag

    async def verify_token(self, token: str) -> AccessToken | None:
        if self.lookup is not None and scim_scoped(await self.rag.aio.run(self.lookup, token)):
            return None
        found = await self.inner.verify_token(token)
        if found is not None and SCIM_SCOPE in (found.scopes or []):
            return None
        return found
