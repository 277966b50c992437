"""``permrag init|config|ingest|delete|search|explain|who-can-see|audit|reconcile|repartition|demo``."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .base import StoreCommand, emit, json_opt, main, store, tenant_opt

console = Console()
err_console = Console(stderr=True)
encoder_opt = click.option("--encoder", default=None, help="Encoder: a sentence-transformers model name or path, 'hash' or 'static' (default: the store's own).")


# ---------------------------------------------------------------------- set-up
@main.command(cls=StoreCommand)
@encoder_opt
@click.option("--force", is_flag=True, help="Point a home that holds a store at another database, Milvus or collection.")
@click.pass_context
def init(ctx, encoder, force) -> None:
    """Create a home folder and record its settings (database, Milvus, collection, encoder) in config.toml.

    The only command that creates a store. On a home that holds one, another
    database, Milvus or collection is refused (the change is printed) unless
    --force; a Milvus server must answer (a Milvus Lite folder's parent must
    exist) before anything is written."""
    from ..toolkit import config

    st = ctx.find_root().obj
    if encoder:
        st.given["encoder"] = encoder
    settings = config.resolve(st.given.get("home"), **{k: v for k, v in st.given.items() if k != "home"})
    changes = config.check_repoint(settings, force=force)
    _check_milvus(settings)
    config.ensure_home(settings, create=True)
    with store(ctx, create=True, catalog_only=True):
        pass
    path = config.save(settings)
    for change in changes:
        click.echo(f"changed {change}")
    shown = settings.shown()
    click.echo(f"initialised {settings.home} (database {shown['database_url']['value']}, Milvus {shown['milvus_uri']['value']}); settings in {path}")


def _check_milvus(settings) -> None:
    """The Milvus URI must be usable: a server must answer; a Milvus Lite
    folder (made on first use) needs its parent folder, or to be in the home."""
    from pathlib import Path

    from ..errors import BackendError, ConfigError
    from ..toolkit import MilvusBackend, mask

    backend = MilvusBackend(settings.milvus_uri, token=settings.milvus_token)  # checks the URI's form
    if settings.milvus_kind == "lite":
        parent = Path(settings.milvus_uri).expanduser().absolute().parent
        if not parent.is_dir() and parent != settings.home:
            raise ConfigError(f"the Milvus Lite folder {settings.milvus_uri} cannot be made: {parent} does not exist; nothing was written")
        return
    try:
        _ = backend.capabilities  # reading it reaches the server
    except BackendError as exc:
        raise BackendError(f"cannot reach the Milvus server at {mask(settings.milvus_uri)} ({exc.message}); nothing was written") from None
    finally:
        backend.close()


@main.group("config")
def config_group() -> None:
    """The store's settings: show."""


@config_group.command("show", cls=StoreCommand)
@json_opt
@click.pass_context
def config_show(ctx, as_json) -> None:
    """The settings every command uses, where each comes from; secrets masked.

    Warns about store files or folders that other local users may open."""
    from ..toolkit import config

    settings = ctx.find_root().obj.settings()
    data, warnings = settings.shown(), config.wide_files(settings)

    def render() -> None:
        click.echo(f"home: {data.pop('home')}")
        for key, v in data.items():
            click.echo(f"{key}: {v['value'] if v['value'] is not None else '(none)'}  [{v['source']}]")
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)

    emit(as_json, {**data, "warnings": warnings}, render)


# ---------------------------------------------------------------------- documents
@main.command(cls=StoreCommand)
@click.argument("path", type=click.Path())
@tenant_opt
@encoder_opt
@click.option("--folder-attrs", default=None, help="Comma-separated attribute names for folder levels.")
@click.option("--replace", is_flag=True, help="Replace documents that already exist.")
@click.option(
    "--sync",
    "sync_",
    is_flag=True,
    help="Folder sync: add new files, re-embed changed ones, update metadata-only changes, restore documents changed behind the sync, delete documents whose files are gone.",
)
@click.option("--source", default=None, help="With --sync: the folder's source name (default: the folder's name); its documents' ids are <source>/<relative path>.")
@click.option("--allow-mass-delete", is_flag=True, help="With --sync: let the sync delete more than half of the source's documents, or all of them.")
@click.option("--dry-run", is_flag=True, help="With --sync: list what the sync would add, change, restore and delete; change nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_opt
@click.pass_context
def ingest(ctx, path, tenant, encoder, folder_attrs, replace, sync_, source, allow_mass_delete, dry_run, quiet, as_json) -> None:
    """Ingest a JSONL file or a folder of documents (PDF, DOCX, HTML, Markdown, reStructuredText, text).

    Files that cannot be loaded are listed on stderr and the rest go in; the
    exit code is 1 if any file or folder could not be read (with --sync,
    nothing below an unreadable folder is deleted) or a --dry-run finds the
    sync would be refused."""
    from ..toolkit import LoadReport, load_path

    if not sync_ and (source is not None or allow_mass_delete or dry_run):
        raise click.UsageError("--source, --allow-mass-delete and --dry-run go with --sync")
    if sync_ and not Path(path).is_dir():
        raise click.UsageError("--sync takes a folder")
    attrs = folder_attrs.split(",") if folder_attrs else None
    refused = None
    with store(ctx, encoder=encoder) as rag, _progress(quiet or as_json) as bar:
        if sync_:
            report = _sync(rag, bar, path, tenant, attrs, as_json, source=source, allow_mass_delete=allow_mass_delete, dry_run=dry_run)
            failed, skipped, refused = report.failed, report.skipped, report.refused
        else:
            loaded = load_path(path, attrs, max_chars=rag.ingester.max_document_chars)
            docs = loaded.documents
            task = bar.add_task("ingesting", total=None, chunks=0, rate="")
            started = time.perf_counter()
            ids = rag.add_documents(
                docs,
                tenant=tenant,
                replace=replace,
                batch_size=256,
                progress=lambda done, total: bar.update(task, completed=done, total=total, chunks=done, rate=f"{done / max(1e-9, time.perf_counter() - started):.0f} chunks/s"),
            )
            bar.stop()
            data = {"documents": len(docs), "rows": len(ids), "skipped": [list(x) for x in loaded.skipped], "failed": [list(x) for x in loaded.failed], "catalog_version": rag.catalog_version}
            emit(as_json, data, lambda: click.echo(f"ingested {len(docs)} documents as {len(ids)} rows (catalog version {rag.catalog_version})"))
            failed, skipped = loaded.failed, loaded.skipped
    if (failed or skipped) and not as_json:
        click.echo(LoadReport(skipped=skipped, failed=failed).describe(), err=True)
    if failed or refused:
        sys.exit(1)


def _sync(rag, bar, path, tenant, attrs, as_json, **options):
    """One folder sync with a progress bar, its report printed; returns the report."""
    task = bar.add_task("checking" if options["dry_run"] else "syncing", total=None, chunks=0, rate="")
    report = rag.sync_folder(
        path,
        tenant=tenant,
        folder_attrs=attrs,
        progress=lambda p: bar.update(task, completed=p.done, total=p.files, chunks=p.chunks, rate=f"{p.done / p.elapsed:.1f} files/s" if p.elapsed else ""),
        **options,
    )
    bar.stop()
    data = {**report.to_dict(), "dry_run": options["dry_run"], "catalog_version": rag.catalog_version}

    def render() -> None:
        if not options["dry_run"]:
            click.echo(report.describe().split("\n", 1)[0] + f" (source {report.source!r})")
            return
        click.echo(f"dry run of source {report.source!r}, nothing changed:")
        for what, ids in (("add", report.added), ("change", report.changed), ("update metadata of", report.metadata), ("restore", report.restored), ("delete", report.deleted)):
            click.echo(f"would {what} {len(ids)}" + "".join(f"\n  {e}" for e in ids))
        click.echo(f"{report.unchanged} unchanged")
        if report.refused:
            click.echo(f"the sync would be refused without --allow-mass-delete: {report.refused}")

    emit(as_json, data, render)
    return report


@contextmanager
def _progress(off: bool):
    """A per-document progress bar on stderr (files or chunks, rate, ETA);
    none with ``--quiet``/``--json`` or when stderr is not a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[chunks]} chunks"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=True, disable=off or not err_console.is_terminal) as bar:
        yield bar


@main.command(cls=StoreCommand)
@click.argument("external_ids", nargs=-1, required=True)
@tenant_opt
@click.pass_context
def delete(ctx, external_ids, tenant) -> None:
    """Delete rows or whole documents (with their chunks) by external id."""
    with store(ctx) as rag:
        rag.refresh()
        rag.access.check_tenant_known(tenant)
        n = rag.delete(list(external_ids), tenant=tenant)
        click.echo(f"deleted {n} rows (catalog version {rag.catalog_version})")


# ---------------------------------------------------------------------- queries
agent_opt = click.option("--agent", default=None, help="The agent acting for the user: only rows both may read.")


def _via(agent: str | None) -> dict[str, str]:
    """Keyword arguments of a library call made through ``agent`` (none for the user alone)."""
    return {"agent": agent} if agent is not None else {}


@main.command(cls=StoreCommand)
@click.argument("query")
@click.option("--as", "as_user", required=True, help="Search as this user.")
@agent_opt
@tenant_opt
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 16384))
@click.option("--mode", default="auto", show_default=True, type=click.Choice(["auto", "hybrid", "dense", "keyword"]), help="auto: hybrid where the backend has BM25, else dense.")
@click.option("--at-least", "at_least", default=None, help="A consistency token (from an answer or 'permrag consistency-token'): answer only once the store reflects it.")
@click.option("--contract", is_flag=True, help="With --json: an object with the hits, the consistency token and completeness (complete, visible_rows, reason).")
@encoder_opt
@json_opt
@click.pass_context
def search(ctx, query, as_user, agent, tenant, k, mode, at_least, contract, encoder, as_json) -> None:
    """Search as a user: only rows the user (and the --agent acting for it) may read come back (chunks of one document grouped)."""
    with store(ctx, encoder=encoder) as rag:
        rag.access.check_user_known(as_user, tenant)
        if agent is not None:
            rag.access.check_agent_known(agent, tenant)
        hits = rag.search(query, user=as_user, tenant=tenant, k=k, mode=mode, **_via(agent), **({"at_least": at_least} if at_least is not None else {}))

        def render() -> None:
            if not hits:
                console.print(f"{as_user} may read no matching row ({hits.reason}; token {hits.consistency_token})")
                return
            groups: dict[str, list] = {}
            for h in hits:
                groups.setdefault(h.document, []).append(h)
            t = Table("#", "document", "chunks", "score", "text", title=f"{as_user} searches {query!r} ({hits.mode}, policy v{hits.policy_version})")
            for i, (doc, part) in enumerate(groups.items(), 1):
                chunks = ", ".join(h.external_id for h in part) if part[0].parent else "—"
                t.add_row(str(i), doc, chunks, f"{part[0].score:.3f}", part[0].text[:100])
            console.print(t)
            done = "complete" if hits.complete else "INCOMPLETE"
            console.print(f"{done}: {len(hits)} of {hits.visible_rows} readable rows" + (f" ({hits.reason})" if hits.reason else "") + f"; token {hits.consistency_token}")

        listed = [{**h.to_dict(), "consistency_token": hits.consistency_token} for h in hits]
        emit(as_json, {"hits": listed, **hits.contract()} if contract else listed, render)


@main.command(cls=StoreCommand)
@click.argument("external_id")
@click.option("--as", "as_user", required=True, help="The user to explain for.")
@agent_opt
@tenant_opt
@json_opt
@click.pass_context
def explain(ctx, external_id, as_user, agent, tenant, as_json) -> None:
    """Whether a user (with --agent: the user and the agent) may read a row or document, and the path and rule that decide it."""
    with store(ctx, catalog_only=True) as rag:
        rag.refresh()
        rag.access.check_tenant_known(tenant)
        e = rag.explain(as_user, external_id, tenant, **_via(agent))
        emit(as_json, e.to_dict(), lambda: click.echo(str(e)))


@main.command("who-can-see", cls=StoreCommand)
@click.argument("external_id")
@tenant_opt
@json_opt
@click.pass_context
def who_can_see(ctx, external_id, tenant, as_json) -> None:
    """The users (through groups too), groups and roles that can read a row or a whole document now (each with the end an expiry puts to it)."""
    with store(ctx, catalog_only=True) as rag:
        rag.refresh()
        rag.access.check_tenant_known(tenant)
        found = rag.who_can_see(external_id, tenant)
        data = {k: [h.to_json() for h in v] for k, v in found.items()}
        emit(as_json, data, lambda: click.echo("\n".join(f"{k}: {', '.join(h.shown() for h in v) or '(none)'}" for k, v in found.items())))


@main.command(cls=StoreCommand)
@click.option("--user", "user_name", default=None, help="Only this user's records.")
@click.option("--agent", default=None, help="Only records of requests made through this agent.")
@click.option("--since", default=None, type=float, help="Only since this many hours ago.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100000))
@json_opt
@click.pass_context
def audit(ctx, user_name, agent, since, limit, as_json) -> None:
    """Searches and recommendations: who (and through which agent), when, under which policy version, what came back."""
    with store(ctx, catalog_only=True) as rag:
        rows = rag.audit_log(user=user_name, since=time.time() - since * 3600 if since is not None else None, limit=limit, **_via(agent))

        def render() -> None:
            t = Table("time", "event", "user", "tenant", "policy v", "plan", "query", "rows")
            for r in rows:
                t.add_row(
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])),
                    r["event"],
                    (r["user"] or "") + (f" via {r['agent']}" if r.get("agent") else ""),
                    r["tenant"] or "",
                    str(r["policy_version"]),
                    r.get("plan", ""),
                    "; ".join(r.get("queries", []))[:40],
                    str(sum(len(x) for x in r.get("rows", []))),
                )
            console.print(t)

        emit(as_json, rows, render)


@main.command(cls=StoreCommand)
@click.option("--full", is_flag=True, help="Also list every row in Milvus: remove orphans, report live rows Milvus lacks.")
@json_opt
@click.pass_context
def reconcile(ctx, full, as_json) -> None:
    """Repair catalog and Milvus after a crash (interrupted ingests and deletes); exit 1 if rows are missing."""
    with store(ctx) as rag:
        report = rag.reconcile(full=full).merge(rag.last_repair)
        emit(as_json, report.to_dict(), lambda: click.echo(report.describe()))
    if report.missing:
        sys.exit(1)


@main.command(cls=StoreCommand)
@tenant_opt
@click.option("--dry-run", is_flag=True, help="Only count the rows outside their partition; move nothing.")
@json_opt
@click.pass_context
def repartition(ctx, tenant, dry_run, as_json) -> None:
    """Move a tenant's rows to their co-visibility partitions under the current policy (after policy changes; searches stay exact throughout)."""
    _repartition(ctx, tenant, dry_run, as_json)


def _repartition(ctx: click.Context, tenant: str, dry_run: bool, as_json: bool) -> None:
    with store(ctx) as rag:  # the layout the store recorded (placement/covis.py)
        report = rag.repartition(tenant, dry_run=dry_run)
        emit(as_json, report.to_dict(), lambda: click.echo(report.describe()))


@main.command(cls=StoreCommand, hidden=True)
@tenant_opt
@click.option("--dry-run", is_flag=True)
@json_opt
@click.pass_context
def regroup(ctx, tenant, dry_run, as_json) -> None:
    """Deprecated name of ``permrag repartition`` (one release)."""
    click.echo("warning: 'permrag regroup' is deprecated: use 'permrag repartition'", err=True)
    _repartition(ctx, tenant, dry_run, as_json)


@main.command(cls=StoreCommand)
@encoder_opt
@click.pass_context
def demo(ctx, encoder) -> None:
    """Build a small enterprise knowledge base under <home>/demo and show what each user gets."""
    from ..demo import run_demo

    st = ctx.find_root().obj
    settings = st.settings()
    run_demo(Path(settings.home) / "demo", console, encoder=encoder, database_url=st.given.get("database_url"), milvus_uri=st.given.get("milvus_uri"), milvus_token=st.given.get("milvus_token"))
