"""``permrag identity …``: users and groups from the identity provider, one library call each (groups and folder ACLs by hand: group_cmds.py)."""

from __future__ import annotations

import click

from .base import StoreCommand, emit, json_opt, main, store, tenant_opt


# ---------------------------------------------------------------------- identity sync
@main.group()
def identity() -> None:
    """Identity provider exports: sync users and nested groups."""


LDAP_SCHEMES = ("ldap://", "ldaps://")


@identity.command("sync", cls=StoreCommand)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="FILES... | LDAP_URL")
@click.option("--format", "fmt", type=click.Choice(["scim", "ldif", "csv"]), default=None, help="Export format (default: from the suffix or content).")
@click.option("--base", help="LDAP: the base DN searched for users and groups (required with an LDAP URL).")
@click.option("--bind-dn", help="LDAP: the DN to bind as (default: an anonymous bind).")
@click.option("--password-file", type=click.Path(), help="LDAP: a file whose first line is the bind password.")
@click.option("--starttls", is_flag=True, help="LDAP: upgrade an ldap:// connection with StartTLS (certificates checked).")
@click.option("--ca-file", type=click.Path(), help="LDAP: CA certificates (PEM) to check the server's certificate with.")
@click.option("--users-base", help="LDAP: search users under this DN instead of --base.")
@click.option("--groups-base", help="LDAP: search groups under this DN instead of --base.")
@click.option("--user-filter", help="LDAP: the users' filter (default: person or posixAccount entries).")
@click.option("--group-filter", help="LDAP: the groups' filter (default: groupOfNames, groupOfUniqueNames, group, posixGroup).")
@click.option("--page-size", type=click.IntRange(1, 100_000), default=500, show_default=True, help="LDAP: entries per page of a paged search.")
@click.option("--dry-run", is_flag=True, help="Print what would change, with the removal counts and the deny groups emptied; change nothing.")
@click.option("--allow-mass-removal", is_flag=True, help="Apply a sync that removes more than half of the memberships, all of them, or every member of a deny group.")
@tenant_opt
@json_opt
@click.pass_context
def identity_sync(ctx, files, fmt, dry_run, allow_mass_removal, tenant, as_json, **ldap) -> None:
    """Make TENANT's identity state that of FILES (SCIM 2.0 JSON, LDIF or CSV) or of an LDAP directory: memberships, labels, deactivations.

    All FILES are one export: users and groups may come in separate files, and
    the pages of a SCIM listing are merged (a listing missing pages is refused).
    An ldap:// or ldaps:// URL instead reads the directory (OpenLDAP, Active
    Directory) with paged searches under --base; every page is read before
    anything is applied. Users and groups are keyed by the provider's id
    (SCIM id, entryUUID, objectGUID); names are labels. A mass removal is
    refused unless --allow-mass-removal. The policy version moves once (not
    at all if nothing changed)."""
    urls = [f for f in files if f.lower().startswith(LDAP_SCHEMES)]
    given = [f"--{k.replace('_', '-')}" for k, v in ldap.items() if v not in (None, False) and not (k == "page_size" and v == 500)]
    if urls and len(files) > 1:
        raise click.UsageError("give one LDAP URL, or export files, not both")
    if not urls and given:
        raise click.UsageError(f"{', '.join(given)} only go(es) with an ldap:// or ldaps:// URL")
    if urls and fmt:
        raise click.UsageError("--format is for export files, not an LDAP URL")
    source = _ldap_source(urls[0], ldap) if urls else None  # settings and the password file checked before the store opens
    with store(ctx, catalog_only=True) as rag:
        if source is not None:
            got = rag.identity.read_ldap(source)
            report = rag.identity.sync(got.directory, tenant=tenant, dry_run=dry_run, allow_mass_removal=allow_mass_removal)
            data = report.to_dict() | {"ldap": {"entries": got.entries, "pages": got.pages, "skipped": list(got.skipped), "referrals": got.referrals}}
            emit(as_json, data, lambda: _render_read(got, report, dry_run))
            return
        report = rag.identity.sync(list(files), tenant=tenant, format=fmt, dry_run=dry_run, allow_mass_removal=allow_mass_removal)
        emit(as_json, report.to_dict(), lambda: _render_sync(report, dry_run))


def _ldap_source(url: str, opts: dict):
    from ..toolkit import GROUP_FILTER, USER_FILTER, LdapSource, read_password

    if not opts["base"]:
        raise click.UsageError("an LDAP URL needs --base DN (where users and groups are searched)")
    if opts["bind_dn"] and not opts["password_file"]:
        raise click.UsageError("--bind-dn needs --password-file (the password is never given on the command line)")
    password = read_password(opts["password_file"]) if opts["password_file"] else None
    return LdapSource(
        url, opts["base"], bind_dn=opts["bind_dn"], password=password, starttls=opts["starttls"], ca_file=opts["ca_file"],
        users_base=opts["users_base"], groups_base=opts["groups_base"], user_filter=opts["user_filter"] or USER_FILTER,
        group_filter=opts["group_filter"] or GROUP_FILTER, page_size=opts["page_size"],
    )  # fmt: skip


def _render_read(got, report, dry_run: bool) -> None:
    click.echo(f"read {got.entries} entries in {got.pages} pages")
    if got.skipped:
        click.echo(f"{len(got.skipped)} reference(s) to entries outside the bases or filters left out: " + "; ".join(got.skipped[:5]))
    if got.referrals:
        click.echo(f"{got.referrals} referral(s) to other servers not followed")
    _render_sync(report, dry_run)


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
