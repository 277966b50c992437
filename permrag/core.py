"""The PermRAG façade: opens a store, wires its parts, and delegates.

Each public method is one call into the part that owns the concept: ``access`` (who may read what, at the stored
versions), ``searcher`` (permissioned search), ``ingester`` (documents in and out), the versioned policy, the audit log,
reconcile. Three long signatures stay on one line each (``# fmt: skip``): this module is at its line limit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pyroaring import FrozenBitMap

from . import config
from .access import Access, Compiler, ConsistencyFaces, Explanation, Snapshot
from .access.enforcer import build_enforcer
from .backends import Binding, MilvusBackend
from .catalog import DEFAULT_TENANT, Catalog, DocumentRecord, RowRecord, as_array
from .domain.repair import RepairReport
from .domain.results import Hits, Stats
from .embed import Encoder
from .errors import BackendError, ConfigError
from .ingest import Chunker, Ingester, add_generated, reconcile
from .ingest.sync import SyncReport, sync_folder
from .ingest.update import KEEP, update_metadata
from .options import Options
from .placement.covis import check_layout, layout_placement
from .placement.keeper import Keeper
from .placement.repartition import RepartitionReport, repartition
from .placement.signature import Signer
from .policy import Policy
from .policy.identity import Identity
from .search import DEFAULT_FUSION, DEFAULT_WEIGHTS, LITE, SERVER, CostModel, Plan, Planner, Searcher
from .search.aio import AsyncRunner
from .search.calibrate import Calibration
from .search.execute import indexed_alone
from .search.fetch import fetch
from .search.in_process import InProcessRanker
from .search.pipeline import retrieve
from .search.recommend import recommend, similar
from .storage import db
from .storage.audit import AuditLog
from .storage.create import open_store

log = logging.getLogger(__name__)


class PermRAG(ConsistencyFaces):
    """A permissioned retrieval store. Build one with :meth:`open`; the constructor does no I/O."""

    def __init__(self, settings: config.Settings, options: Options | None = None, **given: Any) -> None:
        o = self.options = options if options is not None and not given else Options.of(given, options)  # (open() checked them already)
        self.settings = settings
        self.planner = o.planner
        self.last_repair: RepairReport | None = None
        self.stats = Stats()
        self._lock = threading.RLock()  # the state lock: policy, catalog index and compiler caches
        self._clock = o.clock or (lambda: time.time())  # when expiring access ends (tests pass a fake clock)
        self._chunker = Chunker(o.chunk_size, o.chunk_overlap, o.chunk_unit)
        self._encoder = o.encoder if o.encoder is not None else settings.encoder
        self._collection = o.collection or (settings.collection if settings.sources.get("collection") else None)
        self._backend_options: dict[str, Any] = dict(token=settings.milvus_token, index=o.index, consistency=o.consistency, analyzer=o.analyzer, groups=o.partitions)
        self._layout = (o.partitions, o.partition_by)  # as given; the store's recorded layout fills in on connect (placement/covis.py)
        if not o.catalog_only:
            check_layout(MilvusBackend(settings.milvus_uri, **self._backend_options).groups, o.partition_by)  # checks the options; no I/O
        self._local = InProcessRanker(o.local_rows, o.cache_mb, o.prefetch_rows)
        self._engine: Any = None
        self.keeper: Keeper | None = None
        self.aio = AsyncRunner(o.async_workers)  # the bounded pool of asearch & co.; threads start on first use

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        database_url: str | None = None,
        milvus_uri: str | None = None,
        milvus_token: str | None = None,
        create: bool | None = None,
        options: Options | None = None,
        **given: Any,
    ) -> PermRAG:
        """Open the store under ``home``. ``create``: True makes one where the database has none, False never does
        (:class:`NoStoreError`), None only for a home that records no store yet (:func:`permrag.storage.create.open_store`).

        Settings not given come from ``PERMRAG_*`` variables, then the home's
        ``config.toml`` (see :mod:`permrag.config`). The store's options come as
        one :class:`~permrag.Options` (``options=``), as keywords, or both (the
        keywords win), checked together before anything opens (an unknown name
        is an error naming the closest). Each option, its default and what it
        does: docs/configuration.md ("Options of a store"): ``encoder``,
        ``collection``, ``chunk_size``, ``chunk_overlap``, ``chunk_unit``,
        ``index``, ``consistency``, ``analyzer``, ``allocation``,
        ``policy_attrs``, ``planner``, ``max_document_chars``,
        ``stale_ingest_after``, ``audit``, ``async_workers``, ``clock``,
        ``partitions``, ``partition_by``, ``repartition_every``, ``local_rows``,
        ``prefetch_rows``, ``cache_mb`` and ``catalog_only``.
        Milvus is connected on first use, so opening is cheap.
        """
        opts = Options.of(given, options)
        settings = config.resolve(
            home,
            database_url=database_url,
            milvus_uri=milvus_uri,
            milvus_token=milvus_token,
            collection=opts.collection,
            encoder=opts.encoder if isinstance(opts.encoder, str) else None,
        )
        config.ensure_home(settings, create=create is not False)
        rag = cls(settings, opts)
        rag._connect(create)
        rag._repair_on_open()
        return rag

    def _connect(self, create: bool | None) -> None:
        self._engine = open_store(self.settings, create)
        o = self.options
        self.policy = Policy(self._engine, self._lock, self._clock)
        self.catalog = Catalog(self._engine, self._lock, allocation=o.allocation, policy_attrs=o.policy_attrs)
        self.compiler = Compiler(self.catalog, self.policy, self._lock, self._clock)
        self.identity = Identity(self.policy, denied=lambda tenant: self.access.denied_principals(tenant))
        self._audit = AuditLog(self._engine, o.audit)
        self.access = Access(self._engine, self.policy, self.catalog, self.compiler, self._lock, self._audit)
        self.binding = None if self.options.catalog_only else Binding(self._engine, self._make_backend, self._collection, self._encoder)
        self.ingester = Ingester(self.catalog, self.binding, self._chunker, o.max_document_chars)
        kind = self.settings.milvus_kind
        self.calibration = Calibration(self._engine, kind, SERVER if kind == "server" else LITE)
        self.searcher = Searcher(self.access, self.catalog, self._binding(), self._planner, self._audit, self.stats, self._local)
        self.catalog.load()
        self.policy.load()
        if not self.options.catalog_only:
            placement = self.catalog.allocator.placement = layout_placement(self._engine, self._layout, self._backend_options, lambda: Signer(self.policy), self.settings.milvus_kind)
            if placement is not None and o.repartition_every:  # rows follow the policy in the background (placement/keeper.py)
                self.keeper = Keeper(self, o.repartition_every).start()

    def _make_backend(self, collection: str) -> MilvusBackend:
        return MilvusBackend(self.settings.milvus_uri, collection=collection, **self._backend_options)

    def _binding(self) -> Binding:
        if self.binding is None:
            return _NoVectors(self._engine)
        return self.binding

    def _planner(self) -> Planner:
        return self.planner if self.planner is not None else Planner(self.calibration.model())

    def calibrate(self, tenant: str | None = None) -> CostModel:
        """Measure search costs on ``tenant``'s collection (default: the largest) for the planner (:mod:`permrag.search.calibrate`)."""
        sizes = self._tenant_sizes()
        if tenant is None:
            tenant = max(sizes, key=lambda t: sizes[t], default=DEFAULT_TENANT)
        no = self.catalog.tenants.number(tenant)
        if not sizes.get(tenant) or no is None or not self.backend.has_tenant(no):
            raise ConfigError(f"tenant {tenant!r} holds no rows to measure searches on")
        return self.calibration.run(self.backend, no, sizes[tenant], self.encoder.dim, as_array(self.catalog.tenant(tenant).rows))

    def _tenant_sizes(self) -> dict[str, int]:
        """Live rows per tenant, from the in-memory catalog index (no query, no copy)."""
        return {t: len(self.catalog.tenant(t).rows) for t in self.catalog.index.tenants()}

    def _calibrate_if_grown(self) -> None:
        if self.binding is None or self.planner is not None:
            return
        sizes = self._tenant_sizes().values()
        if sizes and self.calibration.due(max(sizes)):
            try:
                self.calibrate()
            except BackendError as exc:  # the defaults serve until the next ingest
                log.warning("measuring search costs failed: %s", exc)

    def _repair_on_open(self) -> None:
        self.last_repair = None
        if not self.catalog.journal.dead_ingests(self.options.stale_ingest_after) and not self.catalog.rows.by_state("deleted"):
            return
        try:
            self.last_repair = self.reconcile()
        except BackendError as exc:
            # What is left to repair is invisible (in no bitmap); it waits for
            # the next open or rag.reconcile().
            log.warning("reconcile deferred, Milvus unreachable: %s", exc)

    def reconcile(self, *, full: bool = False) -> RepairReport:
        """Repair catalog and Milvus after a crash; ``full`` also compares every Milvus row ID (see ingest/reconcile)."""
        return reconcile(self.catalog, self.binding, full=full, stale_after=self.options.stale_ingest_after)

    def close(self) -> None:
        self.aio.close()  # first: running async calls finish before the engine goes
        if self.keeper is not None:
            self.keeper.close()  # stops between two batches of a move
        if self._engine is None:
            return
        self._audit.close()
        self._local.close()  # its background reader stops before the Milvus client goes
        if self.binding is not None:
            self.binding.close()
        db.dispose(self._engine)
        self._engine = None

    def __enter__(self) -> PermRAG:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def audit(self) -> AuditLog:
        """The audit log; ``rag.audit = False`` turns it off, ``True`` on (synchronous)."""
        return self._audit

    @audit.setter
    def audit(self, on: bool) -> None:
        self._audit.mode = "sync" if on else "off"

    # ------------------------------------------------------------------ versions and parts
    @property
    def policy_version(self) -> int:
        return self.policy.version

    @property
    def catalog_version(self) -> int:
        return self.catalog.version

    def refresh(self) -> bool:
        """Catch up with what other processes changed (policy and catalog); True if
        anything changed here. Every read does it first; call it to pay it ahead."""
        return self.access.refresh()

    def sync(self) -> bool:
        """Deprecated name of :meth:`refresh` (one release): "sync" is folder and directory sync."""
        warnings.warn("rag.sync() is deprecated: use rag.refresh()", DeprecationWarning, stacklevel=2)
        return self.refresh()

    @property
    def encoder(self) -> Encoder:
        return self._binding().encoder

    @property
    def backend(self) -> MilvusBackend:
        """The Milvus backend: the collections of this store's tenants (bound on first use)."""
        return self._binding().backend()

    @property
    def store(self) -> MilvusBackend:
        """Deprecated name of :attr:`backend` (one release): "store" is the home folder."""
        warnings.warn("rag.store is deprecated: use rag.backend", DeprecationWarning, stacklevel=2)
        return self.backend

    def cache_memory(self) -> dict[str, int]:
        """What in-process ranking holds now: rows, bytes (within ``budget_bytes``, the
        ``cache_mb`` option), copies, sets, and sets not cached for want of room."""
        return self._local.memory()

    def warm(self, *, users: Sequence[str] = (), tenant: str = DEFAULT_TENANT) -> dict[str, float]:
        """Pay now what a process's first searches would: connect to Milvus
        (importing pymilvus), check the store's binding, load the encoder,
        load every tenant's collection and search one row in it, and read
        back the rows in-process ranking will need (search/in_process.py): every
        row of each tenant of at most ``local_rows`` rows, and the visible
        rows of ``users`` in ``tenant`` with their records (a larger set gets its filter form
        chosen, and one of at most ``prefetch_rows`` its background read queued). For servers (``permrag mcp`` calls it at start, naming its
        ``--as`` user); returns seconds per step."""
        steps: dict[str, float] = {}
        t = time.perf_counter()
        store = self.backend
        steps["connect"] = time.perf_counter() - t
        t = time.perf_counter()
        probe = self.encoder.encode(["warm"])
        steps["encoder"] = time.perf_counter() - t
        t = time.perf_counter()
        for name in self.catalog.index.tenants():
            no = self.catalog.tenants.number(name)
            if no is not None and store.has_tenant(no):
                store.search(no, "dense", vectors=probe, texts=None, expr="", limit=1)
                rows = self.catalog.tenant(name).rows
                self.catalog.rows.records(list(rows[:1]))  # the catalog's queries compiled once
                if self._local.takes(len(rows), store):
                    self._local.prefill(store, no, rows, rows)
        self._planner()  # the measured cost model, read once
        steps["collections"] = time.perf_counter() - t
        t = time.perf_counter()
        no = self.catalog.tenants.number(tenant)
        for user in users:
            snap = self.access.snapshot(user, tenant)
            if no is not None and self._local.takes(len(snap.visible), store):
                self._local.prefill(store, no, snap.visible, snap.tenant_rows)
                self.catalog.rows.records(snap.visible)  # the records every hit is verified against
            elif no is not None:
                plan = self.searcher.plan(snap)  # its filter form chosen once (cached per bitmap)
                if not indexed_alone(plan, store):  # a larger set: read back in the background
                    self._local.ready(store, no, snap.visible, snap.tenant_rows, len(snap.visible))
        steps["users"] = time.perf_counter() - t
        self._audit.record("warm", None, None, self.policy_version, {"steps": steps})  # when this process began to serve
        return steps

    # ------------------------------------------------------------------ documents
    def add_documents(self, docs: Sequence[Mapping[str, Any]], *, tenant: str | None = None, replace: bool = False, batch_size: int = 4096, progress: Callable[[int, int], None] | None = None) -> list[int]:  # fmt: skip
        """Ingest documents (``external_id``, ``text``, optional ``tenant``, ``attrs``, ``parent``,
        ``derived_from``; or LangChain ``Document``s); returns the row IDs. See :mod:`permrag.ingest.ingest`."""
        ids = self.ingester.add_documents(docs, tenant=tenant, replace=replace, batch_size=batch_size, progress=progress)
        self._calibrate_if_grown()
        return ids

    def sync_folder(self, path: str | os.PathLike[str], *, tenant: str = DEFAULT_TENANT, **options: Any) -> SyncReport:
        """Make ``tenant``'s documents from folder ``path`` equal to its files: see :mod:`permrag.ingest.sync`."""
        return sync_folder(self.ingester, path, tenant=tenant, update_metadata=getattr(self, "update_metadata", None), **options)

    def update_metadata(self, external_id: str, *, tenant: str = DEFAULT_TENANT, attrs: Any = KEEP, acl: Any = KEEP) -> list[int]:
        """Change a document's ``attrs`` and/or ``acl`` (None removes it) without re-encoding; atomic. See :mod:`permrag.ingest.update`."""
        return update_metadata(self.ingester, external_id, tenant=tenant, attrs=attrs, acl=acl)

    def repartition(self, tenant: str = DEFAULT_TENANT, *, dry_run: bool = False) -> RepartitionReport:
        """Move ``tenant``'s rows to their co-visibility partitions under the policy of now (stored, after :meth:`refresh`); see :mod:`permrag.placement.repartition`."""
        return repartition(self.ingester, self.catalog.allocator.placement, tenant, dry_run=dry_run, before=self.refresh)

    def regroup(self, tenant: str = DEFAULT_TENANT, *, dry_run: bool = False) -> RepartitionReport:
        """Deprecated name of :meth:`repartition` (one release)."""
        warnings.warn("rag.regroup() is deprecated: use rag.repartition()", DeprecationWarning, stacklevel=2)
        return self.repartition(tenant, dry_run=dry_run)

    def delete(self, external_ids: Sequence[str] | str, *, tenant: str = DEFAULT_TENANT) -> int:
        """Delete rows and whole documents by external id; returns how many rows."""
        return self.ingester.delete(external_ids, tenant=tenant)

    def rows(self, row_ids: Iterable[int]) -> list[RowRecord]:
        """Live catalog records of ``row_ids``, in order."""
        return self.catalog.rows.live(row_ids)

    def row(self, external_id: str, tenant: str = DEFAULT_TENANT) -> RowRecord | DocumentRecord:
        """The row called ``external_id``, or the document of several chunks it names."""
        return self.access.row(external_id, tenant)

    # ------------------------------------------------------------------ permissions
    def visible(self, user: str, tenant: str = DEFAULT_TENANT) -> FrozenBitMap:
        """Row IDs *user* ``user`` may read in ``tenant`` (empty for unknown users)."""
        return self.access.visible(user, tenant)

    def snapshot(self, user: str, tenant: str = DEFAULT_TENANT, *, agent: str | Sequence[str] | None = None) -> Snapshot:
        """The user's bitmap (with ``agent``: the rows the user and the agent may both read) and the versions it belongs to."""
        return self.access.snapshot(user, tenant, agent)

    def can_read(self, user: str, external_id: str, tenant: str = DEFAULT_TENANT, *, agent: str | Sequence[str] | None = None) -> bool:
        """Whether ``user`` (through ``agent``) may read a row or a whole document (False also if it does not exist); audited as a ``check``."""
        return self.access.can_read(user, external_id, tenant, agent)

    def explain(self, user: str, external_id: str, tenant: str = DEFAULT_TENANT, *, agent: str | Sequence[str] | None = None) -> Explanation:
        """Whether ``user`` (through ``agent``: both paths) may read a row or document, and the path and rule that decide it."""
        return self.access.explain(user, external_id, tenant, agent)

    def who_can_see(self, external_id: str, tenant: str = DEFAULT_TENANT) -> dict[str, list[Any]]:
        """The users, groups, roles and agents that may read a row or document now: names (``names.Held``) with the end an expiry puts to it."""
        return self.access.who_can_see(external_id, tenant)

    def lint(self, tenant: str = DEFAULT_TENANT) -> list[dict[str, Any]]:
        """Rules that can never matter (``permrag policy check``)."""
        return self.access.lint(tenant)

    def enforcer(self) -> Any:
        """A casbin ``Enforcer`` over the stored rules (``enforce(user, tenant, row, "read")``)."""
        return build_enforcer(self._engine, self._clock())

    # ------------------------------------------------------------------ search
    def plan(self, user: str, tenant: str = DEFAULT_TENANT, *, agent: str | Sequence[str] | None = None) -> Plan:
        """The filter plan a search by ``user`` (through ``agent``) in ``tenant`` would use."""
        return self.searcher.plan(self.access.snapshot(user, tenant, agent))

    def search(self, query: str, *, user: str, tenant: str = DEFAULT_TENANT, k: int = 10, mode: str = "auto", fusion: str = DEFAULT_FUSION, weights: Sequence[float] = DEFAULT_WEIGHTS, pool: int | None = None, agent: str | Sequence[str] | None = None, at_least: str | None = None) -> Hits:  # fmt: skip
        """The top ``k`` rows ``user`` may read, best first; every hit verified and stamped with
        its policy version. ``mode``: auto (hybrid where the backend has BM25, else dense), hybrid,
        dense, keyword; ``fusion``: weighted or rrf (``weights`` = dense, keyword); ``pool``:
        candidates per list before hybrid fusion (default 4·k for weighted fusion, k for rrf); ``agent``: a delegated search, only rows the user and the agent may both read;
        ``at_least``: a consistency token (``hits.consistency_token``, :meth:`consistency_token`) this answer must reflect (docs/consistency.md)."""
        return self.searcher.search_many([query], user=user, tenant=tenant, k=k, mode=mode, fusion=fusion, weights=weights, pool=pool, agent=agent, at_least=at_least)[0]

    def search_many(self, queries: Sequence[str], *, user: str, tenant: str = DEFAULT_TENANT, k: int = 10, mode: str = "auto", fusion: str = DEFAULT_FUSION, weights: Sequence[float] = DEFAULT_WEIGHTS, vectors: Any = None, pool: int | None = None, agent: str | Sequence[str] | None = None, at_least: str | None = None) -> list[Hits]:  # fmt: skip
        """:meth:`search` for several queries of one caller in one Milvus call."""
        return self.searcher.search_many(queries, user=user, tenant=tenant, k=k, mode=mode, fusion=fusion, weights=weights, vectors=vectors, pool=pool, agent=agent, at_least=at_least)

    async def asearch(self, query: str, **options: Any) -> Hits:
        """:meth:`search` without blocking the event loop (on ``rag.aio``'s bounded pool; see :mod:`permrag.search.aio`)."""
        return await self.aio.run(self.search, query, **options)

    async def aretrieve(self, query: str, **options: Any) -> Hits:
        """:meth:`retrieve` without blocking the event loop."""
        return await self.aio.run(self.retrieve, query, **options)

    async def arecommend(self, vectors: Any, **options: Any) -> dict[str, Hits]:
        """:meth:`recommend` without blocking the event loop."""
        return await self.aio.run(self.recommend, vectors, **options)

    def fetch(self, external_id: str, *, user: str, tenant: str = DEFAULT_TENANT, agent: str | Sequence[str] | None = None, at_least: str | None = None) -> Hits:
        """The rows of a row or document ``user`` (through ``agent``) may read, in order, with their text (else :class:`NotReadableError`)."""
        return fetch(self.searcher, external_id, user=user, tenant=tenant, agent=agent, at_least=at_least)

    def retrieve(self, query: str, *, user: str, tenant: str = DEFAULT_TENANT, k: int = 5, **options: Any) -> Hits:
        """Multi-stage retrieval (rerank, parent merge, RAG-Fusion): see :mod:`permrag.search.pipeline`."""
        return retrieve(self.searcher, query, user=user, tenant=tenant, k=k, **options)

    def recommend(self, vectors: Any, *, users: Sequence[str], tenant: str = DEFAULT_TENANT, k: int = 10, agent: str | Sequence[str] | None = None, at_least: str | None = None) -> dict[str, Hits]:
        """Top-k rows per user's vector (each through ``agent``, if given); users with equal bitmaps share one batched search."""
        return recommend(self.searcher, vectors, users, tenant=tenant, k=k, agent=agent, at_least=at_least)

    def similar(self, external_id: str, *, user: str, tenant: str = DEFAULT_TENANT, k: int = 10, agent: str | Sequence[str] | None = None, at_least: str | None = None) -> Hits:
        """Rows like ``external_id``; a seed the caller (through ``agent``) may not read is refused as if it did not exist."""
        return similar(self.searcher, external_id, user=user, tenant=tenant, k=k, agent=agent, at_least=at_least)

    def add_generated(self, text: str, *, sources: Sequence[str], user: str, tenant: str = DEFAULT_TENANT, external_id: str | None = None, attrs: Mapping[str, Any] | None = None) -> list[int]:
        """Store generated text visible exactly to those who may read all its sources."""
        return add_generated(self.ingester, self.access, text, sources=sources, user=user, tenant=tenant, external_id=external_id, attrs=attrs)

    def as_retriever(self, *, user: str, tenant: str = DEFAULT_TENANT, **options: Any) -> Any:
        """Deprecated for one release (the core's one import of a face, tests/unit/test_layers.py): use ``permrag.integrations.langchain.as_retriever(rag, …)``."""
        from .integrations.langchain import as_retriever

        warnings.warn("rag.as_retriever(...) is deprecated: use permrag.integrations.langchain.as_retriever(rag, ...)", DeprecationWarning, stacklevel=2)
        return as_retriever(self, user=user, tenant=tenant, **options)

    def audit_log(self, *, user: str | None = None, since: float | None = None, limit: int = 100, agent: str | None = None) -> list[dict[str, Any]]:
        """Logged searches and recommendations, newest first (``agent``: only those made through that agent)."""
        return self._audit.query(user=user, since=since, limit=limit, agent=agent)


class _NoVectors(Binding):
    """The binding of a catalog-only store: every vector operation says so."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine, lambda _c: None, None, None)  # type: ignore[arg-type, return-value]

    def backend(self) -> MilvusBackend:
        raise ConfigError("this PermRAG was opened with catalog_only=True: there is no vector store")

    @property
    def encoder(self) -> Encoder:
        raise ConfigError("this PermRAG was opened with catalog_only=True: there is no encoder")
