"""The MCP face: a server whose tools act as one authenticated principal.

``permrag mcp --as alice`` (stdio) or ``permrag mcp --transport http
--tokens`` / ``--jwt-key FILE`` (streamable HTTP, each request's bearer
token names the user). See :mod:`permrag.mcp.server` and
:mod:`permrag.mcp.auth`.
"""

from ..toolkit import TokenInfo, Tokens
from .auth import AnyOf, JWTVerifier, Principal, TableVerifier
from .server import build_server, serve

__all__ = ["AnyOf", "JWTVerifier", "Principal", "TableVerifier", "TokenInfo", "Tokens", "build_server", "serve"]
