"""``permrag group|folder …``: groups and folder ACLs as an administrator types them, one library call each.

Every principal typed must name a user, group or role the tenant knows
(else an error naming the closest one; ``--allow-unknown`` names it
anyway), every ``--expires`` must be in the future, and every confirmation
echoes what now holds, with its end.
"""

from __future__ import annotations

import click

from ..toolkit import show_time
from .base import StoreCommand, emit, json_opt, main, store, tenant_opt

expires_opt = click.option("--expires", default=None, metavar="TIME", help="Ends at TIME, in the future (ISO 8601 with a zone, e.g. 2027-01-01T00:00:00Z).")
unknown_opt = click.option("--allow-unknown", is_flag=True, help="Name a user, group or role the tenant does not know yet (else an error naming the closest one).")


def until(expires_at: float | None) -> str:
    return "" if expires_at is None else f" until {show_time(expires_at)}"


# ---------------------------------------------------------------------- groups
@main.group()
def group() -> None:
    """Groups: add-member, remove-member, assign, unassign, list."""


@group.command("add-member", cls=StoreCommand)
@click.argument("group_name")
@click.argument("member")
@expires_opt
@unknown_opt
@tenant_opt
@click.pass_context
def group_add_member(ctx, group_name, member, expires, allow_unknown, tenant) -> None:
    """Put MEMBER (user:<id>, group:<id>, or a user id) in GROUP; ids or unambiguous labels."""
    with store(ctx, catalog_only=True) as rag:
        changed = rag.identity.add_member(group_name, member, tenant, expires_at=expires, allow_unknown=allow_unknown)
        held = {str(m): m for m in rag.identity.members(group_name, tenant)}
        key = rag.policy.tenant(tenant).resolve_key(member if member.startswith(("user:", "group:")) else f"user:{member}")
        end = until(held[key].expires_at) if key in held else ""
        click.echo(f"{member!r} in group {group_name!r}{end}" + (f" (policy version {rag.policy_version})" if changed else " already"))


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
@unknown_opt
@tenant_opt
@click.pass_context
def group_assign(ctx, group_name, role_name, expires, allow_unknown, tenant) -> None:
    """Give every member of GROUP (through nested groups too) ROLE."""
    with store(ctx, catalog_only=True) as rag:
        changed = rag.identity.assign_group(group_name, role_name, tenant, expires_at=expires, allow_unknown=allow_unknown)
        roles = rag.identity.group_roles(group_name, tenant)
        end = until(roles[role_name].expires_at) if role_name in roles else ""
        click.echo(f"group {group_name!r} holds {role_name!r}{end}" + (f" (policy version {rag.policy_version})" if changed else " already"))


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
    """List groups with their direct members and roles (expiring ones with their end; expired ones not at all)."""
    with store(ctx, catalog_only=True) as rag:
        rag.refresh()
        tp = rag.policy.tenant(tenant)
        listed = [(g, rag.identity.members(g, tenant), list(rag.identity.group_roles(g, tenant).values())) for g in rag.identity.groups(tenant)]
        data = [{"group": g, "label": tp.label("group:" + g), "members": [m.to_json() for m in ms], "roles": [r.to_json() for r in rs]} for g, ms, rs in listed]

        def render() -> None:
            for g, ms, rs in listed:
                shown = tp.shown("group:" + g)[len("group:") :]
                click.echo(f"{shown}: {len(ms)} members ({', '.join(m.shown() for m in ms) or '-'}); roles {', '.join(r.shown() for r in rs) or '-'}")
            if not listed:
                click.echo(f"no groups in tenant {tenant!r}")

        emit(as_json, data, render)


# ---------------------------------------------------------------------- folder ACLs
@main.group()
def folder() -> None:
    """Folder ACLs, inherited by the documents below (folder acl)."""


@folder.command("acl", cls=StoreCommand)
@click.argument("path")
@click.option("--allow", multiple=True, metavar="PRINCIPAL", help="Add an allow entry: user:<id>, group:<id> or a role; repeatable.")
@click.option("--deny", multiple=True, metavar="PRINCIPAL", help="Add a deny entry (a deny wins); repeatable.")
@click.option("--remove", multiple=True, metavar="PRINCIPAL", help="Remove the principal's entries (allow and deny); repeatable.")
@click.option("--replace", is_flag=True, help="Make the ACL exactly the --allow and --deny given (entries not named are dropped).")
@click.option("--inherit/--no-inherit", default=None, help="Whether the folder takes its parent folder's ACL (default: as it is; with --replace: inherit).")
@expires_opt
@unknown_opt
@click.option("--show", is_flag=True, help="Print the folder's ACL; change nothing.")
@tenant_opt
@json_opt
@click.pass_context
def folder_acl(ctx, path, allow, deny, remove, replace, inherit, expires, allow_unknown, show, tenant, as_json) -> None:
    """Add (--allow, --deny) or remove (--remove) entries of folder PATH's ACL, replace it (--replace), or --show it.

    Documents ingested with acl.folder below PATH inherit it at their next read."""
    changing = bool(allow or deny or remove or replace or inherit is not None or expires)
    if show and changing:
        raise click.UsageError("--show prints the ACL; give it alone")
    if not show and not changing:
        raise click.UsageError("give --allow, --deny, --remove, --replace or --inherit/--no-inherit (or --show)")
    if expires and not (allow or deny):
        raise click.UsageError("--expires applies to the --allow and --deny entries given")
    entries = {k: [p if expires is None else {"principal": p, "expires_at": expires} for p in v] for k, v in (("allow", allow), ("deny", deny))}
    with store(ctx, catalog_only=True) as rag:
        changed = None
        if not show:
            changed = rag.identity.set_folder_acl(path, **entries, remove=list(remove), inherit=inherit, replace=replace, allow_unknown=allow_unknown, tenant=tenant)
        acl = rag.identity.folder_acl(path, tenant)

        def render() -> None:
            def shown(entries) -> str:
                return ", ".join(e.principal + until(e.expires_at) for e in entries) or "-"

            head = "" if changed is None else f"ACL {'changed' if changed else 'unchanged'} (policy version {rag.policy_version}): "
            click.echo(f"{head}folder {acl.folder}: allow {shown(acl.allow)}; deny {shown(acl.deny)}; {'inherits' if acl.inherit else 'does not inherit'}")

        data = {
            "folder": acl.folder,
            **{k: [e.principal if e.expires_at is None else {"principal": e.principal, "expires_at": show_time(e.expires_at)} for e in v] for k, v in (("allow", acl.allow), ("deny", acl.deny))},
            "inherit": acl.inherit,
        }
        if changed is not None:
            data |= {"changed": changed, "policy_version": rag.policy_version}
        emit(as_json, data, render)
