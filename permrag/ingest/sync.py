"""Folder sync: make a tenant's documents from a folder equal to the folder.

For every file a loader is registered for (see :mod:`.loaders`), two hashes
are kept in ``permrag_sync`` (keyed by tenant, resolved folder and relative
path):

* the *content* hash — the file's bytes and the chunking settings: when it
  changes, the file is read, chunked, encoded and written again
  (``replace``, atomic per document: readers see the old version until the
  new one is live);
* the *metadata* hash — the sidecar's bytes (``<file>.meta.json`` or
  ``<file>.attrs.json``) and the folder-derived attributes: when only it
  changes, the new attributes and ACL are applied without encoding anything
  (``update_metadata``, the one call to point at the store's
  metadata-only update).

Unchanged files are not even read (only hashed), so a re-sync costs a hash
of the folder plus the work on what changed. Files gone from the folder are
deleted from the store; a file that is there but cannot be read (corrupt,
now empty) is reported and its stored version is left as it was. The state
of a document is recorded right after its write commits, so a sync cut
short anywhere is finished by the next one (a write it repeats is a
``replace`` of equal content).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from sqlalchemy import delete, select

from .. import db
from ..catalog import DEFAULT_TENANT, RowSpec, row_spec
from ..errors import ArgumentError, CatalogError
from ..names import check_tenant
from .ingest import Ingester
from .loaders.folder import SIDECARS, LoadReport, files_of, load_file

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

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)  # attributes / ACL only, nothing re-encoded
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    chunks: int = 0  # rows written
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "changed": self.changed,
            "metadata": self.metadata,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "chunks": self.chunks,
            "skipped": [list(x) for x in self.skipped],
            "failed": [list(x) for x in self.failed],
            "seconds": round(self.seconds, 3),
        }

    def describe(self) -> str:
        head = (
            f"synced in {self.seconds:.1f} s: {len(self.added)} added, {len(self.changed)} changed, "
            f"{len(self.metadata)} metadata only, {len(self.deleted)} deleted, {self.unchanged} unchanged; {self.chunks} chunks written"
        )
        rest = LoadReport(skipped=self.skipped, failed=self.failed).describe()
        return head + ("\n" + rest if rest else "")


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def hashes(f: Path, rel: Path, folder_attrs: Sequence[str] | None, settings: bytes, sidecars: set[Path]) -> tuple[str, str]:
    """(content hash, metadata hash) of file ``f`` (``rel`` below the synced
    folder), without parsing it; ``sidecars``: the folder's sidecar files, as
    :func:`files_of` lists them."""
    content = _sha(f.read_bytes(), settings)
    sides = [s.read_bytes() if s in sidecars else b"-" for s in (f.with_name(f.name + x) for x in SIDECARS)]
    meta = _sha(json.dumps([list(folder_attrs or ()), list(rel.parent.parts)]).encode(), *sides)
    return content, meta


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

    def sync(
        self,
        path: str | Path,
        *,
        tenant: str = DEFAULT_TENANT,
        folder_attrs: Sequence[str] | None = None,
        progress: Callable[[SyncProgress], None] | None = None,
        dry_run: bool = False,
    ) -> SyncReport:
        """Add new files, re-embed changed ones, update metadata-only changes,
        delete documents whose files are gone; returns what it did."""
        with self.ingester.one_flush():  # one Milvus Lite flush for the whole sync, not one per batch
            return self._sync(path, tenant, folder_attrs, progress, dry_run)

    def _sync(self, path, tenant, folder_attrs, progress, dry_run) -> SyncReport:
        root = Path(path)
        if not root.is_dir():
            raise ArgumentError(f"{path}: not a folder")
        tenant = check_tenant(tenant, ArgumentError)
        key = str(root.resolve())
        t0 = time.perf_counter()
        report = SyncReport()
        known = self.state(tenant, key)
        settings = self.settings()
        sidecars: set[Path] = set()
        files = files_of(root, sidecars)
        todo: list[tuple[Path, str, tuple[str, str], str]] = []  # (file, external id, hashes, what)
        present: set[str] = set()
        for f in files:
            rel = f.relative_to(root)
            ext = rel.as_posix()
            present.add(ext)
            try:
                h = hashes(f, rel, folder_attrs, settings, sidecars)
            except OSError as exc:
                report.failed.append((ext, exc.strerror or str(exc)))
                continue
            old = known.get(ext)
            if old == h:
                report.unchanged += 1
            else:
                todo.append((f, ext, h, "add" if old is None else "change" if old[0] != h[0] else "meta"))
        gone = sorted(e for e in known if e not in present)
        total = len(todo) + len(gone)
        done = 0

        def moving(rows: int) -> None:  # ``rows``: chunks of the write in progress encoded so far
            if progress is not None:
                progress(SyncProgress(done, total, report.chunks + rows, time.perf_counter() - t0))

        def step(n: int = 1) -> None:
            nonlocal done
            done += n
            moving(0)

        if progress is not None:
            progress(SyncProgress(0, total, 0, 0.0))
        loaded = LoadReport()
        batch: list[tuple[tuple[list[RowSpec], list[str]], str, tuple[str, str], str]] = []
        rows = 0
        for f, ext, h, what in todo:
            before = len(loaded.documents)
            load_file(root, f, folder_attrs, loaded, self.ingester.max_document_chars, validate=False)
            if len(loaded.documents) == before:  # skipped or failed: reported, stored version left alone
                step()
                continue
            doc = loaded.documents.pop()
            meta = what == "meta" and self.update_metadata is not None
            try:  # checked once, as the write checks it: a file it refuses is reported, its stored version left alone
                if meta:
                    row_spec(doc)  # its attributes and ACL, as update_metadata takes them
                else:
                    rows_of = self.ingester.specs([doc], tenant)  # checked and chunked; held by the batch until written
            except CatalogError as exc:
                report.failed.append((ext, str(exc)))
                step()
                continue
            if meta:
                if not dry_run:
                    self.update_metadata(ext, tenant=tenant, attrs=doc["attrs"], acl=doc.get("acl"))
                    self.record(tenant, key, {ext: h})
                report.metadata.append(ext)
                step()
                continue
            (report.added if what == "add" else report.changed if what == "change" else report.metadata).append(ext)
            batch.append((rows_of, ext, h, what))
            rows += len(rows_of[0])
            if rows >= BATCH_ROWS:
                self._write(batch, tenant, key, report, dry_run, step, moving)
                batch, rows = [], 0
        if batch:
            self._write(batch, tenant, key, report, dry_run, step, moving)
        report.skipped, report.failed = loaded.skipped, report.failed + loaded.failed
        if gone:
            if not dry_run:
                for part in db.chunks(gone, BATCH_ROWS):
                    self.ingester.delete(list(part), tenant=tenant)
                    self.record(tenant, key, {e: None for e in part})
                    step(len(part))
            report.deleted = gone
        report.seconds = time.perf_counter() - t0
        log.info("sync of %s into %r: %s", key, tenant, report.describe())
        return report

    def _write(self, batch, tenant: str, key: str, report: SyncReport, dry_run: bool, step: Callable[[int], None], moving: Callable[[int], None]) -> None:
        """Write new and changed documents (replace: atomic per document), then
        record their hashes. A document the store refuses (a chunk too long,
        an ACL refused) is reported as failed; the others still go in."""
        if not dry_run:
            try:
                specs = [s for (made, _), *_ in batch for s in made]
                texts = [t for (_, chunks), *_ in batch for t in chunks]
                ids = self.ingester.write(specs, texts, replace=True, progress=lambda n, _total: moving(n))
                report.chunks += len(ids)
            except CatalogError as exc:
                if len(batch) > 1:
                    for item in batch:
                        self._write([item], tenant, key, report, dry_run, step, moving)
                    return
                ext = batch[0][1]
                for bucket in (report.added, report.changed, report.metadata):
                    if ext in bucket:
                        bucket.remove(ext)
                report.failed.append((ext, str(exc)))
                step(1)
                return
            self.record(tenant, key, {ext: h for _, ext, h, _ in batch})
        step(len(batch))


def sync_folder(ingester: Ingester, path: str | Path, *, update_metadata: UpdateMetadata | None = None, **options: Any) -> SyncReport:
    """:meth:`FolderSync.sync` in one call."""
    return FolderSync(ingester, update_metadata).sync(path, **options)
