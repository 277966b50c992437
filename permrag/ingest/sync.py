"""Folder sync: make a source's documents in a tenant equal to a folder.

Each synced folder is a *source* (:mod:`.sources`): its documents' external
ids are ``<source>/<relative path>``. For every file a loader is registered
for, ``permrag_sync`` (keyed by tenant, the folder's absolute path as given,
not resolved, and external id) keeps

* the *content* hash — the file's bytes as read and the chunking settings:
  when it changes, the file is chunked, encoded and written again
  (``replace``, atomic per document: readers see the old version until the
  new one is live);
* the *metadata* hash — the sidecar's bytes and the folder-derived
  attributes: when only it changes, the new attributes and ACL are applied
  without encoding anything (``update_metadata``);
* the document's *print* in the catalog, right after the sync wrote it (its
  rows' ids, attributes and ACL, not its row IDs), packed with the metadata
  hash: a document deleted or replaced behind the sync no longer matches it
  and is written again, so the store equals the folder after every sync.

Each file is read once: the bytes hashed are the bytes parsed. Files gone
from the folder are deleted from the store, but nothing below a folder that
could not be listed (:mod:`.loaders.walk`), and a sync that would delete
more than half of the source's documents, or all of them, is refused unless
``allow_mass_delete`` (a dry run reports that instead). A file that is there
but cannot be read is reported and its stored version left as it was. The
state of a document is recorded right after its write commits, so a sync cut
short anywhere is finished by the next one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, select

from ..catalog import DEFAULT_TENANT, RowSpec, row_spec
from ..domain.names import check_tenant
from ..errors import ArgumentError, CatalogError, MassDeleteError, SourceClashError
from ..storage import db
from .ingest import Ingester
from .loaders.folder import FileBytes, LoadReport, load_file, read_file, skip_reason
from .loaders.walk import Listing, list_folder
from .records import catalog_prints, hashes, pack, unpack
from .sources import Source, register, resolve_source

log = logging.getLogger(__name__)

# Rows per write: the most work a crash repeats. A write's constant cost (three catalog
# transactions, a Milvus insert) was ~3 % of a folder sync at 256 rows a write
# (benchmarks/bench_ingest.py); progress moves within a write.
BATCH_ROWS = 1024


class UpdateMetadata(Protocol):
    def __call__(self, external_id: str, *, tenant: str, attrs: Mapping[str, Any], acl: Any) -> Any: ...


@dataclass
class SyncProgress:
    """Where a sync is, for a progress bar: files done of ``files``, chunks written, seconds so far."""

    done: int
    files: int
    chunks: int
    elapsed: float


@dataclass
class SyncReport:
    """What a sync did, by external id."""

    source: str = ""
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)  # attributes / ACL only, nothing re-encoded
    restored: list[str] = field(default_factory=list)  # deleted or replaced behind the sync, written again
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    chunks: int = 0  # rows written
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    refused: str | None = None  # dry run: why the real sync would be refused
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and self.refused is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "added": self.added,
            "changed": self.changed,
            "metadata": self.metadata,
            "restored": self.restored,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "chunks": self.chunks,
            "skipped": [list(x) for x in self.skipped],
            "failed": [list(x) for x in self.failed],
            "refused": self.refused,
            "seconds": round(self.seconds, 3),
        }

    def describe(self) -> str:
        head = (
            f"synced in {self.seconds:.1f} s: {len(self.added)} added, {len(self.changed)} changed, "
            f"{len(self.metadata)} metadata only, {len(self.restored)} restored, {len(self.deleted)} deleted, {self.unchanged} unchanged; {self.chunks} chunks written"
        )
        rest = LoadReport(skipped=self.skipped, failed=self.failed).describe()
        refused = f"\nrefused without --allow-mass-delete: {self.refused}" if self.refused else ""
        return head + refused + ("\n" + rest if rest else "")


@dataclass
class _Plan:
    """One sync's inputs, found before anything is written."""

    listing: Listing
    source: Source
    new_source: bool
    known: dict[str, tuple[str, str]]
    printed: dict[str, str | None]  # the catalog's print of each recorded, present document
    foreign: dict[str, str]  # external id → the other folder whose records hold it
    gone: list[str]


class FolderSync:
    """Syncs one folder into one tenant of a store (see the module docstring)."""

    def __init__(self, ingester: Ingester, update_metadata: UpdateMetadata | None = None) -> None:
        self.ingester = ingester
        self.engine = ingester.catalog.engine
        self.update_metadata = update_metadata

    def state(self, tenant: str, root: str) -> dict[str, tuple[str, str]]:
        t = db.sync_state.c
        with db.reading(self.engine, "reading sync state") as conn:
            rows = conn.execute(select(t.external_id, t.content_hash, t.meta_hash).where(t.tenant == tenant, t.root == root))
            return {r.external_id: (r.content_hash, r.meta_hash) for r in rows}

    def record(self, tenant: str, root: str, entries: Mapping[str, tuple[str, str] | None]) -> None:
        """Store (or, for None, forget) the hashes of synced documents; two
        syncs of one folder at once (two processes) both record, the last one's
        hashes stay."""
        t = db.sync_state.c
        gone = sorted(e for e, h in entries.items() if h is None)
        rows = [{"tenant": tenant, "root": root, "external_id": e, "content_hash": h[0], "meta_hash": h[1]} for e, h in entries.items() if h is not None]
        with db.transaction(self.engine, "recording sync state") as conn:
            for part in db.chunks(gone):
                conn.execute(delete(db.sync_state).where(t.tenant == tenant, t.root == root, t.external_id.in_(list(part))))
            db.upsert(conn, db.sync_state, ("tenant", "root", "external_id"), rows)

    def settings(self) -> bytes:
        """What, besides a file's bytes, decides its chunks: a change re-embeds every file."""
        c = self.ingester.chunker
        enc = self.ingester.binding.encoder.name if self.ingester.binding is not None else "-"
        return json.dumps([c.size, c.overlap, c.unit, enc]).encode()

    def prints(self, tenant: str, ids: Sequence[str]) -> dict[str, str | None]:
        """The catalog's print (:func:`.records.doc_print`) of each document in ``ids``."""
        return catalog_prints(self.engine, tenant, ids) if ids else {}

    def owners(self, tenant: str, root: str, ids: Sequence[str]) -> dict[str, str]:
        """Those of ``ids`` that another folder's sync records hold, and that folder."""
        t = db.sync_state.c
        out: dict[str, str] = {}
        with db.reading(self.engine, "reading sync state") as conn:
            for part in db.chunks(sorted(ids)):
                for r in conn.execute(select(t.external_id, t.root).where(t.tenant == tenant, t.root != root, t.external_id.in_(list(part)))):
                    out[r.external_id] = r.root
        return out

    def sync(
        self,
        path: str | os.PathLike[str],
        *,
        tenant: str = DEFAULT_TENANT,
        folder_attrs: Sequence[str] | None = None,
        progress: Callable[[SyncProgress], None] | None = None,
        dry_run: bool = False,
        source: str | None = None,
        allow_mass_delete: bool = False,
    ) -> SyncReport:
        """Add new files, re-embed changed ones, update metadata-only changes,
        restore documents changed behind the sync, delete documents whose
        files are gone; returns what it did (see the module docstring)."""
        tenant = check_tenant(tenant, ArgumentError)
        t0 = time.perf_counter()
        plan = self.plan(path, tenant, source)
        report = SyncReport(source=plan.source.name, skipped=list(plan.listing.skipped), failed=list(plan.listing.failed))
        guard(plan, allow_mass_delete, dry_run, report)
        if plan.new_source and not dry_run:
            plan.source = register(self.engine, plan.source)
        with self.ingester.one_flush():  # one Milvus Lite flush for the whole sync, not one per batch
            run = _Run(self, plan, tenant, folder_attrs, progress, dry_run, report, t0)
            run.files()
            run.deletions()
        report.seconds = time.perf_counter() - t0
        log.info("sync of %s (source %r) into %r: %s", plan.source.root, plan.source.name, tenant, report.describe())
        return report

    def plan(self, path: str | os.PathLike[str], tenant: str, source: str | None) -> _Plan:
        """List the folder and compare it with the records and the catalog; changes nothing."""
        root = Path(path)
        if not root.is_dir():
            raise ArgumentError(f"{path}: not a folder")
        listing = list_folder(root)
        key = os.path.abspath(root)  # the folder as given, not where a link to it points (see .sources)
        known = self.state(tenant, key)
        src, new = resolve_source(self.engine, tenant, key, source, has_records=bool(known))
        real = os.path.realpath(key)
        if new and not known and real != key and self.state(tenant, real):  # records of an older store, keyed by the real path
            raise SourceClashError(f"{key} leads to {real}, whose sync records predate sources and are kept under that path: sync {real} to keep its documents' ids")
        present = {src.external_id(rel) for rel in listing.files}
        gone = sorted(e for e in known if e not in present and not listing.covers_unlisted(src.relative(e) or e))
        fresh = [e for e in present if e not in known]
        printed = self.prints(tenant, [e for e in known if e in present])
        return _Plan(listing, src, new, known, printed, self.owners(tenant, key, fresh) if fresh else {}, gone)


def guard(plan: _Plan, allow: bool, dry_run: bool, report: SyncReport) -> None:
    """Refuse a sync that would delete more than half of its source's
    documents, or all of them (a dry run reports it instead)."""
    n, k = len(plan.gone), len(plan.known)
    if not n or allow or (n < k and 2 * n <= k):
        return
    why = f"the sync would delete {n} of the {k} documents of source {plan.source.name!r} ({plan.source.root}), as an emptied or unmounted folder would"
    if dry_run:
        report.refused = why
        return
    raise MassDeleteError(f"{why}; nothing was changed. If the files are really gone, sync with --allow-mass-delete (allow_mass_delete=True); --dry-run lists what would go")


class _Run:
    """One sync's pass over the files: its batches, records and progress."""

    def __init__(
        self, sync: FolderSync, plan: _Plan, tenant: str, folder_attrs: Sequence[str] | None, progress: Callable[[SyncProgress], None] | None, dry_run: bool, report: SyncReport, t0: float
    ) -> None:
        self.sync, self.plan, self.tenant, self.folder_attrs = sync, plan, tenant, folder_attrs
        self.progress, self.dry_run, self.report, self.t0 = progress, dry_run, report, t0
        self.key = plan.source.root
        self.settings = sync.settings()
        self.total = len(plan.listing.files) + len(plan.gone)
        self.done = 0
        self.batch: list[tuple[tuple[list[RowSpec], list[str]], str, tuple[str, str]]] = []  # (specs and texts, external id, hashes)
        self.rows = 0
        self.upgrades: dict[str, tuple[str, str] | None] = {}  # records written before prints, given theirs

    def moving(self, rows: int = 0) -> None:
        """Progress; ``rows``: chunks of the write in progress encoded so far."""
        if self.progress is not None:
            self.progress(SyncProgress(self.done, self.total, self.report.chunks + rows, time.perf_counter() - self.t0))

    def step(self, n: int = 1) -> None:
        self.done += n
        self.moving()

    def files(self) -> None:
        self.moving()
        for rel in self.plan.listing.files:
            self.file(rel)
        if self.batch:
            self.write(self.take())
        if self.upgrades and not self.dry_run:
            self.sync.record(self.tenant, self.key, self.upgrades)

    def file(self, rel: str) -> None:
        """Read one file, hash it, and load it if the store differs from it."""
        plan, report = self.plan, self.report
        ext = plan.source.external_id(rel)
        why = skip_reason(rel)
        if why is None and ext in plan.foreign:
            why = f"its external id {ext!r} belongs to the synced folder {plan.foreign[ext]}"
            report.failed.append((rel, why))
        elif why is not None:
            report.skipped.append((rel, why))
        if why is not None:
            self.step()
            return
        try:
            item = read_file(plan.listing, rel)
        except (OSError, CatalogError) as exc:  # its stored version is left as it is
            report.failed.append((rel, str(exc) if isinstance(exc, CatalogError) else exc.strerror or str(exc)))
            self.step()
            return
        h = hashes(item, self.folder_attrs, self.settings)
        what = self.classify(ext, h)
        if what is None:
            report.unchanged += 1
            self.step()
            return
        self.load(item, ext, h, what)

    def classify(self, ext: str, h: tuple[str, str]) -> str | None:
        """What the file needs: add, change, restore, meta, or None (nothing)."""
        old = self.plan.known.get(ext)
        if old is None:
            return "add"
        current = self.plan.printed.get(ext)
        if current is None:  # recorded, but the catalog has no such document
            return "restore"
        meta, recorded = unpack(old[1])
        if old[0] != h[0]:
            return "change"
        if recorded is not None and recorded != current:  # rewritten behind the sync
            return "restore"
        if meta != h[1][:31]:
            return "meta"
        if recorded is None:
            self.upgrades[ext] = (h[0], pack(h[1], current))
        return None

    def load(self, item: FileBytes, ext: str, h: tuple[str, str], what: str) -> None:
        """Parse one file; apply a metadata-only change, or queue the document for a write."""
        loaded = LoadReport()
        load_file(item, self.folder_attrs, loaded, self.sync.ingester.max_document_chars, validate=False, external_id=ext)
        self.report.skipped += loaded.skipped
        self.report.failed += loaded.failed
        if not loaded.documents:  # skipped or failed: reported, stored version left alone
            self.step()
            return
        doc = loaded.documents[0]
        meta = what == "meta" and self.sync.update_metadata is not None
        try:  # checked once, as the write checks it: a file it refuses is reported, its stored version left alone
            if meta:
                row_spec(doc)  # its attributes and ACL, as update_metadata takes them
            else:
                made = self.sync.ingester.specs([doc], self.tenant)  # checked and chunked; held by the batch until written
        except CatalogError as exc:
            self.report.failed.append((item.rel, str(exc)))
            self.step()
            return
        if meta:
            if not self.dry_run:
                self.sync.update_metadata(ext, tenant=self.tenant, attrs=doc["attrs"], acl=doc.get("acl"))  # type: ignore[misc]
                self.sync.record(self.tenant, self.key, {ext: (h[0], pack(h[1], self.sync.prints(self.tenant, [ext])[ext]))})
            self.report.metadata.append(ext)
            self.step()
            return
        self.bucket(what).append(ext)
        self.batch.append((made, ext, h))
        self.rows += len(made[0])
        if self.rows >= BATCH_ROWS:
            self.write(self.take())

    def bucket(self, what: str) -> list[str]:
        r = self.report
        return {"add": r.added, "change": r.changed, "restore": r.restored}.get(what, r.metadata)

    def take(self) -> list[tuple[tuple[list[RowSpec], list[str]], str, tuple[str, str]]]:
        batch, self.batch, self.rows = self.batch, [], 0
        return batch

    def write(self, batch: list[tuple[tuple[list[RowSpec], list[str]], str, tuple[str, str]]]) -> None:
        """Write new and changed documents (replace: atomic per document), then
        record their hashes and prints. A document the store refuses (a chunk
        too long, an ACL refused) is reported as failed; the others still go in."""
        if self.dry_run:
            self.step(len(batch))
            return
        try:
            specs = [s for made, _, _ in batch for s in made[0]]
            texts = [t for made, _, _ in batch for t in made[1]]
            ids = self.sync.ingester.write(specs, texts, replace=True, progress=lambda n, _total: self.moving(n))
            self.report.chunks += len(ids)
        except CatalogError as exc:
            if len(batch) > 1:
                for one in batch:
                    self.write([one])
                return
            ext = batch[0][1]
            for bucket in (self.report.added, self.report.changed, self.report.restored, self.report.metadata):
                if ext in bucket:
                    bucket.remove(ext)
            self.report.failed.append((self.plan.source.relative(ext) or ext, str(exc)))
            self.step()
            return
        printed = self.sync.prints(self.tenant, [e for _, e, _ in batch])
        self.sync.record(self.tenant, self.key, {e: (h[0], pack(h[1], printed[e])) for _, e, h in batch})
        self.step(len(batch))

    def deletions(self) -> None:
        gone = self.plan.gone
        if gone and not self.dry_run:
            for part in db.chunks(gone, BATCH_ROWS):
                self.sync.ingester.delete(list(part), tenant=self.tenant)
                self.sync.record(self.tenant, self.key, {e: None for e in part})
                self.step(len(part))
        self.report.deleted = list(gone)


def sync_folder(ingester: Ingester, path: str | os.PathLike[str], *, update_metadata: UpdateMetadata | None = None, **options: Any) -> SyncReport:
    """:meth:`FolderSync.sync` in one call."""
    return FolderSync(ingester, update_metadata).sync(path, **options)
