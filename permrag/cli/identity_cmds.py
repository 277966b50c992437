"""``permrag identity|group|folder …``: groups from the identity provider and ACLs, one library call each."""

from __future__ import annotations

import click

from .base import StoreCommand, emit, json_opt, main, store, tenant_opt

expires_opt = click.option("--expires", default=None, metavar="TIME", help="Ends at TIME (ISO 8601 with a zone, e.g. 2027-01-01T00:00:00Z).")


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


# ---------------------------------------------------------------------- groups
@main.group()
def group() -> None:
    """Groups: add-member, remove-member, assign, unassign, list."""


@group.command("add-member", cls=StoreCommand)
@click.argument("group_name")
@click.argument("member")
@expires_opt
@tenant_opt
@click.pass_context
def group_add_member(ctx, group_name, member, expires, tenant) -> None:
    """Put MEMBER (user:<id>, group:<id>, or a user id) in GROUP; ids or unambiguous labels."""
    with store(ctx, catalog_only=True) as rag:
        changed = rag.identity.add_member(group_name, member, tenant, expires_at=expires)
        click.echo(f"{member!r} in group {group_name!r}" + (f" (policy version {rag.policy_version})" if changed else " already"))


@group.command("remove-member", cls=StoreCommand)
@click.argument("group_name")
@click.argument("member")
@tenant_opt
@click.pass_context
def group_remove_member(ctx, group_name, member, tenant) -> None:
    """Take MEMBER out of GROUP."""
    with store(ctx, catalog_only=True) as rag:
        rag.identity.remove_member(group_name, member, tenant)
        click.echo(f"{member!r} no longer in group {group_name!r} (policy version {rag.policy_version})")


@group.command("assign", cls=StoreCommand)
@click.argument("group_name")
@click.argument("role_name")
@expires_opt
@tenant_opt
@click.pass_context
def group_assign(ctx, group_name, role_name, expires, tenant) -> None:
    """Give every member of GROUP (through nested groups too) ROLE."""
    with store(ctx, catalog_only=True) as rag:
        changed = rag.identity.assign_group(group_name, role_name, tenant, expires_at=expires)
        click.echo(f"group {group_name!r} holds {role_name!r}" + (f" (policy version {rag.policy_version})" if changed else " already"))


@group.command("unassign", cls=StoreCommand)
@click.argument("group_name")
@click.argument("role_name")
@tenant_opt
@click.pass_context
def group_unassign(ctx, group_name, role_name, tenant) -> None:
    """Take ROLE away from GROUP."""
    with store(ctx, catalog_only=True) as rag:
        rag.identity.unassign_group(group_name, role_name, tenant)
        click.echo(f"group {group_name!r} no longer holds {role_name!r} (policy version {rag.policy_version})")


@group.command("list", cls=StoreCommand)
@tenant_opt
@json_opt
@click.pass_context
def group_list(ctx, tenant, as_json) -> None:
    """List groups with their direct members and roles."""
    with store(ctx, catalog_only=True) as rag:
        rag.sync()
        tp = rag.policy.tenant(tenant)
        data = [
            {"group": g, "label": tp.label("group:" + g), "members": rag.identity.members(g, tenant), "roles": sorted(tp.group_roles.get(g, ()))}
            for g in rag.identity.groups(tenant)
        ]

        def render() -> None:
            for d in data:
                click.echo(f"{tp.shown('group:' + d['group'])[len('group:'):]}: {len(d['members'])} members; roles {', '.join(d['roles']) or '-'}")
            if not data:
                click.echo(f"no groups in tenant {tenant!r}")

        emit(as_json, data, render)


# ---------------------------------------------------------------------- folder ACLs
@main.group()
def folder() -> None:
    """Folder ACLs, inherited by the documents below (acl set, acl show)."""


@folder.command("acl", cls=StoreCommand)
@click.argument("path")
@click.option("--allow", multiple=True, metavar="PRINCIPAL", help="user:<id>, group:<id> or a role; repeatable. Replaces the folder's ACL.")
@click.option("--deny", multiple=True, metavar="PRINCIPAL", help="As --allow, for deny entries (a deny wins).")
@click.option("--no-inherit", is_flag=True, help="The folder ignores its parent folder's ACL.")
@click.option("--show", is_flag=True, help="Print the folder's ACL; change nothing.")
@tenant_opt
@json_opt
@click.pass_context
def folder_acl(ctx, path, allow, deny, no_inherit, show, tenant, as_json) -> None:
    """Set (or --show) the ACL of folder PATH; documents ingested with acl.folder below it inherit it."""
    with store(ctx, catalog_only=True) as rag:
        if not show:
            changed = rag.identity.set_folder_acl(path, allow=list(allow), deny=list(deny), inherit=not no_inherit, tenant=tenant)
            click.echo(f"folder {path!r} ACL {'set' if changed else 'unchanged'} (policy version {rag.policy_version})")
            return
        acl = rag.identity.folder_acl(path, tenant)
        data = acl.to_json()

        def render() -> None:
            click.echo(f"folder {acl.folder}: allow {', '.join(e.principal for e in acl.allow) or '-'}; "
                       f"deny {', '.join(e.principal for e in acl.deny) or '-'}; {'inherits' if acl.inherit else 'does not inherit'}")

        emit(as_json, data, render)
