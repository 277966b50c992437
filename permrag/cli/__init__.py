"""The ``permrag`` command (see :mod:`permrag.cli.base` for how it is built)."""

from . import agent_cmds, data_cmds, exposure_cmd, group_cmds, identity_cmds, mcp_cmd, policy_cmds, serve_cmd, upgrade_cmd  # noqa: F401  (register the commands)
from .base import main

__all__ = ["main"]
