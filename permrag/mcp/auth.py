"""Who an MCP tool call acts as: fixed at start, or the verified bearer token's owner.

The rule of every permrag face holds here too: the principal (user and
tenant) comes from the server's configuration or the authenticated request,
never from the model. A tool takes no user argument; :func:`principal_of`
reads the identity that the server was started with (``permrag mcp --as``,
for a local stdio server) or that the HTTP layer verified for this very
request (the SDK's bearer middleware puts it on the request before the tool
runs, and refuses requests without a valid token with 401).

Two verifiers, usable together (:class:`AnyOf`):

* :class:`TableVerifier` — tokens made with ``permrag token add`` (only their
  hash is stored; see :mod:`permrag.access.tokens`);
* :class:`JWTVerifier` — JWTs signed by your identity provider: ``sub`` is
  the user, a ``tenant`` claim (configurable) the tenant, ``exp`` required;
  audience and issuer checked when configured.

Delegation (RFC 8693): a JWT's ``act`` claim names the agent acting for the
user (``act.sub``); a nested ``act`` is the chain of earlier actors, and every
one of them must be allowed: the call sees the rows the user and each agent
may read. An ``act`` without a usable ``sub`` (at any depth), or deeper than
:data:`MAX_ACTORS`, refuses the whole token. A store token made with
``--agent`` carries its agent the same way.

Scopes: a tool call needs its scope (``search``, ``fetch``, ``explain``,
``can_read``). A store token is limited to the scopes it was made with; a
JWT to the permrag scopes its ``scope`` / ``scp`` claims name (a string or a
list of strings; any other shape refuses the token), if they name any. A
token that names none may call every search tool (the behaviour before
scopes). A token carrying the ``scim`` scope (store token or JWT) is refused
by both verifiers, on ``permrag mcp`` as on ``permrag serve``: a SCIM token
never searches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.mcpserver.exceptions import ToolError

from ..errors import ArgumentError, ConfigError
from ..toolkit import DEFAULT_TENANT, SCOPES, SEARCH_SCOPES, Tokens, check_principal, provisions

log = logging.getLogger(__name__)

HMAC = ("HS256", "HS384", "HS512")
ALGORITHMS = HMAC + ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")


MAX_ACTORS = 8  # agents in one delegation chain


@dataclass(frozen=True)
class Principal:
    """The user and tenant a call acts as; ``agents``: the agents acting for the user
    (the acting one first; every one must be allowed); ``scopes``: the tools it may
    call (None: every search tool)."""

    user: str
    tenant: str = DEFAULT_TENANT
    agents: tuple[str, ...] = ()
    scopes: frozenset[str] | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes if self.scopes is not None else scope in SEARCH_SCOPES

    @property
    def agent(self) -> tuple[str, ...] | None:
        """What the library's ``agent=`` takes: the chain, or None for the user alone."""
        return self.agents or None

    @property
    def via(self) -> dict[str, Any]:
        """Keyword arguments of a library call for this principal's agents (none for the user alone)."""
        return {"agent": self.agents} if self.agents else {}


def principal_of(context: Any, fixed: Principal | None, scope: str | None = None) -> Principal:
    """The call's principal: the server's fixed one, else the request's verified token;
    with ``scope``, a :class:`ToolError` unless the principal may make calls of that scope."""
    who = fixed if fixed is not None else _token_principal(context)
    if scope is not None and not who.allows(scope):
        raise ToolError(f"refused: this token's scopes do not include {scope!r}")
    return who


def _token_principal(context: Any) -> Principal:
    request = getattr(context.request_context, "request", None)
    scope = getattr(request, "scope", None) or {}
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser) and user.access_token.subject:
        claims = user.access_token.claims or {}
        agents = tuple(claims.get("agents") or ())
        return Principal(user.access_token.subject, str(claims.get("tenant") or DEFAULT_TENANT), agents, tool_scopes(user.access_token.scopes))
    # The bearer middleware already answers 401 to such a request; this is the second lock.
    raise ToolError("not authenticated: this server acts only for the owner of a valid bearer token")


def tool_scopes(scopes: Sequence[str] | None) -> frozenset[str] | None:
    """The permrag scopes a token names (None: it names none — every search tool)."""
    ours = frozenset(scopes or ()) & frozenset(SCOPES)
    return ours or None


def actors(claims: dict[str, Any]) -> tuple[str, ...] | None:
    """The agents of an RFC 8693 ``act`` claim, the acting one first; () without
    ``act``; None when it is malformed (not an object, no usable ``sub``, too deep)."""
    out: list[str] = []
    act = claims.get("act")
    while act is not None:
        if not isinstance(act, dict) or len(out) >= MAX_ACTORS:
            return None
        try:
            out.append(check_principal("agent", act.get("sub")))
        except ArgumentError:
            return None
        act = act.get("act")
    return tuple(out)


def claim_scopes(claims: dict[str, Any]) -> list[str] | None:
    """The scopes a JWT names in ``scope`` and ``scp``, each a space-separated string
    (RFC 8693) or a list of strings (Okta's ``scp``); None when either has another
    shape: an unreadable claim refuses the token rather than lifting its limits."""
    out: list[str] = []
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            out += value.split()
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out += [w for v in value for w in v.split()]
        else:
            return None
    return out


def _identity(subject: object, tenant: object) -> tuple[str, str] | None:
    """A token's user and tenant when both are usable names, else None (the token is refused)."""
    try:
        return check_principal("user", subject), check_principal("tenant", tenant)
    except ArgumentError:
        return None


class TableVerifier(TokenVerifier):
    """Bearer tokens from the store's ``permrag_tokens`` table."""

    def __init__(self, tokens: Tokens, runner: Any) -> None:
        self.tokens = tokens
        self.runner = runner  # the store's AsyncRunner: the lookup is a SQL query

    async def verify_token(self, token: str) -> AccessToken | None:
        info = await self.runner.run(self.tokens.lookup, token)
        if info is None or provisions(info.scopes):  # a SCIM token never searches, on any server
            return None
        claims = {"tenant": info.tenant, "iss": "permrag", "agents": [info.agent] if info.agent else []}
        return AccessToken(token=token, client_id=f"permrag-token:{info.id}", scopes=list(info.scopes), subject=info.user, claims=claims)


class JWTVerifier(TokenVerifier):
    """JWTs checked against one key: an HMAC secret, or a public key (PEM) for RS/ES/PS/EdDSA."""

    def __init__(
        self,
        key: str,
        *,
        algorithm: str = "HS256",
        audience: str | None = None,
        issuer: str | None = None,
        tenant_claim: str = "tenant",
        default_tenant: str = DEFAULT_TENANT,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"JWT algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
        if not key.strip():
            raise ConfigError("the JWT key is empty")
        if algorithm in HMAC and len(key.encode()) < 32:
            raise ConfigError("an HMAC JWT secret must be at least 32 bytes")
        if algorithm not in HMAC and "PUBLIC KEY" not in key:
            raise ConfigError(f"{algorithm} needs a PEM public key (-----BEGIN PUBLIC KEY-----)")
        self.key = key
        self.algorithm = algorithm
        self.audience = audience
        self.issuer = issuer
        self.tenant_claim = tenant_claim
        self.default_tenant = default_tenant

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> JWTVerifier:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"cannot read the JWT key file {str(path)!r}: {exc.__class__.__name__}") from None
        return cls(key, **options)

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["sub", "exp"]},
            )
        except jwt.PyJWTError as exc:
            log.info("bearer JWT refused: %s", exc.__class__.__name__)
            return None
        who = _identity(claims.get("sub"), claims.get(self.tenant_claim, self.default_tenant))
        if who is None:
            log.info("bearer JWT refused: unusable sub or %s claim", self.tenant_claim)
            return None
        agents = actors(claims)
        if agents is None:
            log.info("bearer JWT refused: an act claim without a usable sub")
            return None
        scopes = claim_scopes(claims)
        if scopes is None or provisions(scopes):
            log.info("bearer JWT refused: a scope claim that is neither a string nor a list of strings, or the scim scope (which never searches)")
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("azp") or claims.get("client_id") or "jwt"),
            scopes=scopes,
            expires_at=int(claims["exp"]),
            subject=who[0],
            claims={"tenant": who[1], "iss": claims.get("iss"), "agents": list(agents)},
        )


class AnyOf(TokenVerifier):
    """The first verifier that accepts the token."""

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        self.verifiers = list(verifiers)

    async def verify_token(self, token: str) -> AccessToken | None:
        for v in self.verifiers:
            found = await v.verify_token(token)
            if found is not None:
                return found
        return None
