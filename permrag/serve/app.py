"""``permrag serve``: one ASGI application for an identity provider and for agents.

* ``/scim/v2`` — SCIM 2.0 provisioning of users and groups (serve/scim.py);
* ``/mcp`` — the MCP server over streamable HTTP, with its token rules
  (mcp/server.py), when search tokens are configured;
* ``/healthz`` — the process answers; ``/readyz`` — the catalog and Milvus answer.

The mounted MCP app's session manager runs in this application's lifespan
(a mounted app's own lifespan never runs).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from ..mcp.server import build_server, http_app, warm_beside
from .auth import NoScimTokens, ScimAuth
from .scim import scim_app

log = logging.getLogger(__name__)


def _ready(rag: Any) -> dict[str, Any]:
    rag.refresh()
    rag.backend.has_tenant(0)  # any answer from Milvus will do
    return {"status": "ready", "policy_version": rag.policy_version, "catalog_version": rag.catalog_version}


def build_app(
    rag: Any,
    *,
    scim_secret: str | None = None,
    token_lookup: Callable[[str], Any] | None = None,
    tenant: str = "default",
    mcp_verifier: Any = None,
    mode: str = "auto",
    allow_mass_removal: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    warm: bool = True,
) -> Starlette:
    """The application for ``rag``. SCIM takes ``scim_secret`` and store tokens with the
    scim scope (``token_lookup``); ``/mcp`` is mounted when ``mcp_verifier`` is given,
    and the store warms beside it (``warm``: encoder loaded, Milvus connected)."""
    auth = ScimAuth(rag, secret=scim_secret, lookup=token_lookup, tenant=tenant)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            return JSONResponse(await rag.aio.run(_ready, rag))
        except Exception as exc:  # any failure of a dependency: not ready. The reason goes to the log, not to an
            # unauthenticated caller (a database or Milvus error names hosts, ports and accounts)
            log.warning("readiness check failed: %s", exc)
            return JSONResponse({"status": "unavailable", "detail": f"{exc.__class__.__name__}; the reason is in the server's log"}, 503)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Mount("/scim/v2", app=scim_app(rag, auth, allow_mass_removal=allow_mass_removal)),
    ]
    server = None
    if mcp_verifier is not None:
        server = build_server(rag, verifier=NoScimTokens(mcp_verifier, token_lookup, rag), mode=mode, issuer_url=f"http://{host}:{port}")  # type: ignore[arg-type]
        routes.append(Mount("/", app=http_app(server, host=host)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if server is None:  # SCIM alone never touches Milvus (a Lite file stays free for other processes)
            yield
            return
        if warm:
            warm_beside(rag)
        async with server.session_manager.run():
            yield

    return Starlette(routes=routes, lifespan=lifespan)


def run(app: Starlette, *, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
