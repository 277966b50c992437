"""The PermRAG façade: one object that opens a store and answers for it."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
from pyroaring import BitMap, FrozenBitMap
from sqlalchemy.exc import SQLAlchemyError

from . import config, db
from .catalog import DEFAULT_TENANT, Catalog, RowRecord, RowSpec, check_tenant, row_spec
from .chunking import Chunker
from .compiler import Compiler
from .embed import Encoder, resolve_encoder
from .errors import BackendError, CatalogError, ConfigError, PermragError, UnknownTenantError
from .explain import Explanation, explain_row
from .planner import LITE, SERVER, Plan, Planner
from .policy import Policy
from .retrieval import Hit, Hits, Retrieval
from .store import MAX_LIMIT, MAX_TEXT_BYTES, MilvusStore

MODES = ("hybrid", "dense", "keyword")
FUSIONS = ("rrf", "weighted")
MAX_QUERY_CHARS = 10_000
MAX_DOCUMENT_CHARS = 2_000_000  # per document, before chunking (``max_document_chars``)

log = logging.getLogger(__name__)


@dataclass
class RepairReport:
    """What :meth:`PermRAG.reconcile` repaired."""

    pending_removed: int = 0  # rows of interrupted ingests, removed from Milvus and the catalog
    deleted_purged: int = 0  # retired rows whose deletion had not finished
    orphans_removed: int = 0  # Milvus rows without a live catalog entry (full only)
    missing: list[int] = field(default_factory=list)  # live rows Milvus lacks (full only)

    @property
    def repaired(self) -> bool:
        return bool(self.pending_removed or self.deleted_purged or self.orphans_removed)

    def describe(self) -> str:
        text = (
            f"{self.pending_removed} rows of interrupted ingests removed, {self.deleted_purged} deleted rows purged, "
            f"{self.orphans_removed} orphan Milvus rows removed"
        )
        if self.missing:
            text += f"; {len(self.missing)} live rows missing from Milvus (ingest them again)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "pending_removed": self.pending_removed,
            "deleted_purged": self.deleted_purged,
            "orphans_removed": self.orphans_removed,
            "missing": self.missing,
        }


class PermRAG:
    """A permissioned retrieval store.

    Build one with :meth:`open`; the constructor itself does no I/O.
    """

    def __init__(
        self,
        settings: config.Settings,
        *,
        allocation: str = "contiguous",
        policy_attrs: Iterable[str] | None = None,
        encoder: Encoder | str | None = None,
        chunk_size: int = 1000,
        chunk_overlap: int = 100,
        collection: str = "permrag",
        index: str = "FLAT",
        consistency: str = "Bounded",
        analyzer: str | dict[str, Any] | None = None,
        catalog_only: bool = False,
        planner: Planner | None = None,
        stale_ingest_after: float = 3600.0,
        max_document_chars: int = MAX_DOCUMENT_CHARS,
    ) -> None:
        self.settings = settings
        self._stale_ingest_after = stale_ingest_after
        self._max_document_chars = max_document_chars
        self.last_repair: RepairReport | None = None
        self.planner = planner
        self._allocation = allocation
        self._policy_attrs = policy_attrs
        self._encoder_spec = encoder
        self._encoder: Encoder | None = None
        if chunk_size > 16_000:
            raise ConfigError("chunk_size is at most 16000 characters (Milvus VARCHAR holds 65535 bytes)")
        self.chunker = Chunker(chunk_size, chunk_overlap)
        self.catalog_only = catalog_only
        self.store: MilvusStore | None = (
            None if catalog_only else MilvusStore(
                settings.milvus_uri,
                token=settings.milvus_token,
                collection=collection,
                index=index,
                consistency=consistency,
                analyzer=analyzer,
            )
        )
        self._engine: Any = None
        self.policy: Policy = None  # type: ignore[assignment]
        self.catalog: Catalog = None  # type: ignore[assignment]
        self.compiler: Compiler = None  # type: ignore[assignment]
        self.stats: Counter = Counter()
        self.audit = True
        self._plans: dict[tuple, tuple[FrozenBitMap, Plan]] = {}
        self._write_lock = threading.RLock()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        database_url: str | None = None,
        milvus_uri: str | None = None,
        milvus_token: str | None = None,
        create: bool = True,
        **options: Any,
    ) -> "PermRAG":
        """Open (creating if needed) the store under ``home``.

        ``database_url`` moves the catalog and policy to any SQLAlchemy URL,
        ``milvus_uri`` (and ``milvus_token``) the vectors to a Milvus server.
        ``options`` are the constructor's: ``encoder`` (an encoder object, a
        sentence-transformers model name or path, or ``"hash"`` for no model;
        default the packaged all-MiniLM-L6-v2), ``chunk_size``,
        ``chunk_overlap``, ``collection``, ``index`` (FLAT, HNSW, IVF_FLAT),
        ``consistency``, ``analyzer`` (BM25 text analysis: ``"standard"``,
        ``"jieba"`` for Chinese, ``"english"`` or Milvus analyzer params),
        ``allocation``, ``policy_attrs``, ``planner``, ``max_document_chars``,
        ``stale_ingest_after`` (seconds before another host's unfinished batch
        counts as crashed) and ``catalog_only`` (rows and permissions without
        a vector store).
        Milvus is connected on first use, so opening is cheap.
        """
        settings = config.resolve(home, database_url, milvus_uri, milvus_token)
        config.ensure_home(settings, create=create)
        rag = cls(settings, **options)
        rag._connect()
        rag._repair_on_open()
        return rag

    def _repair_on_open(self) -> None:
        self.last_repair = None
        if not self.catalog.dead_ingests(self._stale_ingest_after) and not self.catalog.by_state("deleted"):
            return
        try:
            self.last_repair = self.reconcile()
        except BackendError as exc:
            # What is left to repair is invisible (in no bitmap); it waits for
            # the next open or rag.reconcile().
            log.warning("reconcile deferred, Milvus unreachable: %s", exc)

    def _connect(self) -> None:
        self._engine = db.make_engine(self.settings.database_url)
        db.init_schema(self._engine)
        self.catalog = Catalog(self._engine, allocation=self._allocation, policy_attrs=self._policy_attrs)
        self.policy = Policy(self._engine)
        self.compiler = Compiler(self.catalog, self.policy)
        try:
            self.catalog.load()
            self.policy.load()
        except SQLAlchemyError as exc:
            raise ConfigError(f"cannot read the permrag database: {exc}") from exc

    def reconcile(self, *, full: bool = False) -> RepairReport:
        """Bring catalog and Milvus back in step after a crash; returns what was repaired.

        Batches whose writer died between prepare and publish are deleted from
        Milvus and then from the catalog; rows retired but not yet purged are
        deleted from Milvus and purged. ``full`` also lists every row ID in
        Milvus: IDs the catalog does not hold live (or in a batch still being
        written) are deleted, and live rows Milvus lacks are reported (they
        need ingesting again). Safe to run while other processes work: a
        batch whose writer still runs is left alone. :meth:`open` runs the
        cheap part whenever there is something to repair.
        """
        report = RepairReport()
        with self._write_lock:
            dead = self.catalog.dead_ingests(self._stale_ingest_after)
            retired = [r.row_id for r in self.catalog.by_state("deleted")]
            store = None
            if self.store is not None and (dead or retired or full) and self.store.exists():
                store = self.store
                store.load()
            for ingest_id, ids in dead:
                if store is not None:
                    store.delete(ids)
                self.catalog.drop_pending(ids, ingest_id)
                report.pending_removed += len(ids)
            if retired:
                if store is not None:
                    store.delete(retired)
                self.catalog.purge(retired)
                report.deleted_purged = len(retired)
            if full and store is not None:
                self.catalog.load()
                have = BitMap(store.all_ids())
                live = self.catalog.live_ids()
                orphans = have - live - self.catalog.pending_ids()
                if orphans:
                    store.delete(list(orphans))
                report.orphans_removed = len(orphans)
                report.missing = list(live - have)
            if report.repaired and store is not None:
                store.flush()
        if report.repaired or report.missing:
            log.warning("reconcile: %s", report.describe())
        return report

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> "PermRAG":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ versions
    @property
    def policy_version(self) -> int:
        return self.policy.version

    @property
    def catalog_version(self) -> int:
        return self.catalog.version

    def sync(self) -> bool:
        """Reload what another process changed; True if anything was reloaded.

        One small query; the search path calls it before every query so that a
        revoke committed anywhere holds for the next search everywhere.
        """
        try:
            with self._engine.connect() as conn:
                counters = db.read_counters(conn)
        except SQLAlchemyError as exc:
            raise BackendError(f"cannot read the policy version: {exc}") from exc
        changed = False
        if counters["catalog_version"] != self.catalog.version:
            self.catalog.load()
            self.compiler.clear()
            changed = True
        if counters["policy_version"] != self.policy.version:
            changed = self.policy.load(if_changed=True) or changed
        return changed

    # ------------------------------------------------------------------ rows
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = resolve_encoder(self._encoder_spec)
        return self._encoder

    def _encode(self, texts: list[str]) -> np.ndarray:
        """The encoder's vectors, checked: one row per text, the encoder's dimension, finite."""
        enc = self.encoder
        try:
            vectors = np.asarray(enc.encode(texts), dtype=np.float32)
        except PermragError:
            raise
        except Exception as exc:  # a user-supplied encoder may raise anything
            raise ConfigError(f"the encoder failed: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
        if vectors.shape != (len(texts), enc.dim):
            raise ConfigError(f"the encoder returned vectors of shape {tuple(vectors.shape)}, expected ({len(texts)}, {enc.dim})")
        if not np.isfinite(vectors).all():
            raise ConfigError("the encoder returned NaN or infinite values")
        return vectors

    def check_vectors(self, vectors: Any, n: int) -> np.ndarray:
        """Caller-supplied query vectors as float32, checked: ``n`` finite rows of the encoder's dimension."""
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.shape != (n, self.encoder.dim) or not np.isfinite(arr).all():
            raise PermragError(f"vectors must be finite, of shape ({n}, {self.encoder.dim}), not {tuple(arr.shape)}")
        return arr

    def check_tenant_known(self, tenant: str) -> None:
        """Raise :class:`UnknownTenantError` for a tenant with neither rows nor policy."""
        if not self.catalog.has_tenant(tenant) and not self.policy.has_tenant(tenant):
            raise UnknownTenantError(f"unknown tenant {tenant!r}: it has no rows and no policy")

    def _store(self) -> MilvusStore:
        if self.store is None:
            raise ConfigError("this PermRAG was opened with catalog_only=True: there is no vector store")
        self.store.ensure_collection(self.encoder.dim)
        return self.store

    def add_documents(
        self,
        docs: Sequence[Mapping[str, Any]],
        *,
        tenant: str | None = None,
        replace: bool = False,
        batch_size: int = 4096,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[int]:
        """Ingest documents; returns the row IDs allocated, in order.

        Each doc: ``external_id``, ``text``, optional ``tenant``, ``attrs``,
        ``parent`` and ``derived_from``. Long texts are split into chunks
        ``<external_id>#<n>`` whose parent is the document. Every doc is
        validated before anything is written; then batches of ``batch_size``
        rows are written to the catalog (pending), Milvus, and published — a
        failure leaves no visible half-written row. ``replace`` first deletes
        rows (and chunks) with the same external ids. ``progress(done, total)``
        is called after every batch.
        """
        specs, texts = self._prepare_specs(docs, tenant)
        if replace:
            by_tenant: dict[str, list[str]] = {}
            for d in docs:
                by_tenant.setdefault(d.get("tenant") or tenant or DEFAULT_TENANT, []).append(d["external_id"])
            for t, ids in by_tenant.items():
                self.delete(ids, tenant=t)
        ids: list[int] = []
        with self._write_lock:
            self.sync()
            hint = self.catalog.size_hint(specs)
            for start in range(0, len(specs), batch_size):
                ids.extend(self._ingest_batch(specs[start : start + batch_size], texts[start : start + batch_size], hint))
                if progress is not None:
                    progress(min(start + batch_size, len(specs)), len(specs))
            if self.store is not None and ids:
                # Sealed segments score BM25 with segment-wide statistics; rows
                # left in Milvus Lite's memtable are scored with statistics of
                # the rows that pass the filter, so one caller's ranking would
                # depend on the filter's form. Flush so it never does.
                self.store.flush()
        return ids

    def _prepare_specs(self, docs: Sequence[Mapping[str, Any]], tenant: str | None) -> tuple[list[RowSpec], list[str]]:
        if isinstance(docs, Mapping) or isinstance(docs, str):
            raise CatalogError("add_documents takes a list of documents")
        default_tenant = check_tenant(tenant) if tenant is not None else DEFAULT_TENANT
        specs: list[RowSpec] = []
        texts: list[str] = []
        for d in docs:
            spec = row_spec(d, default_tenant)
            text = d.get("text")
            if self.catalog_only:
                specs.append(spec)
                texts.append("")
                continue
            if not isinstance(text, str) or not text.strip():
                raise CatalogError(f"document {spec.external_id!r} has no text")
            if len(text) > self._max_document_chars:
                raise CatalogError(
                    f"document {spec.external_id!r} has {len(text):,} characters; the limit is "
                    f"{self._max_document_chars:,} (max_document_chars): split it first"
                )
            pieces = self.chunker.split(text)
            if len(pieces) == 1:
                specs.append(spec)
                texts.append(pieces[0])
            else:
                for n, piece in enumerate(pieces):
                    specs.append(replace(spec, external_id=f"{spec.external_id}#{n}", parent=spec.external_id))
                    texts.append(piece)
        for spec, text in zip(specs, texts):
            if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
                raise CatalogError(f"chunk {spec.external_id!r} is over {MAX_TEXT_BYTES} bytes; lower chunk_size")
        seen: set[tuple[str, str]] = set()
        for s in specs:
            if (s.tenant, s.external_id) in seen:
                raise CatalogError(f"external id {s.external_id!r} appears twice in tenant {s.tenant!r}")
            seen.add((s.tenant, s.external_id))
        return specs, texts

    def _ingest_batch(self, specs: list[RowSpec], texts: list[str], hint: dict) -> list[int]:
        if self.catalog_only:
            ids, changes = self.catalog.add(specs, hint)
            self.compiler.on_ingest(changes)
            return ids
        store = self._store()
        vectors = self._encode(texts)
        batch = self.catalog.prepare(specs, hint)
        rows = [
            {"row_id": r.row_id, "tenant": r.tenant, "vclass": r.vclass, "text": t, "dense": v.tolist()}
            for r, t, v in zip(batch.records, texts, vectors)
        ]
        try:
            store.insert(rows)
            changes = self.catalog.publish(batch)
        except BaseException:
            # Milvus may hold some of the batch (an insert can fail after
            # landing): take them out before the catalog forgets the IDs. If
            # that fails too, the batch is left to the next reconcile.
            try:
                store.delete(batch.row_ids)
            except BaseException:
                self.catalog.abandon(batch)
                raise
            self.catalog.abort(batch)
            raise
        self.compiler.on_ingest(changes)
        self._plans.clear()
        return batch.row_ids

    def delete(self, external_ids: Sequence[str], *, tenant: str = DEFAULT_TENANT) -> int:
        """Delete rows (and the chunks of documents) by external id; returns how many rows.

        Rows leave every bitmap first (so they are invisible at once), then
        Milvus, then the catalog.
        """
        if isinstance(external_ids, str):
            external_ids = [external_ids]
        with self._write_lock:
            recs = self.catalog.retire(tenant, list(external_ids))
            self.compiler.clear()
            self._plans.clear()
            if not recs:
                return 0
            ids = [r.row_id for r in recs]
            if self.store is not None and self.store.exists():
                self._store().delete(ids)
            self.catalog.purge(ids)
        return len(recs)

    def rows(self, row_ids: Iterable[int]) -> list[RowRecord]:
        """Catalog records of ``row_ids``, in order."""
        return self.catalog.rows(row_ids)

    def row(self, external_id: str, tenant: str = DEFAULT_TENANT) -> RowRecord:
        return self.catalog.by_external_id(external_id, tenant)

    # ------------------------------------------------------------------ permissions
    def visible(self, user: str, tenant: str = DEFAULT_TENANT) -> FrozenBitMap:
        """Row IDs ``user`` may read in ``tenant`` (empty for unknown users)."""
        if not isinstance(user, str) or not isinstance(tenant, str):
            raise PermragError("user and tenant must be strings")
        return self.compiler.visible(user, tenant)

    def snapshot(self, users: str | Sequence[str], tenant: str = DEFAULT_TENANT) -> tuple[int, list[FrozenBitMap]]:
        """The policy version and the bitmaps of ``users`` under exactly that version.

        Taken under the policy lock, which every policy change holds until the
        caches it invalidates are gone: a change made by another thread is
        either wholly before the snapshot or wholly after it.
        """
        names = [users] if isinstance(users, str) else list(users)
        with self.policy.lock:
            return self.policy.version, [self.visible(u, tenant) for u in names]

    def can_read(self, user: str, external_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        return self.row(external_id, tenant).row_id in self.visible(user, tenant)

    def explain(self, user: str, external_id: str, tenant: str = DEFAULT_TENANT) -> Explanation:
        """Whether ``user`` may read the row, and the role path and rule that decide it."""
        return explain_row(self.policy, self.catalog, user, self.row(external_id, tenant))

    def enforcer(self) -> Any:
        """A casbin ``Enforcer`` over the stored rules (for cross-checks and tools)."""
        from .enforcer import build_enforcer

        return build_enforcer(self._engine)

    # ------------------------------------------------------------------ search
    def plan(self, user: str, tenant: str = DEFAULT_TENANT) -> Plan:
        """The filter plan a search by ``user`` in ``tenant`` would use."""
        return self._plan(self.visible(user, tenant), tenant)

    def _planner(self) -> Planner:
        if self.planner is not None:
            return self.planner
        store = self.store
        return Planner(SERVER if store is not None and store.kind == "server" else LITE)

    def _plan(self, visible: FrozenBitMap, tenant: str) -> Plan:
        key = (tenant, id(visible), self.catalog.version)
        hit = self._plans.get(key)
        if hit is not None and hit[0] is visible:
            return hit[1]
        idx = self.catalog.tenant(tenant)
        plan = self._planner().plan(visible, idx.rows, tenant, idx.classes)
        if len(self._plans) > 4096:
            self._plans.clear()
        self._plans[key] = (visible, plan)
        return plan

    def search(
        self,
        query: str,
        *,
        user: str,
        tenant: str = DEFAULT_TENANT,
        k: int = 10,
        mode: str = "hybrid",
        fusion: str = "rrf",
        weights: tuple[float, float] = (0.5, 0.5),
    ) -> Hits:
        """The top ``k`` rows ``user`` may read, best first.

        ``mode``: ``hybrid`` (dense + BM25, each list verified, then fused),
        ``dense`` or ``keyword``; ``fusion``: ``rrf`` (reciprocal rank, k=60)
        or ``weighted`` (min-max normalised scores, ``weights`` = dense,
        keyword); ties go to the better dense rank.
        Every hit was verified against the caller's bitmap and carries the
        policy version it was computed under.
        """
        return self.search_many([query], user=user, tenant=tenant, k=k, mode=mode, fusion=fusion, weights=weights)[0]

    def search_many(
        self,
        queries: Sequence[str],
        *,
        user: str,
        tenant: str = DEFAULT_TENANT,
        k: int = 10,
        mode: str = "hybrid",
        fusion: str = "rrf",
        weights: tuple[float, float] = (0.5, 0.5),
        vectors: np.ndarray | None = None,
    ) -> list[Hits]:
        """:meth:`search` for several queries of one caller in one Milvus call."""
        _check_search_args(queries, user, tenant, k, mode, fusion, weights)
        self.sync()
        self.check_tenant_known(tenant)
        version, (visible,) = self.snapshot(user, tenant)
        plan = self._plan(visible, tenant)
        self.stats["searches"] += len(queries)
        self.stats[f"plan:{plan.kind}"] += 1
        if not visible:
            return [Hits((), version) for _ in queries]
        store = self._store()
        store.capabilities.require(mode)
        if mode != "keyword" and vectors is None:
            vectors = self._encode(list(queries))
        elif vectors is not None:
            vectors = self.check_vectors(vectors, len(queries))
        raw = Retrieval(store, self.stats).run(plan, visible, mode, vectors, list(queries), k, fusion, weights)
        hits = [self._hits(r, version) for r in raw]
        if self.audit:
            self._audit(
                "search",
                user,
                tenant,
                version,
                {"plan": plan.kind, "mode": mode, "k": k, "queries": [q[:200] for q in queries], "rows": [[h.row_id for h in hs] for hs in hits]},
            )
        return hits

    def retrieve(self, query: str, *, user: str, tenant: str = DEFAULT_TENANT, k: int = 5, **options: Any) -> list[Hit]:
        """Multi-stage retrieval (rerank, parent merge, RAG-Fusion): see :mod:`permrag.pipeline`."""
        from .pipeline import retrieve

        return retrieve(self, query, user=user, tenant=tenant, k=k, **options)

    def as_retriever(self, *, user: str, tenant: str = DEFAULT_TENANT, k: int = 4, **options: Any) -> Any:
        """A LangChain retriever bound to ``user`` in ``tenant``."""
        from .integrations.langchain import PermissionedRetriever

        return PermissionedRetriever(rag=self, user=user, tenant=tenant, k=k, **options)

    # ------------------------------------------------------------------ recommendation
    def recommend(self, vectors: np.ndarray, *, users: Sequence[str], tenant: str = DEFAULT_TENANT, k: int = 10) -> dict[str, list[Hit]]:
        """Top-k rows per user's vector; users with equal bitmaps share one batched search."""
        from .recommend import recommend

        return recommend(self, vectors, users, tenant=tenant, k=k)

    def similar(self, external_id: str, *, user: str, tenant: str = DEFAULT_TENANT, k: int = 10) -> list[Hit]:
        """Rows like ``external_id``; refuses a seed row the caller may not read."""
        from .recommend import similar

        return similar(self, external_id, user=user, tenant=tenant, k=k)

    def add_generated(
        self,
        text: str,
        *,
        sources: Sequence[str],
        user: str,
        tenant: str = DEFAULT_TENANT,
        external_id: str | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """Store generated text visible exactly to those who may read all its sources."""
        from .recommend import add_generated

        return add_generated(self, text, sources=sources, user=user, tenant=tenant, external_id=external_id, attrs=attrs)

    # ------------------------------------------------------------------ audit
    def _audit(self, event: str, user: str | None, tenant: str | None, version: int, detail: dict) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    db.audit.insert().values(
                        ts=time.time(), event=event, user=user, tenant=tenant, policy_version=version, detail=json.dumps(detail)
                    )
                )
        except SQLAlchemyError as exc:
            raise BackendError(f"cannot write the audit log: {exc}") from exc

    def audit_log(self, *, user: str | None = None, since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Logged searches, newest first: time, user, tenant, policy version, plan kind, returned row IDs."""
        from sqlalchemy import select

        a = db.audit.c
        q = select(db.audit).order_by(a.id.desc()).limit(limit)
        if user is not None:
            q = q.where(a.user == user)
        if since is not None:
            q = q.where(a.ts >= since)
        with self._engine.connect() as conn:
            out = []
            for r in conn.execute(q):
                d = json.loads(r.detail or "{}")
                out.append({"time": r.ts, "event": r.event, "user": r.user, "tenant": r.tenant, "policy_version": r.policy_version, **d})
        return out

    def who_can_see(self, external_id: str, tenant: str = DEFAULT_TENANT) -> dict[str, list[str]]:
        """The users and roles that may read a row."""
        rid = self.row(external_id, tenant).row_id
        tp = self.policy.tenant(tenant)
        users = sorted(u for u in tp.users() if rid in self.visible(u, tenant))
        roles = sorted(r for r in tp.roles if rid in self.visible(r, tenant))
        return {"users": users, "roles": roles}

    def _hits(self, raw: list, version: int) -> Hits:
        if not raw:
            return Hits((), version)
        recs = {r.row_id: r for r in self.catalog.rows_if_live(h.row_id for h in raw)}
        return Hits([
            Hit(h.row_id, recs[h.row_id].external_id, h.text, h.score, dict(recs[h.row_id].attrs), recs[h.row_id].tenant, recs[h.row_id].parent, version)
            for h in raw
            if h.row_id in recs
        ], version)


def _check_search_args(queries, user, tenant, k, mode, fusion, weights) -> None:
    if not isinstance(user, str) or not user:
        raise PermragError("user must be a non-empty string")
    if not isinstance(tenant, str) or not tenant:
        raise PermragError("tenant must be a non-empty string")
    if isinstance(queries, str) or not queries:
        raise PermragError("give at least one query")
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise PermragError("a query must be a non-empty string")
        if len(q) > MAX_QUERY_CHARS:
            raise PermragError(f"a query is at most {MAX_QUERY_CHARS} characters")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_LIMIT:
        raise PermragError(f"k must be an integer from 1 to {MAX_LIMIT}, not {k!r}")
    if mode not in MODES:
        raise PermragError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if fusion not in FUSIONS:
        raise PermragError(f"fusion must be 'rrf' or 'weighted', not {fusion!r}")
    if len(weights) != 2 or any(not isinstance(w, (int, float)) or w < 0 for w in weights):
        raise PermragError("weights must be two non-negative numbers (dense, keyword)")
