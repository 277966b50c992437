"""The MCP server (``permrag mcp``): search, can_read, fetch and explain as one principal.

Four tools, each one library call on the store's bounded pool
(:mod:`permrag.search.aio`), each needing its scope (mcp/auth.py):

* ``search(query, k, mode)`` — :meth:`~permrag.core.PermRAG.search`;
* ``can_read(document_id)`` — yes (with the role and rule that allow it) or
  no; the *same* no for a hidden document and one that does not exist;
* ``fetch(document_id)`` — :meth:`~permrag.core.PermRAG.fetch`: a document's
  text, only if readable (the same error for hidden and missing);
* ``explain(document_id)`` — why the principal may or may not read a
  document it may read; the same 'no' as ``can_read`` for any other.

A principal may be a user acting through agents (a delegation token): every
tool then answers for the rows the user and every agent may read.

None takes a user or tenant: the principal is fixed when the server starts
(``--as``, stdio) or is the owner of the request's verified bearer token
(HTTP; see :mod:`permrag.mcp.auth`). A call that passes any argument its tool
does not declare — ``user`` above all — is refused, never silently ignored,
so a model cannot even believe it changed whom it acts as. Every output cites
external ids and the policy version it was computed under.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from ..errors import BackendError, ConfigError, PermragError
from .auth import Principal, principal_of

log = logging.getLogger(__name__)

MAX_K = 50
IDENTITY_ARGS = frozenset({"user", "user_id", "tenant", "as", "as_user", "principal", "subject", "sub", "agent", "act", "actor", "scope", "scopes"})
INSTRUCTIONS = (
    "A permissioned knowledge base. Every answer is computed for the user this connection is authenticated as; "
    "no argument can change that. Cite passages by their external id; each answer carries the policy version "
    "it was computed under."
)
Mode = Literal["auto", "hybrid", "dense", "keyword"]


class Passage(BaseModel):
    external_id: str = Field(description="The row's id (a chunk's ends in #n); cite it.")
    document: str = Field(description="The document the row belongs to.")
    text: str
    score: float
    policy_version: int


class SearchResult(BaseModel):
    user: str = Field(description="Whom the search ran as (fixed by the server).")
    agent: str | None = Field(default=None, description="The agent acting for the user (fixed by the server); None: the user alone.")
    tenant: str
    policy_version: int = Field(description="The policy version the answer was computed under.")
    mode: str = Field(description="The search mode that ran: 'auto' resolves to hybrid where the backend has BM25, else dense.")
    passages: list[Passage]
    consistency_token: str = Field(default="", description="The versions the answer was computed under; pass it as at_least to a later call to read at least this state.")
    complete: bool = Field(default=True, description="True when the passages are the exact top-k of what the user may read.")
    visible_rows: int | None = Field(default=None, description="How many rows the user may read in the tenant.")
    reason: str | None = Field(default=None, description="Why fewer than k passages came back (fewer_visible, deny_all, fewer_matches, missing_vectors); None when k did.")


class Permission(BaseModel):
    document_id: str
    readable: bool
    why: str | None = Field(description="The role and rule that allow reading; none when not readable.")
    policy_version: int


class FetchedDocument(BaseModel):
    document_id: str
    rows: list[str] = Field(description="External ids of the rows the text is made of, in order.")
    text: str
    policy_version: int
    consistency_token: str = ""


class PermragMCP(MCPServer):
    """An :class:`MCPServer` that refuses arguments a tool does not declare."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = next((t for t in await self.list_tools() if t.name == name), None)
        if tool is not None:
            extra = sorted(set(arguments) - set((tool.input_schema or {}).get("properties") or {}))
            if set(extra) & IDENTITY_ARGS:
                raise ToolError(f"refused: {', '.join(extra)} is not an argument; this server acts only as the user it authenticated")
            if extra:
                raise ToolError(f"unknown argument(s) {', '.join(extra)} for {name}")
        return await super().call_tool(name, arguments, context)


def build_server(
    rag: Any,
    *,
    principal: Principal | None = None,
    verifier: TokenVerifier | None = None,
    mode: Mode = "auto",
    issuer_url: str = "http://127.0.0.1",
) -> PermragMCP:
    """The server for ``rag``, acting as ``principal`` (stdio) or as each request's token owner (HTTP, ``verifier``)."""
    if (principal is None) == (verifier is None):
        raise ConfigError("an MCP server acts as one fixed principal (--as) or as each request's bearer token owner, not both or neither")
    auth = AuthSettings(issuer_url=issuer_url, resource_server_url=None) if verifier is not None else None  # type: ignore[arg-type]
    server = PermragMCP("permrag", instructions=INSTRUCTIONS, token_verifier=verifier, auth=auth, log_level="WARNING")
    default_mode = mode

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await rag.aio.run(fn, *args, **kwargs)
        except PermragError as exc:  # the library's one-line message, for the model to read
            raise ToolError(str(exc)) from None

    @server.tool(description="Search the knowledge base as the authenticated user; returns only passages that user may read, each with its external id and the policy version of the answer.")
    async def search(query: str, ctx: Context, k: Annotated[int, Field(ge=1, le=MAX_K)] = 5, mode: Mode | None = None, at_least: str | None = None) -> Annotated[CallToolResult, SearchResult]:
        who = principal_of(ctx, principal, "search")
        hits = await call(rag.search, query, user=who.user, tenant=who.tenant, k=k, mode=mode or default_mode, **who.via, **_since(at_least))
        out = SearchResult(
            user=who.user,
            agent=who.agents[0] if who.agents else None,
            tenant=who.tenant,
            policy_version=hits.policy_version,
            mode=hits.mode,
            passages=[Passage(external_id=h.external_id, document=h.document, text=h.text, score=h.score, policy_version=h.policy_version) for h in hits],
            consistency_token=hits.consistency_token,
            complete=hits.complete,
            visible_rows=hits.visible_rows,
            reason=hits.reason,
        )
        text = "\n\n".join(f"[{p.external_id}] {p.text}" for p in out.passages) or "No readable passages found."
        why = "" if out.reason is None else f"; {len(out.passages)} passages: {out.reason.replace('_', ' ')}"
        return _result(f"{text}\n\n(policy version {out.policy_version}{why})", out)

    _permission_tools(server, rag, principal, call)

    @server.tool(description="The full text of a document (by external id) the authenticated user may read; a hidden and a missing document get the same error.")
    async def fetch(document_id: str, ctx: Context, at_least: str | None = None) -> Annotated[CallToolResult, FetchedDocument]:
        who = principal_of(ctx, principal, "fetch")
        hits = await call(rag.fetch, document_id, user=who.user, tenant=who.tenant, **who.via, **_since(at_least))
        out = FetchedDocument(
            document_id=document_id, rows=[h.external_id for h in hits], text="\n".join(h.text for h in hits), policy_version=hits.policy_version, consistency_token=hits.consistency_token
        )
        return _result(f"[{document_id}] {out.text}\n\n(policy version {out.policy_version})", out)

    return server


def _permission_tools(server: PermragMCP, rag: Any, principal: Principal | None, call: Callable[..., Any]) -> None:
    """``can_read`` and ``explain``: one decision each (:func:`_permission`), the same 'no' for hidden and missing."""

    @server.tool(description="May the authenticated user read a document (by external id)? The answer is the same 'no' for a document that is hidden and one that does not exist.")
    async def can_read(document_id: str, ctx: Context) -> Annotated[CallToolResult, Permission]:
        out = await call(_permission, rag, principal_of(ctx, principal, "can_read"), document_id)
        answer = f"yes: you may read {document_id!r} ({out.why})" if out.readable else f"no: there is no document {document_id!r} that you may read"
        return _result(f"{answer} (policy version {out.policy_version})", out)

    @server.tool(
        description="Why the authenticated user (and the agent acting for it) may read a document (by external id): the path and rule of each. A document it may not read gets the same 'no' as one that does not exist."
    )
    async def explain(document_id: str, ctx: Context) -> Annotated[CallToolResult, Permission]:
        out = await call(_permission, rag, principal_of(ctx, principal, "explain"), document_id, "explain")
        answer = f"yes: {out.why}" if out.readable else f"no: there is no document {document_id!r} that you may read"
        return _result(f"{answer} (policy version {out.policy_version})", out)


def _permission(rag: Any, who: Principal, document_id: str, tool: str = "can_read") -> Permission:
    """May ``who`` read the document, and why; audited as a ``check`` (``tool``: which tool asked)."""
    snap = rag.access.snapshot(who.user, who.tenant, who.agent)
    ok = rag.access.readable(who.user, document_id, who.tenant, snapshot=snap, quiet=True) is not None
    why = rag.access.explain(who.user, document_id, who.tenant, who.agent) if ok else None
    if why is not None and not why.visible:  # revoked between the two answers: say no, like any hidden row
        ok, why = False, None
    detail = {"external_id": document_id, "readable": ok, "via": "mcp", **({"tool": tool} if tool != "can_read" else {})}
    rag.audit.record("check", who.user, who.tenant, snap.policy_version, detail, agents=who.agents)
    return Permission(document_id=document_id, readable=ok, why=str(why) if why else None, policy_version=snap.policy_version)


def _since(token: str | None) -> dict[str, str]:
    """A read that must reflect the consistency token the client got from an earlier answer (none without one)."""
    return {"at_least": token} if token is not None else {}


def _result(text: str, structured: BaseModel) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured.model_dump(mode="json"))


def serve(rag: Any, *, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Run :func:`build_server` until interrupted: ``stdio``, or ``http`` (streamable HTTP at ``/mcp``)."""
    server = build_server(rag, issuer_url=f"http://{host}:{port}", **options)
    if transport not in ("stdio", "http"):
        raise ConfigError(f"transport must be 'stdio' or 'http', not {transport!r}")
    # The store warms (encoder loaded, a bound user's rows read back) beside the
    # server, not before it: a client is answered at once, and a tool call that
    # comes first simply does what warming would have done.
    threading.Thread(target=_warm, args=(rag, options.get("principal")), name="permrag-mcp-warm", daemon=True).start()
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)


def http_app(server: PermragMCP, *, host: str = "127.0.0.1") -> Any:
    """``server``'s streamable-HTTP ASGI app (its route: ``/mcp``), to mount in a
    larger application (``permrag serve``) rather than run. That application's
    lifespan must run ``server.session_manager.run()``: a mounted app's own
    lifespan never runs."""
    return server.streamable_http_app(host=host)


def warm_beside(rag: Any) -> None:
    """Warm the store on a daemon thread (see :func:`serve`)."""
    threading.Thread(target=_warm, args=(rag, None), name="permrag-serve-warm", daemon=True).start()


def _warm(rag: Any, fixed: Principal | None) -> None:
    try:
        rag.warm(**({"users": [fixed.user], "tenant": fixed.tenant} if fixed is not None else {}))
    except BackendError as exc:  # served anyway: each search raises until Milvus answers
        log.warning("warming the store failed: %s", exc)
    except Exception:  # a closed store (the server stopped first), or anything else: warming is only a head start
        log.debug("warming the store stopped", exc_info=True)
