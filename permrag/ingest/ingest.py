"""Documents in and out: validate, chunk, encode, two-phase write, replace, delete.

Every document of a call is validated (and chunked) before anything is
written; then batches — never splitting a document — are encoded, prepared
in the catalog as pending rows, written to the tenant's Milvus collection and
published (catalog/journal.py). A failure at any step leaves no visible
half-written row: what reached Milvus is deleted again (or left to reconcile
if even that fails), and the pending rows are removed.

``replace=True`` is atomic per document: the new rows are prepared and
written beside the old ones, and one catalog transaction publishes them and
retires the old rows, so readers see the old version until the new one is
visible and never neither; the old rows then leave Milvus. A replace that
fails anywhere leaves the old version in place.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..backends import MAX_TEXT_BYTES, Binding
from ..catalog import (
    DEFAULT_TENANT,
    Catalog,
    PendingBatch,
    RowRecord,
    RowSpec,
    row_spec,
)
from ..domain.names import check_attrs, check_external_id, check_tenant, check_text
from ..errors import ArgumentError, BackendError, CatalogError
from .chunking import Chunker, Length, token_length

log = logging.getLogger(__name__)

MAX_DOCUMENT_CHARS = 2_000_000  # per document, before chunking (``max_document_chars``)
ENCODE_STEP = 256  # rows encoded between two progress reports
Progress = Callable[[int, int], None]


def as_mapping(doc: Any) -> Mapping[str, Any]:
    """A document as a mapping; a LangChain ``Document`` (``page_content``,
    ``metadata``, ``id``) becomes ``text`` / ``attrs`` / ``external_id``
    (``metadata`` keys ``tenant``, ``parent`` and ``external_id`` are taken
    as such, the rest are attributes)."""
    if isinstance(doc, Mapping):
        return doc
    if hasattr(doc, "page_content") and hasattr(doc, "metadata"):
        meta = dict(doc.metadata or {})
        out: dict[str, Any] = {"text": doc.page_content}
        for key in ("tenant", "parent", "derived_from", "acl"):
            if key in meta:
                out[key] = meta.pop(key)
        out["external_id"] = meta.pop("external_id", None) or getattr(doc, "id", None)
        out["attrs"] = {k: v for k, v in meta.items() if v is not None}
        return out
    raise CatalogError(f"a document must be a mapping or a LangChain Document, not {type(doc).__name__}")


class Ingester:
    """Writes and deletes documents of one store (catalog + vectors)."""

    def __init__(self, catalog: Catalog, binding: Binding | None, chunker: Chunker, max_document_chars: int = MAX_DOCUMENT_CHARS) -> None:
        self.catalog = catalog
        self.binding = binding  # None: a catalog without vectors
        self.chunker = chunker
        self.max_document_chars = max_document_chars
        self._length: Length | None = None
        self._deferred = threading.local()  # .tenants: Milvus Lite flushes held back in this thread

    def length(self) -> Length | None:
        """The chunker's length function: None for characters, else the encoder's token count."""
        if self.chunker.unit != "tokens" or self.binding is None:
            return None
        if self._length is None:
            self._length = token_length(self.binding.encoder)
        return self._length

    # ------------------------------------------------------------------ validate
    def specs(self, docs: Any, tenant: str | None) -> tuple[list[RowSpec], list[str]]:
        """Every document validated and chunked; nothing written."""
        if docs is None or isinstance(docs, (str, bytes, Mapping)) or not isinstance(docs, Sequence):
            raise CatalogError(f"add_documents takes a list of documents, not {type(docs).__name__}")
        default_tenant = check_tenant(tenant) if tenant is not None else DEFAULT_TENANT
        specs: list[RowSpec] = []
        texts: list[str] = []
        for raw in docs:
            d = as_mapping(raw)
            spec = row_spec({k: v for k, v in d.items() if k != "sections"}, default_tenant)
            if self.binding is None:
                specs.append(spec)
                texts.append("")
                continue
            text = check_text(f"text of document {spec.external_id!r}", d.get("text"))
            if not text.strip():
                raise CatalogError(f"document {spec.external_id!r} has no text")
            if len(text) > self.max_document_chars:
                raise CatalogError(f"document {spec.external_id!r} has {len(text):,} characters; the limit is {self.max_document_chars:,} (max_document_chars): split it first")
            pieces = self.chunker.chunks(text, check_sections(spec.external_id, d.get("sections")), self.length())
            if len(pieces) == 1:
                specs.append(spec)
                texts.append(pieces[0].text)
            else:
                ext = spec.external_id
                # the document's id and attrs are checked already: only what a chunk adds is
                # (its id's length, and its page and heading, once per section)
                check_external_id("chunk id", f"{ext}#{len(pieces) - 1}")
                added: dict[tuple[Any, Any], dict[str, Any]] = {}
                for i, piece in enumerate(pieces):
                    where = (piece.page, piece.heading)
                    attrs = added.get(where)
                    if attrs is None:
                        more = {k: str(v) for k, v in (("page", piece.page), ("heading", piece.heading)) if v is not None}
                        attrs = added[where] = {**spec.attrs, **check_attrs(more)} if more else spec.attrs
                    specs.append(RowSpec(f"{ext}#{i}", spec.tenant, attrs, ext, spec.derived_from, ext, spec.acl))
                    texts.append(piece.text)
        for spec, text in zip(specs, texts):
            # a character is at most 4 bytes in UTF-8: a short chunk needs no encoding to tell
            if len(text) * 4 > MAX_TEXT_BYTES and len(text.encode("utf-8")) > MAX_TEXT_BYTES:
                raise CatalogError(f"chunk {spec.external_id!r} is over {MAX_TEXT_BYTES} bytes; lower chunk_size")
        seen: set[tuple[str, str]] = set()
        for s in specs:
            if (s.tenant, s.external_id) in seen:
                raise CatalogError(f"external id {s.external_id!r} appears twice in tenant {s.tenant!r}")
            seen.add((s.tenant, s.external_id))
        return specs, texts

    # ------------------------------------------------------------------ write
    def add_documents(self, docs: Any, *, tenant: str | None = None, replace: bool = False, batch_size: int = 4096, progress: Progress | None = None) -> list[int]:
        """Ingest documents; returns the row IDs allocated, in order (see the module docstring)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ArgumentError(f"batch_size must be a positive integer, not {batch_size!r}")
        specs, texts = self.specs(docs, tenant)
        return self.write(specs, texts, replace=replace, batch_size=batch_size, progress=progress)

    def write(self, specs: list[RowSpec], texts: list[str], *, replace: bool = False, batch_size: int = 4096, progress: Progress | None = None) -> list[int]:
        """Rows as :meth:`specs` made them (validated, chunked) written: the
        rest of :meth:`add_documents` (a folder sync checks each file as it
        loads it, and writes many files' rows at once)."""
        if not specs:
            return []
        if self.binding is not None:
            _ = self.binding.encoder  # checks the encoder against the store's before anything is written
        hint = self.catalog.allocator.size_hint(specs)
        ids: list[int] = []
        touched: set[int] = set()
        finished = False
        try:
            for lo, hi in _batches(specs, batch_size):
                step = (lambda n, lo=lo: progress(lo + n, len(specs))) if progress is not None else None
                ids.extend(self._batch(specs[lo:hi], texts[lo:hi], hint, replace, touched, step))
                if progress is not None:
                    progress(hi, len(specs))
            finished = True
        finally:
            # the batches written are flushed also when a later one (or a progress callback) raised
            held = self.deferred()
            if held is not None:
                held.update(touched)
            elif finished:
                self._flush(touched)
            elif touched:
                try:
                    self._flush(touched)
                except Exception as exc:  # noqa: BLE001 - the error that ended the ingest goes on
                    log.warning("flushing the rows written before an ingest stopped failed: %s", exc)
        return ids

    def deferred(self) -> set[int] | None:
        """The Milvus Lite flushes held back in this thread (within :meth:`one_flush`), else None."""
        return getattr(self._deferred, "tenants", None)

    def _flush(self, tenant_nos: set[int]) -> None:
        if self.binding is not None and tenant_nos and self.binding.backend().kind == "lite":
            # Milvus Lite scores BM25 for rows still in its memtable with
            # statistics of the rows that pass the filter, so one caller's
            # ranking would depend on the filter's form; sealed segments use
            # segment-wide statistics. Flush so it never does. (A server seals
            # on its own; a flush there costs seconds.)
            backend = self.binding.backend()
            for no in sorted(tenant_nos):
                backend.flush(no)

    @contextmanager
    def one_flush(self) -> Iterator[None]:
        """Ingests in this thread within the block flush Milvus Lite once, at
        its end (also when it raises): a folder sync of many batches seals
        one segment, not one per batch."""
        if self.deferred() is not None:
            yield  # nested: the outer block flushes
            return
        self._deferred.tenants = set()
        try:
            yield
        finally:
            held, self._deferred.tenants = self._deferred.tenants, None
            self._flush(held)

    def _batch(
        self,
        specs: list[RowSpec],
        texts: list[str],
        hint: dict,
        replace: bool,
        touched: set[int],
        step: Callable[[int], None] | None = None,
        vectors: Any = None,
        expect: frozenset[int] | None = None,
        later: Callable[[Sequence[RowRecord]], None] | None = None,
    ) -> list[int]:
        """One batch written and published (``expect``: the row IDs a replace
        must find live at publish, else ConcurrentChangeError and nothing written)."""
        if self.binding is None:
            batch = self.catalog.prepare(specs, hint, replace=replace)
            batch.expect = expect
            try:
                self.catalog.publish(batch)
            except BaseException:
                self.catalog.journal.abort(batch)
                raise
            return batch.row_ids
        binding = self.binding
        if vectors is None:  # given: a metadata update re-inserting stored vectors (ingest/update.py)
            vectors = self._encode(texts, step)
        backend = binding.backend()
        numbers = {t: self.catalog.tenants.ensure(t) for t in {s.tenant for s in specs}}
        for no in numbers.values():
            backend.ensure_tenant(no, binding.encoder.dim)
        binding.record_encoder()
        batch = self.catalog.prepare(specs, hint, replace=replace)
        batch.expect = expect
        rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
        # float32 rows as they are: pymilvus packs an array's bytes (a list of
        # Python floats cost 17 % more per insert, measured at 5,000 × 384)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for r, text, v in zip(batch.records, texts, vectors):
            rows[numbers[r.tenant]].append({"row_id": r.row_id, "tenant": r.tenant, "external_id": r.external_id, "vclass": r.vclass, "text": text, "dense": v})
        try:
            for no, part in rows.items():
                backend.insert(no, part)
                if replace and backend.kind == "server" and backend.consistency != "Strong":
                    # a replace retires rows at publish: one Strong read first, so that the server
                    # serves the new rows to every search that follows, Bounded ones too (their
                    # old rows must not leave answers before the new ones can enter them)
                    backend.stored(no, [part[0]["row_id"]], ("row_id",), strong=True)
            written = self.catalog.publish(batch)
        except BaseException:
            self._undo(batch, numbers)
            raise
        touched.update(numbers.values())
        if written.retired and later is not None:
            later(written.retired)  # the caller drops them (retired already: invisible; a crash leaves them to reconcile)
        elif written.retired:
            try:
                self._drop(written.retired, touched)
            except BackendError as exc:  # the replace is done; the old rows are invisible already
                log.warning("replaced rows stay in Milvus until the next reconcile: %s", exc)
        return batch.row_ids

    def _encode(self, texts: list[str], step: Callable[[int], None] | None) -> Any:
        """Vectors of ``texts``, encoded in slices of ``ENCODE_STEP`` so that a
        progress bar moves during a large batch (encoding is most of an
        ingest's time with a real model). The slices take the texts longest
        first, as a model orders one call's texts into its own batches: slices
        in the texts' order padded short texts to long ones (all-MiniLM-L6-v2
        here: 5-25 % slower than one call; by length, as fast)."""
        binding: Binding = self.binding  # type: ignore[assignment]  # only called with vectors
        if step is None or len(texts) <= ENCODE_STEP:
            return binding.encode(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = np.empty((len(texts), binding.encoder.dim), dtype=np.float32)
        for lo in range(0, len(texts), ENCODE_STEP):
            part = order[lo : lo + ENCODE_STEP]
            out[part] = binding.encode([texts[i] for i in part])
            if lo + ENCODE_STEP < len(texts):
                step(lo + ENCODE_STEP)
        return out

    def _undo(self, batch: PendingBatch, numbers: Mapping[str, int]) -> None:
        """Milvus may hold some of the batch (an insert can fail after landing):
        take them out before the catalog forgets the IDs. If that fails too,
        the batch is left to the next reconcile."""
        try:
            backend = self.binding.backend() if self.binding else None
            by_tenant: dict[str, list[int]] = defaultdict(list)
            for r in batch.records:
                by_tenant[r.tenant].append(r.row_id)
            for tenant, ids in by_tenant.items():
                if backend is not None:
                    backend.delete(numbers[tenant], ids)
        except BaseException:
            self.catalog.journal.abandon(batch)
            raise
        self.catalog.journal.abort(batch)

    def _drop(self, retired: Sequence[RowRecord], touched: set[int] | None = None) -> None:
        """Delete retired rows from Milvus, then from the catalog (reconcile
        finishes it if this is cut short)."""
        if self.binding is not None:
            backend = self.binding.backend()
            by_tenant: dict[str, list[int]] = defaultdict(list)
            for r in retired:
                by_tenant[r.tenant].append(r.row_id)
            for tenant, ids in by_tenant.items():
                no = self.catalog.tenants.number(tenant)
                if no is not None:
                    backend.delete(no, ids)
                    if touched is not None:
                        touched.add(no)
        self.catalog.journal.purge([r.row_id for r in retired])

    # ------------------------------------------------------------------ delete
    def delete(self, external_ids: Any, *, tenant: str = DEFAULT_TENANT) -> int:
        """Delete rows and whole documents (all their chunks) by external id; returns how many rows.

        Rows leave every bitmap first (invisible at once), then Milvus, then the catalog.
        """
        if isinstance(external_ids, str):
            external_ids = [external_ids]
        if external_ids is None or isinstance(external_ids, Mapping) or not isinstance(external_ids, Sequence):
            raise ArgumentError("delete takes an external id or a list of them")
        tenant = check_tenant(tenant, ArgumentError)
        ids = [check_external_id("external id", e, ArgumentError) for e in external_ids]
        if not ids:
            return 0
        written = self.catalog.retire(tenant, ids)
        if written.retired:
            self._drop(written.retired)
            if self.binding is not None and self.binding.opened is not None:
                no = self.catalog.tenants.number(tenant)
                if no is not None:
                    self.binding.backend().flush(no)
        return len(written.retired)


def check_sections(ext: str, sections: Any) -> list[Mapping[str, Any]] | None:
    """A document's optional ``sections`` (as loaders make them): a list of
    mappings with a ``text`` string and optional ``page`` (int) and ``heading``."""
    if sections is None:
        return None
    if isinstance(sections, (str, bytes, Mapping)) or not isinstance(sections, Sequence):
        raise CatalogError(f"sections of {ext!r} must be a list of mappings")
    for s in sections:
        if not isinstance(s, Mapping) or not isinstance(s.get("text"), str):
            raise CatalogError(f"each section of {ext!r} needs a 'text' string")
        page, heading = s.get("page"), s.get("heading")
        if page is not None and (isinstance(page, bool) or not isinstance(page, int)):
            raise CatalogError(f"a section page of {ext!r} must be an integer, not {page!r}")
        if heading is not None:
            check_text(f"a section heading of {ext!r}", heading)
    return list(sections)


def _batches(specs: Sequence[RowSpec], size: int) -> list[tuple[int, int]]:
    """Slices of at most ``size`` rows that never split a document (a larger
    document is a batch of its own), so a replace is atomic per document."""
    out: list[tuple[int, int]] = []
    start = 0
    i = 0
    n = len(specs)
    while i < n:
        doc_end = i + 1
        key = (specs[i].tenant, specs[i].document)
        while doc_end < n and specs[doc_end].chunk_of is not None and (specs[doc_end].tenant, specs[doc_end].document) == key:
            doc_end += 1
        if doc_end - start > size and i > start:
            out.append((start, i))
            start = i
        i = doc_end
    if start < n:
        out.append((start, n))
    return out
