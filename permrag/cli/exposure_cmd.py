"""``permrag exposure`` and ``permrag consistency-token``: the consistency contract from the shell.

``exposure`` lists audited serves of rows the user may no longer read (under
the current policy, or ``--version``'s), each with the path that allowed it
when served and the change that ended it; ``--retention DAYS`` sets how long
policy history is kept for it. ``consistency-token`` prints the token of the
store's versions now — after a write, hand it to a reader's ``--at-least``.
"""

from __future__ import annotations

import time

import click

from ..errors import ArgumentError
from .base import StoreCommand, emit, json_opt, main, store, tenant_opt
from .data_cmds import console


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@main.command(cls=StoreCommand)
@click.option("--document", default=None, help="Only serves of this document (or row) id.")
@click.option("--user", "user_name", default=None, help="Only serves to this user.")
@click.option("--since", default=None, type=float, help="Only serves since this many hours ago.")
@click.option("--policy-version", "version", default=None, type=click.IntRange(0), help="Judge against the policy at this version (default: the current one).")
@click.option("--retention", default=None, type=float, help="Set the days of policy history kept for this report, and print it (nothing else is done).")
@tenant_opt
@json_opt
@click.pass_context
def exposure(ctx, document, user_name, since, version, retention, tenant, as_json) -> None:
    """Who was served rows they may no longer read: each serve, the path that allowed it then, and the change that ended it."""
    with store(ctx, catalog_only=True) as rag:
        if retention is not None:
            days = rag.policy_history(retention)
            emit(as_json, {"policy_history_days": days}, lambda: click.echo(f"policy history kept for {days:g} days"))
            return
        if since is not None and since < 0:
            raise ArgumentError(f"--since must be a number of hours >= 0, not {since!r}")
        found = rag.exposure(document=document, user=user_name, since=time.time() - since * 3600 if since is not None else None, tenant=tenant, version=version)
        rows = [e.to_dict() for e in found]

        def render() -> None:
            from rich.table import Table

            if not rows:
                console.print("no serve returned a row its user may not read" + (f" under policy version {version}" if version is not None else " now"))
                return
            t = Table("served", "user", "row", "at v", "allowed then by", "ended", "late")
            for e in rows:
                ended = f"v{e['ended_version']} {_when(e['ended_at'])}" if e["ended_version"] is not None else "—"
                who = e["user"] + (f" via {e['agent']}" if e["agent"] else "")
                t.add_row(_when(e["time"]), who, e["external_id"], str(e["served_version"]), (e["path"] or e["decision"]).split(": ", 1)[-1][:80], ended, "LATE" if e["late"] else "")
            console.print(t)

        emit(as_json, rows, render)


@main.command("consistency-token", cls=StoreCommand)
@click.pass_context
def consistency_token(ctx) -> None:
    """Print the consistency token of the store's versions now (pass it to a read's --at-least)."""
    with store(ctx, catalog_only=True) as rag:
        click.echo(rag.consistency_token())
