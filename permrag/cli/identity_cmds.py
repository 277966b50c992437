"""``permrag identity …``: users and groups from the identity provider, one library call each (groups and folder ACLs by hand: group_cmds.py)."""

from __future__ import annotations

import click

from .base import StoreCommand, emit, json_opt, main, store, tenant_opt



# ---------------------------------------------------------------------- identity sync
@main.group()
def identity() -> None:
    """Identity provider exports: sync users and nested groups."""


@identity.command("sync", cls=StoreCommand)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["scim", "ldif", "csv"]), default=None, help="Export format (default: from the suffix or content).")
@click.option("--dry-run", is_flag=True, help="Print what would change, with the removal counts and the deny groups emptied; change nothing.")
@click.option("--allow-mass-removal", is_flag=True, help="Apply a sync that removes more than half of the memberships, all of them, or every member of a deny group.")
@tenant_opt
@json_opt
@click.pass_context
def identity_sync(ctx, files, fmt, dry_run, allow_mass_removal, tenant, as_json) -> None:
    """Make TENANT's identity state that of FILES (SCIM 2.0 JSON, LDIF or CSV): memberships, labels, deactivations.

    All FILES are one export: users and groups may come in separate files, and
    the pages of a SCIM listing are merged (a listing missing pages is refused).
    Users and groups are keyed by the provider's id; names are labels. A mass
    removal is refused unless --allow-mass-removal. The policy version moves
    once (not at all if nothing changed)."""
    with store(ctx, catalog_only=True) as rag:
        report = rag.identity.sync(list(files), tenant=tenant, format=fmt, dry_run=dry_run, allow_mass_removal=allow_mass_removal)
        emit(as_json, report.to_dict(), lambda: _render_sync(report, dry_run))


def _render_sync(report, dry_run: bool) -> None:
    for m, g in report.added:
        click.echo(f"+ {m} in group:{g}")
    for m, g in report.removed:
        click.echo(f"- {m} in group:{g}")
    for m, g in report.renewed:
        click.echo(f"= {m} in group:{g} (made permanent)")
    for key, old, new in report.relabelled:
        if old and new:  # a rename; first labels and labels dropped with their id are only counted
            click.echo(f"~ {key} renamed {old!r} → {new!r}")
    for u in report.deactivated:
        click.echo(f"! user:{u} deactivated")
    for u in report.reactivated:
        click.echo(f"! user:{u} active again")
    for why in report.mass_removal:
        click.echo(f"mass removal{' (refused without --allow-mass-removal)' if dry_run else ''}: {why}")
    verb = "would change" if dry_run else "changed" if report.applied else "nothing to change"
    click.echo(
        f"{report.users} users, {report.groups} groups: {len(report.added)} memberships added, "
        f"{len(report.removed)} removed of {report.memberships_before}, {report.unchanged} unchanged, "
        f"{len(report.relabelled)} labels changed, {len(report.deactivated)} deactivated, {len(report.reactivated)} reactivated — {verb} "
        f"(policy version {report.policy_version})"
    )
