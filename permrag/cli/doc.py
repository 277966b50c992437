"""The README's CLI reference, generated from ``--help`` (``python -m permrag.cli.doc``).

``python -m permrag.cli.doc --write`` rewrites the block between the
``<!-- cli-start -->`` and ``<!-- cli-end -->`` markers of README.md; a test
fails when the README and the commands disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import main

START, END = "<!-- cli-start -->", "<!-- cli-end -->"


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
    parts = []
    for full, cmd in commands():
        ctx = click.Context(cmd, info_name=full, help_option_names=["-h", "--help"], terminal_width=100, max_content_width=100)
        parts.append(f"#### `{full}`\n\n```\n{cmd.get_help(ctx)}\n```\n")
    return "\n".join(parts)


def readme_block(readme: str) -> str:
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def write(readme_path: Path) -> None:
    text = readme_path.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme_path.write_text(f"{head}{START}\n{render()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write(Path(__file__).resolve().parents[2] / "README.md")
    else:
        print(render())
