"""The ``permrag`` command: a thin face over the library.

Every command opens the store, makes one library call and prints the result;
library errors become one-line messages with exit code 1 (usage errors exit
2), in one place: :func:`_run`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click
from rich.console import Console
from rich.table import Table

from . import config
from .core import PermRAG
from .errors import PermragError

console = Console()
err_console = Console(stderr=True)


class Ctx:
    def __init__(self, home: str | None, milvus_uri: str | None, database_url: str | None) -> None:
        self.home = home
        self.milvus_uri = milvus_uri
        self.database_url = database_url

    def open(self, *, create: bool = False, **kwargs: Any) -> PermRAG:
        return PermRAG.open(self.home, milvus_uri=self.milvus_uri, database_url=self.database_url, create=create, **kwargs)


@contextmanager
def _run() -> Iterator[None]:
    """Turn library errors into a one-line message and exit code 1."""
    try:
        yield
    except PermragError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


@contextmanager
def _store(ctx: Ctx, **kwargs: Any) -> Iterator[PermRAG]:
    with _run():
        rag = ctx.open(**kwargs)
        try:
            yield rag
        finally:
            rag.close()


def _known_user(rag: PermRAG, user_name: str, tenant: str) -> None:
    """The library lets unknown users see nothing; at the terminal a typo in a
    user name is an error worth saying."""
    if not rag.policy.roles_of(user_name, tenant) and not rag.policy.has_role(user_name, tenant):
        raise PermragError(f"unknown user {user_name!r} in tenant {tenant!r} (holds no role; would see nothing)")


def _emit(as_json: bool, data: Any, render) -> None:
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        render()


def _quiet_backends() -> None:
    # Milvus Lite's in-process gRPC server logs an unimplemented-method
    # traceback once per new collection; it is harmless and not ours.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


common = [
    click.option("--home", envvar="PERMRAG_HOME", help="Home folder (default ~/.permrag)."),
    click.option("--milvus-uri", envvar="PERMRAG_MILVUS_URI", help="Milvus server URI (default: Milvus Lite in the home)."),
    click.option("--database-url", envvar="PERMRAG_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in the home)."),
]


def with_common(f):
    for opt in reversed(common):
        f = opt(f)
    return f


def tenant_opt(f):
    return click.option("--tenant", default="default", show_default=True, help="Tenant (casbin domain).")(f)


def json_opt(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@with_common
@click.pass_context
def main(ctx: click.Context, home: str | None, milvus_uri: str | None, database_url: str | None) -> None:
    """permrag: row-level permissioned retrieval (roles → roaring bitmaps → Milvus filters)."""
    _quiet_backends()
    ctx.obj = Ctx(home, milvus_uri, database_url)


def _obj(ctx: click.Context, home, milvus_uri, database_url) -> Ctx:
    base: Ctx = ctx.find_root().obj
    return Ctx(home or base.home, milvus_uri or base.milvus_uri, database_url or base.database_url)


# ---------------------------------------------------------------------- init / ingest
@main.command()
@with_common
@click.pass_context
def init(ctx, home, milvus_uri, database_url) -> None:
    """Create a home folder (catalog and policy database)."""
    c = _obj(ctx, home, milvus_uri, database_url)
    with _run():
        rag = c.open(create=True)
        click.echo(f"initialised {rag.settings.home} (database {rag.settings.database_url}, Milvus {rag.settings.milvus_uri})")
        rag.close()


@main.command()
@click.argument("path", type=click.Path())
@tenant_opt
@click.option("--encoder", default=None, help="Encoder: a sentence-transformers model name or path, or 'hash'.")
@click.option("--folder-attrs", default=None, help="Comma-separated attribute names for folder levels.")
@click.option("--replace", is_flag=True, help="Replace documents that already exist.")
@with_common
@click.pass_context
def ingest(ctx, path, tenant, encoder, folder_attrs, replace, home, milvus_uri, database_url) -> None:
    """Ingest a JSONL file or a folder of .txt / .md files."""
    from rich.progress import Progress

    from .loaders import load_path

    c = _obj(ctx, home, milvus_uri, database_url)
    with _store(c, encoder=encoder) as rag, _run():
        docs = load_path(path, folder_attrs.split(",") if folder_attrs else None)
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("ingesting", total=len(docs))
            ids = rag.add_documents(docs, tenant=tenant, replace=replace, progress=lambda done, total: bar.update(task, completed=done, total=total))
        click.echo(f"ingested {len(docs)} documents as {len(ids)} rows (catalog version {rag.catalog_version})")


# ---------------------------------------------------------------------- roles and rules
@main.group()
def role() -> None:
    """Roles: add, remove, list."""


@role.command("add")
@click.argument("name")
@tenant_opt
@with_common
@click.pass_context
def role_add(ctx, name, tenant, home, milvus_uri, database_url) -> None:
    """Create a role."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        created = rag.policy.add_role(name, tenant=tenant)
        click.echo(f"role {name!r} {'added' if created else 'already exists'} (policy version {rag.policy_version})")


@role.command("remove")
@click.argument("name")
@tenant_opt
@with_common
@click.pass_context
def role_remove(ctx, name, tenant, home, milvus_uri, database_url) -> None:
    """Delete a role, its rules and its assignments."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        rag.policy.remove_role(name, tenant=tenant)
        click.echo(f"role {name!r} removed (policy version {rag.policy_version})")


@role.command("list")
@tenant_opt
@json_opt
@with_common
@click.pass_context
def role_list(ctx, tenant, as_json, home, milvus_uri, database_url) -> None:
    """List roles with their rules and members."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        p = rag.policy
        data = [
            {
                "role": r,
                "rules": [f"{e} {s}" for _, s, e in p.rules(r, tenant)],
                "inherits": p.roles_of(r, tenant),
                "members": p.members(r, tenant),
            }
            for r in p.roles(tenant)
        ]

        def render() -> None:
            t = Table("role", "rules", "inherits", "members", title=f"roles in tenant {tenant!r}")
            for d in data:
                t.add_row(d["role"], "\n".join(d["rules"]), ", ".join(d["inherits"]), ", ".join(d["members"]))
            console.print(t)

        _emit(as_json, data, render)


@main.command()
@click.argument("role_name")
@click.argument("selector")
@click.option("--deny", is_flag=True, help="Add a deny rule instead of an allow rule.")
@tenant_opt
@with_common
@click.pass_context
def grant(ctx, role_name, selector, deny, tenant, home, milvus_uri, database_url) -> None:
    """Allow (or --deny) ROLE the rows SELECTOR selects: *, doc:<id>, <attr>:<glob>."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        (rag.policy.deny if deny else rag.policy.grant)(role_name, selector, tenant=tenant)
        click.echo(f"{'deny' if deny else 'allow'} {selector} for {role_name!r} (policy version {rag.policy_version})")


@main.command()
@click.argument("role_name")
@click.argument("selector")
@tenant_opt
@with_common
@click.pass_context
def revoke(ctx, role_name, selector, tenant, home, milvus_uri, database_url) -> None:
    """Remove ROLE's rules for SELECTOR."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        rag.policy.revoke(role_name, selector, tenant=tenant)
        click.echo(f"revoked {selector} from {role_name!r} (policy version {rag.policy_version})")


@main.group()
def user() -> None:
    """Users: assign, unassign, show."""


@user.command("assign")
@click.argument("subject")
@click.argument("role_name")
@tenant_opt
@with_common
@click.pass_context
def user_assign(ctx, subject, role_name, tenant, home, milvus_uri, database_url) -> None:
    """Give SUBJECT (a user or a role) ROLE."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        rag.policy.assign(subject, role_name, tenant=tenant)
        click.echo(f"{subject!r} now holds {role_name!r} (policy version {rag.policy_version})")


@user.command("unassign")
@click.argument("subject")
@click.argument("role_name")
@tenant_opt
@with_common
@click.pass_context
def user_unassign(ctx, subject, role_name, tenant, home, milvus_uri, database_url) -> None:
    """Take ROLE away from SUBJECT."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        rag.policy.unassign(subject, role_name, tenant=tenant)
        click.echo(f"{subject!r} no longer holds {role_name!r} (policy version {rag.policy_version})")


@user.command("show")
@click.argument("name")
@tenant_opt
@json_opt
@with_common
@click.pass_context
def user_show(ctx, name, tenant, as_json, home, milvus_uri, database_url) -> None:
    """A user's roles (direct and inherited) and how many rows they see."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        _known_user(rag, name, tenant)
        vis = rag.visible(name, tenant)
        data = {
            "user": name,
            "tenant": tenant,
            "roles": rag.policy.roles_of(name, tenant),
            "implicit_roles": rag.policy.roles_of(name, tenant, implicit=True),
            "visible_rows": len(vis),
            "tenant_rows": len(rag.catalog.tenant_rows(tenant)),
            "policy_version": rag.policy_version,
        }
        _emit(
            as_json,
            data,
            lambda: click.echo(
                f"{name} in {tenant!r}: roles {', '.join(data['roles']) or '(none)'}; all roles "
                f"{', '.join(data['implicit_roles']) or '(none)'}; sees {data['visible_rows']} of {data['tenant_rows']} rows"
            ),
        )


@main.group()
def policy() -> None:
    """Policy files: import, export, check."""


@policy.command("import")
@click.argument("file", type=click.Path())
@click.option("--tenant", default=None, help="Require every line to be in this tenant.")
@click.option("--replace", is_flag=True, help="Replace the roles and rules of the tenants in the file.")
@with_common
@click.pass_context
def policy_import(ctx, file, tenant, replace, home, milvus_uri, database_url) -> None:
    """Import a casbin CSV policy (all or nothing)."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        n = rag.policy.import_csv(file, tenant=tenant, replace=replace)
        click.echo(f"imported {n} rules (policy version {rag.policy_version})")


@policy.command("export")
@click.argument("file", type=click.Path())
@click.option("--tenant", default=None, help="Only this tenant.")
@with_common
@click.pass_context
def policy_export(ctx, file, tenant, home, milvus_uri, database_url) -> None:
    """Export the policy as casbin CSV."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        rag.policy.export_csv(file, tenant=tenant)
        click.echo(f"exported policy version {rag.policy_version} to {file}")


@policy.command("check")
@tenant_opt
@json_opt
@with_common
@click.pass_context
def policy_check(ctx, tenant, as_json, home, milvus_uri, database_url) -> None:
    """Lint: rules that select nothing, allows shadowed by a deny, empty roles."""
    from .lint import lint

    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        findings = lint(rag, tenant)
        _emit(as_json, findings, lambda: click.echo("\n".join(f"{f['kind']}: {f['message']}" for f in findings) or "no findings"))


# ---------------------------------------------------------------------- queries
@main.command()
@click.argument("query")
@click.option("--as", "as_user", required=True, help="Search as this user.")
@tenant_opt
@click.option("--k", default=5, show_default=True, type=int)
@click.option("--mode", default="hybrid", show_default=True, type=click.Choice(["hybrid", "dense", "keyword"]))
@click.option("--encoder", default=None, help="Encoder used at ingest (a model name or path, or 'hash').")
@json_opt
@with_common
@click.pass_context
def search(ctx, query, as_user, tenant, k, mode, encoder, as_json, home, milvus_uri, database_url) -> None:
    """Search as a user: only rows the user may read come back."""
    with _store(_obj(ctx, home, milvus_uri, database_url), encoder=encoder) as rag:
        _known_user(rag, as_user, tenant)
        hits = rag.search(query, user=as_user, tenant=tenant, k=k, mode=mode)

        def render() -> None:
            t = Table("#", "external id", "score", "text", title=f"{as_user} searches {query!r} (policy v{rag.policy_version})")
            for i, h in enumerate(hits, 1):
                t.add_row(str(i), h.external_id, f"{h.score:.3f}", h.text[:100])
            console.print(t if hits else f"{as_user} may read no matching row")

        _emit(as_json, [h.to_dict() for h in hits], render)


@main.command()
@click.argument("external_id")
@click.option("--as", "as_user", required=True, help="The user to explain for.")
@tenant_opt
@json_opt
@with_common
@click.pass_context
def explain(ctx, external_id, as_user, tenant, as_json, home, milvus_uri, database_url) -> None:
    """Whether a user may read a row, and the role path and rule that decide it."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        _known_user(rag, as_user, tenant)
        e = rag.explain(as_user, external_id, tenant)
        data = {
            "user": e.user,
            "external_id": e.external_id,
            "visible": e.visible,
            "decision": e.decision,
            "path": list(e.path),
            "rule": str(e.rule) if e.rule else None,
            "explanation": str(e),
        }
        _emit(as_json, data, lambda: click.echo(str(e)))


@main.command("who-can-see")
@click.argument("external_id")
@tenant_opt
@json_opt
@with_common
@click.pass_context
def who_can_see(ctx, external_id, tenant, as_json, home, milvus_uri, database_url) -> None:
    """The users and roles that can read a row."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        data = rag.who_can_see(external_id, tenant)
        _emit(
            as_json,
            data,
            lambda: click.echo(f"users: {', '.join(data['users']) or '(none)'}\nroles: {', '.join(data['roles']) or '(none)'}"),
        )


@main.command()
@click.option("--user", "user_name", default=None, help="Only this user's searches.")
@click.option("--since", default=None, type=float, help="Only since this many hours ago.")
@click.option("--limit", default=20, show_default=True, type=int)
@json_opt
@with_common
@click.pass_context
def audit(ctx, user_name, since, limit, as_json, home, milvus_uri, database_url) -> None:
    """Searches made through the library: who, when, under which policy version, what came back."""
    with _store(_obj(ctx, home, milvus_uri, database_url), catalog_only=True) as rag:
        rows = rag.audit_log(user=user_name, since=time.time() - since * 3600 if since is not None else None, limit=limit)

        def render() -> None:
            t = Table("time", "user", "tenant", "policy v", "plan", "query", "rows")
            for r in rows:
                t.add_row(
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])),
                    r["user"] or "",
                    r["tenant"] or "",
                    str(r["policy_version"]),
                    r.get("plan", ""),
                    "; ".join(r.get("queries", []))[:40],
                    str(sum(len(x) for x in r.get("rows", []))),
                )
            console.print(t)

        _emit(as_json, rows, render)


@main.command()
@click.option("--full", is_flag=True, help="Also list every row in Milvus: remove orphans, report live rows Milvus lacks.")
@json_opt
@with_common
@click.pass_context
def reconcile(ctx, full, as_json, home, milvus_uri, database_url) -> None:
    """Repair catalog and Milvus after a crash (interrupted ingests and deletes)."""
    with _store(_obj(ctx, home, milvus_uri, database_url)) as rag:
        on_open = rag.last_repair
        report = rag.reconcile(full=full)
        if on_open is not None:  # opening the store already repaired something
            report.pending_removed += on_open.pending_removed
            report.deleted_purged += on_open.deleted_purged
        _emit(as_json, report.to_dict(), lambda: click.echo(report.describe()))
        if report.missing:
            raise SystemExit(1)


@main.command()
@click.option("--encoder", default=None, help="Encoder (default: the packaged all-MiniLM-L6-v2).")
@with_common
@click.pass_context
def demo(ctx, encoder, home, milvus_uri, database_url) -> None:
    """Build a small enterprise knowledge base and show what each user gets."""
    from .demo import run_demo

    c = _obj(ctx, home, milvus_uri, database_url)
    with _run():
        settings = config.resolve(c.home)
        run_demo(Path(settings.home) / "demo", console, encoder=encoder)


if __name__ == "__main__":  # pragma: no cover
    main()
