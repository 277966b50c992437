"""``permrag serve``: SCIM 2.0 provisioning (``/scim/v2``), the MCP server
(``/mcp``) and health checks in one ASGI application. See :mod:`permrag.serve.app`."""

from .app import build_app, run
from .auth import read_secret

__all__ = ["build_app", "read_secret", "run"]
