"""The CLI reference page, generated from ``--help`` (``python -m permrag.cli.doc``).

``python -m permrag.cli.doc --write`` rewrites ``docs/cli.md``; a test fails
when the page and the commands disagree, so the reference cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import main

HEADER = """# CLI reference

Generated from each command's `--help` by `python -m permrag.cli.doc --write`
(a test fails when this page and the commands disagree). Every command takes
the global options of `permrag` (`--home`, `--json` where offered); errors
are one line on stderr with exit code 1 (2 for a usage error), never a
traceback.
"""


def commands(group: click.Group = main, prefix: str = "permrag") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = [(prefix, group)] if group is main else []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None:
            continue
        full = f"{prefix} {name}"
        if isinstance(cmd, click.Group):
            out.extend(commands(cmd, full))
        else:
            out.append((full, cmd))
    return out


def render() -> str:
    parts = [HEADER]
    for full, cmd in commands():
        ctx = click.Context(cmd, info_name=full, help_option_names=["-h", "--help"], terminal_width=100, max_content_width=100)
        parts.append(f"## `{full}`\n\n```\n{cmd.get_help(ctx)}\n```\n")
    return "\n".join(parts)


def page_path() -> Path:
    return Path(__file__).resolve().parents[2] / "docs" / "cli.md"


if __name__ == "__main__":
    if "--write" in sys.argv:
        page_path().write_text(render(), encoding="utf-8")
    else:
        print(render())
