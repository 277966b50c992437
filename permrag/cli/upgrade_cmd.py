"""``permrag upgrade``: bring a store's catalog schema to this permrag's revision."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .base import StoreCommand, emit, json_opt, main

if TYPE_CHECKING:
    from ..toolkit import Upgrade


@main.command("upgrade", cls=StoreCommand)
@click.option("--dry-run", is_flag=True, help="List the pending revisions and change nothing.")
@json_opt
@click.pass_context
def upgrade_cmd(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Run the store's pending schema revisions (Alembic), in one transaction:
    one that fails leaves the store as it was. Opening a store already runs
    the additive ones; this runs every one. Stop the other processes that use
    the store and back it up first."""
    from ..toolkit import upgrade_store

    done = upgrade_store(ctx.find_root().obj.settings(), dry_run=dry_run)
    data = {
        "database": done.url,
        "from": done.start,
        "from_recorded": done.recorded,
        "to": done.head,
        "pending": [{"revision": r.id, "message": r.message, "additive": r.additive} for r in done.pending],
        "dry_run": done.dry_run,
    }
    emit(as_json, data, lambda: _render(done))


def _render(done: Upgrade) -> None:
    start = done.start if done.recorded else f"{done.start} (made by permrag 0.2.0, not yet recorded)"
    click.echo(f"store: {done.url}")
    click.echo(f"from revision {start}")
    click.echo(f"to revision {done.head}")
    if not done.pending:
        click.echo("nothing to run: the store is at this permrag's revision" + ("" if done.recorded or done.dry_run else " (now recorded)"))
        return
    click.echo(("pending" if done.dry_run else "ran") + f" {len(done.pending)} revision(s):")
    for r in done.pending:
        click.echo(f"  {r.id}  {r.message}" + ("" if r.additive else "  [not additive]"))
    if done.dry_run:
        click.echo("dry run: nothing was changed")
