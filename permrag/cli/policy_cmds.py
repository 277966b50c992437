"""``permrag role|grant|deny|revoke|user|tenant|policy …``: the policy, one library call each."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from ..toolkit import show_time
from .base import StoreCommand, emit, json_opt, main, store, tenant_opt
from .group_cmds import until

console = Console()


def _known_tenant(rag, tenant: str) -> None:
    rag.refresh()
    rag.access.check_tenant_known(tenant)


def _change(ctx: click.Context, method: str, args: tuple, tenant: str, done: str) -> None:
    """One policy change: ``rag.policy.<method>(*args, tenant=tenant)``, then ``done``."""
    with store(ctx, catalog_only=True) as rag:
        getattr(rag.policy, method)(*args, tenant=tenant)
        click.echo(f"{done} (policy version {rag.policy_version})")


# ---------------------------------------------------------------------- roles
@main.group()
def role() -> None:
    """Roles: add, remove, list, inherit, uninherit."""


@role.command("add", cls=StoreCommand)
@click.argument("name")
@tenant_opt
@click.pass_context
def role_add(ctx, name, tenant) -> None:
    """Create a role."""
    with store(ctx, catalog_only=True) as rag:
        created = rag.policy.add_role(name, tenant=tenant)
        click.echo(f"role {name!r} {'added' if created else 'already exists'} (policy version {rag.policy_version})")


@role.command("remove", cls=StoreCommand)
@click.argument("name")
@tenant_opt
@click.pass_context
def role_remove(ctx, name, tenant) -> None:
    """Delete a role, its rules, its inheritance and its assignments."""
    _change(ctx, "remove_role", (name,), tenant, f"role {name!r} removed")


@role.command("inherit", cls=StoreCommand)
@click.argument("role_name")
@click.argument("parent")
@tenant_opt
@click.pass_context
def role_inherit(ctx, role_name, parent, tenant) -> None:
    """Make ROLE inherit PARENT (its holders get PARENT's rules too)."""
    _change(ctx, "inherit", (role_name, parent), tenant, f"role {role_name!r} inherits {parent!r}")


@role.command("uninherit", cls=StoreCommand)
@click.argument("role_name")
@click.argument("parent")
@tenant_opt
@click.pass_context
def role_uninherit(ctx, role_name, parent, tenant) -> None:
    """Stop ROLE inheriting PARENT."""
    _change(ctx, "uninherit", (role_name, parent), tenant, f"role {role_name!r} no longer inherits {parent!r}")


@role.command("list", cls=StoreCommand)
@tenant_opt
@json_opt
@click.pass_context
def role_list(ctx, tenant, as_json) -> None:
    """List roles with their rules, what they inherit and their users."""
    with store(ctx, catalog_only=True) as rag:
        _known_tenant(rag, tenant)
        p = rag.policy
        tp, now = p.tenant(tenant), rag.policy.clock()
        listed = [(r, [(s, e, tp.expires.get(("p", r, s, e))) for _, s, e in p.rules(r, tenant) if tp.live(("p", r, s, e), now)], p.members(r, tenant)) for r in p.roles(tenant)]
        data = [
            {
                "role": r,
                "rules": [f"{e} {s}" if t is None else {"rule": f"{e} {s}", "expires_at": show_time(t)} for s, e, t in rules],
                "inherits": p.parents_of(r, tenant),
                "members": [m.to_json() for m in members],
            }
            for r, rules, members in listed
        ]

        def render() -> None:
            t = Table("role", "rules", "inherits", "users", title=f"roles in tenant {tenant!r}")
            for (r, rules, members), d in zip(listed, data):
                shown = [f"{e} {s}{until(end)}" for s, e, end in rules]
                t.add_row(r, "\n".join(shown), ", ".join(d["inherits"]), ", ".join(m.shown() for m in members))
            console.print(t)

        emit(as_json, data, render)


# ---------------------------------------------------------------------- rules
expires_opt = click.option("--expires", "expires", default=None, metavar="TIME", help="Ends at TIME, in the future (ISO 8601 with a zone, e.g. 2027-01-01T00:00:00Z).")


def _rule(ctx, role_name: str, selector: str, tenant: str, deny: bool, expires: str | None = None) -> None:
    from .. import parse_selector  # here: importing the policy package (SQLAlchemy) would slow every command's start

    with store(ctx, catalog_only=True) as rag:
        changed = (rag.policy.deny if deny else rag.policy.grant)(role_name, selector, tenant=tenant, expires_at=expires)
        end = rag.policy.tenant(tenant).expires.get(("p", role_name, str(parse_selector(selector)), "deny" if deny else "allow"))
        what = f"{'deny' if deny else 'allow'} {selector} for {role_name!r}{until(end)}"
        click.echo(f"{what} (policy version {rag.policy_version})" if changed else f"{what} was already there")


@main.command(cls=StoreCommand)
@click.argument("role_name")
@click.argument("selector")
@click.option("--deny", is_flag=True, help="Add a deny rule instead of an allow rule (same as `permrag deny`).")
@expires_opt
@tenant_opt
@click.pass_context
def grant(ctx, role_name, selector, deny, expires, tenant) -> None:
    """Allow ROLE the rows SELECTOR selects: *, doc:<id>, <attr>:<glob>."""
    _rule(ctx, role_name, selector, tenant, deny, expires)


@main.command(cls=StoreCommand)
@click.argument("role_name")
@click.argument("selector")
@expires_opt
@tenant_opt
@click.pass_context
def deny(ctx, role_name, selector, expires, tenant) -> None:
    """Forbid ROLE (and everyone holding it) the rows SELECTOR selects."""
    _rule(ctx, role_name, selector, tenant, True, expires)


@main.command(cls=StoreCommand)
@click.argument("role_name")
@click.argument("selector")
@tenant_opt
@click.pass_context
def revoke(ctx, role_name, selector, tenant) -> None:
    """Remove ROLE's allow and deny rules for SELECTOR."""
    _change(ctx, "revoke", (role_name, selector), tenant, f"revoked {selector} from {role_name!r}")


# ---------------------------------------------------------------------- users
@main.group()
def user() -> None:
    """Users: assign, unassign, show, list."""


@user.command("assign", cls=StoreCommand)
@click.argument("subject")
@click.argument("role_name")
@click.option("--user", "force_user", is_flag=True, help="SUBJECT is a user even if a role has that name.")
@expires_opt
@tenant_opt
@click.pass_context
def user_assign(ctx, subject, role_name, force_user, expires, tenant) -> None:
    """Give SUBJECT ROLE: a user, or a role of that name (which then inherits ROLE)."""
    with store(ctx, catalog_only=True) as rag:
        is_role = not force_user and rag.policy.has_role(subject, tenant)
        if is_role and expires:
            raise click.UsageError("--expires applies to a user's assignment; role inheritance does not expire")
        changed = rag.policy.inherit(subject, role_name, tenant) if is_role else rag.policy.assign_user(subject, role_name, tenant, expires_at=expires)
        end = None if is_role else rag.policy.tenant(tenant).expires.get(("g", f"user:{subject}", role_name))
        what = f"role {subject!r} inherits {role_name!r}" if is_role else f"user {subject!r} holds {role_name!r}{until(end)}"
        click.echo(f"{what} (policy version {rag.policy_version})" if changed else f"{what} already")


@user.command("unassign", cls=StoreCommand)
@click.argument("subject")
@click.argument("role_name")
@click.option("--user", "force_user", is_flag=True, help="SUBJECT is a user even if a role has that name.")
@tenant_opt
@click.pass_context
def user_unassign(ctx, subject, role_name, force_user, tenant) -> None:
    """Take ROLE away from SUBJECT (a user, or a role that inherits it)."""
    _change(ctx, "unassign_user" if force_user else "unassign", (subject, role_name), tenant, f"{subject!r} no longer holds {role_name!r}")


@user.command("show", cls=StoreCommand)
@click.argument("name")
@tenant_opt
@json_opt
@click.pass_context
def user_show(ctx, name, tenant, as_json) -> None:
    """A user's roles (assigned and inherited) and how many rows they see; NAME is an id or an unambiguous label."""
    with store(ctx, catalog_only=True) as rag:
        rag.refresh()
        tp = rag.policy.tenant(tenant)
        name = tp.resolve("user:", name)
        rag.access.check_user_known(name, tenant)
        vis = rag.visible(name, tenant)
        roles, groups = rag.policy.roles_of(name, tenant), rag.identity.groups_of(name, tenant)
        data = {
            "user": name,
            "tenant": tenant,
            "roles": [r.to_json() for r in roles],
            "implicit_roles": rag.policy.roles_of(name, tenant, implicit=True),
            "groups": [g.to_json() for g in groups],
            "label": tp.label("user:" + name),
            "deactivated": name in tp.inactive,
            "visible_rows": len(vis),
            "tenant_rows": len(rag.catalog.tenant(tenant).rows),
            "policy_version": rag.policy_version,
        }

        def render() -> None:
            click.echo(
                f"{tp.shown('user:' + name)[5:]} in {tenant!r}: roles {', '.join(r.shown() for r in roles) or '-'}; "
                f"all roles {', '.join(data['implicit_roles']) or '-'}; groups {', '.join(g.shown() for g in groups) or '-'}; "
                + ("DEACTIVATED by the identity provider: holds none of them; " if data["deactivated"] else "")
                + f"sees {data['visible_rows']} of {data['tenant_rows']} rows"
            )

        emit(as_json, data, render)


@user.command("list", cls=StoreCommand)
@tenant_opt
@json_opt
@click.pass_context
def user_list(ctx, tenant, as_json) -> None:
    """Users of a tenant with their roles."""
    with store(ctx, catalog_only=True) as rag:
        _known_tenant(rag, tenant)
        listed = [(u, rag.policy.roles_of(u, tenant)) for u in rag.policy.users(tenant)]
        data = [{"user": u, "roles": [r.to_json() for r in roles]} for u, roles in listed]
        emit(as_json, data, lambda: click.echo("\n".join(f"{u}: {', '.join(r.shown() for r in roles) or '-'}" for u, roles in listed) or "no users"))


@main.group()
def tenant() -> None:
    """Tenants: list."""


@tenant.command("list", cls=StoreCommand)
@json_opt
@click.pass_context
def tenant_list(ctx, as_json) -> None:
    """Tenants with rows or policy, with their row, role and user counts."""
    with store(ctx, catalog_only=True) as rag:
        rag.refresh()
        names = sorted(set(rag.catalog.index.tenants()) | set(rag.policy.tenants()))
        data = [{"tenant": t, "rows": len(rag.catalog.tenant(t).rows), "roles": len(rag.policy.roles(t)), "users": len(rag.policy.users(t))} for t in names]
        emit(as_json, data, lambda: click.echo("\n".join(f"{d['tenant']}: {d['rows']} rows, {d['roles']} roles, {d['users']} users" for d in data) or "no tenants"))


# ---------------------------------------------------------------------- policy files
@main.group()
def policy() -> None:
    """Policy files: import, export, check."""


@policy.command("import", cls=StoreCommand)
@click.argument("file", type=click.Path())
@click.option("--tenant", default=None, help="Require every line to be in this tenant.")
@click.option("--replace", is_flag=True, help="Replace the roles and rules of the tenants in the file.")
@click.option("--allow-expired", is_flag=True, help="Import lines whose expiry has passed (refused otherwise).")
@click.option("--allow-unknown", is_flag=True, help="Import memberships in, and ACL lines naming, groups, users or roles that neither the store nor the file knows.")
@click.pass_context
def policy_import(ctx, file, tenant, replace, allow_expired, allow_unknown) -> None:
    """Import a casbin CSV policy (all or nothing)."""
    with store(ctx, catalog_only=True) as rag:
        n = rag.policy.import_csv(file, tenant=tenant, replace=replace, allow_expired=allow_expired, allow_unknown=allow_unknown)
        click.echo(f"imported {n} lines (policy version {rag.policy_version})")


@policy.command("export", cls=StoreCommand)
@click.argument("file", type=click.Path())
@click.option("--tenant", default=None, help="Only this tenant.")
@click.pass_context
def policy_export(ctx, file, tenant) -> None:
    """Export the policy as casbin CSV (FILE '-' writes to standard output)."""
    with store(ctx, catalog_only=True) as rag:
        if tenant is not None:
            _known_tenant(rag, tenant)
        else:
            rag.refresh()
        if file == "-":
            sys.stdout.write(rag.policy.export_csv(tenant=tenant))
            return
        rag.policy.export_csv(file, tenant=tenant)
        click.echo(f"exported policy version {rag.policy_version} to {file}")


@policy.command("check", cls=StoreCommand)
@tenant_opt
@json_opt
@click.pass_context
def policy_check(ctx, tenant, as_json) -> None:
    """Lint: rules that select nothing, allows shadowed by a deny, empty or unused roles (exit 1 if any)."""
    with store(ctx, catalog_only=True) as rag:
        _known_tenant(rag, tenant)
        findings = rag.lint(tenant)
        emit(as_json, findings, lambda: click.echo("\n".join(f"{f['kind']}: {f['message']}" for f in findings) or "no findings"))
    if findings:
        sys.exit(1)
