"""The Milvus side: schema, writes, dense and BM25 search (hybrid is fused
from the two by :mod:`permrag.retrieval`).

One collection: ``row_id`` (INT64 primary key, permrag's row ID), ``tenant``
(VARCHAR partition key), ``vclass`` (INT64 visibility class), ``text`` (VARCHAR; with an analyzer feeding a BM25
function into ``sparse`` where the backend has BM25) and ``dense`` (the
encoder's vector, cosine).

Capabilities are detected, not assumed: Milvus Lite (a local ``.db`` file) and
servers ≥ 2.5 have BM25; a 2.3 server has not, and asking for keyword or
hybrid search there raises :class:`UnsupportedError`.

Consistency is ``Bounded`` by default: a Strong search on a 2.3 server waits
for the next time tick (measured: 200 ms against 21 ms). A row ingested a
moment ago may then be missing from a search (recall, never a leak: rows are
only in bitmaps once published); tests that need fresh rows ask for Strong. Every
pymilvus failure becomes :class:`BackendError`; nothing here ever returns rows
it could not fetch under the filter it was given.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import BackendError, ConfigError, UnsupportedError

log = logging.getLogger(__name__)

MAX_TEXT_BYTES = 65_535
MAX_LIMIT = 16_384  # Milvus' largest topk
RRF_K = 60  # reciprocal-rank constant of hybrid fusion (permrag.retrieval.fuse)


@dataclass(frozen=True)
class Capabilities:
    """What the connected Milvus can do."""

    kind: str  # "lite" or "server"
    version: tuple[int, int, int]
    bm25: bool
    templates: bool
    membership_match: bool

    def require(self, mode: str) -> None:
        if mode in ("keyword", "hybrid") and not self.bm25:
            raise UnsupportedError(
                f"mode {mode!r} needs BM25, which Milvus {self.kind} {'.'.join(map(str, self.version))} lacks "
                "(Milvus Lite and servers >= 2.5 have it); use mode='dense'"
            )


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)


def detect(kind: str, version_text: str) -> Capabilities:
    v = parse_version(version_text)
    if kind == "lite":
        return Capabilities("lite", v, bm25=True, templates=False, membership_match=False)
    return Capabilities(
        "server",
        v,
        bm25=v >= (2, 5, 0),
        templates=v >= (2, 5, 0),
        # membership_match over a roaring blob is newer still; used only when
        # a server reports it, which none we can run here does.
        membership_match=False,
    )


def analyzer_params(analyzer: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Milvus analyzer parameters for the BM25 text field.

    ``None`` / ``"standard"``: Milvus' default; ``"jieba"``: Chinese word
    segmentation (Milvus Lite needs the ``jieba`` package); ``"english"``:
    the English analyzer (stemming, stop words) where the backend has it; a
    dict is passed to Milvus as it is. Fixed when the collection is created.
    """
    if analyzer is None or analyzer == "standard":
        return None
    if isinstance(analyzer, dict):
        return dict(analyzer)
    if analyzer == "jieba":
        return {"tokenizer": "jieba"}
    if analyzer == "english":
        return {"type": "english"}
    raise ConfigError(f"analyzer {analyzer!r} must be 'standard', 'jieba', 'english' or a dict of Milvus analyzer params")


@dataclass(frozen=True)
class RawHit:
    row_id: int
    score: float
    text: str


def _wrap(what: str, exc: Exception) -> BackendError:
    msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return BackendError(f"Milvus {what} failed: {msg}")


_CONNECTION_LOST = ("connect", "unavailable", "deadline", "channel", "closed", "not ready")


def _is_connection_error(exc: Exception) -> bool:
    text = f"{exc.__class__.__name__} {exc}".lower()
    return getattr(exc, "code", None) == 2 or any(w in text for w in _CONNECTION_LOST)


class MilvusStore:
    """A permrag collection in one Milvus (Lite file or server URI)."""

    def __init__(
        self,
        uri: str,
        *,
        token: str | None = None,
        collection: str = "permrag",
        index: str = "FLAT",
        consistency: str = "Bounded",
        analyzer: str | dict[str, Any] | None = None,
    ) -> None:
        if consistency not in ("Strong", "Bounded", "Session", "Eventually"):
            raise ConfigError(f"consistency {consistency!r} must be Strong, Bounded, Session or Eventually")
        self.consistency = consistency
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", collection):
            raise ConfigError(f"collection name {collection!r} must be letters, digits and '_'")
        if index not in ("FLAT", "HNSW", "IVF_FLAT"):
            raise ConfigError(f"index {index!r} must be FLAT, HNSW or IVF_FLAT")
        self.analyzer = analyzer_params(analyzer)
        self.uri = uri
        self.token = token
        self.collection = collection
        self.index = index
        self.kind = "server" if uri.startswith(("http://", "https://", "tcp://", "grpc://")) else "lite"
        self._client: Any = None
        self._caps: Capabilities | None = None
        self._dim: int | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ connection
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from pymilvus import MilvusClient

                    try:
                        kwargs: dict[str, Any] = {"uri": self.uri}
                        if self.token:
                            kwargs["token"] = self.token
                        if self.kind == "server":
                            kwargs["timeout"] = 10
                            # our own channel: pymilvus shares one per address
                            # and does not recover it after a server restart
                            kwargs["dedicated"] = True
                        kwargs["grpc_options"] = {"grpc.use_local_subchannel_pool": 1}
                        self._client = MilvusClient(**kwargs)
                    except Exception as exc:  # pymilvus raises many kinds
                        raise self._fail(f"connection to {self.uri!r}", exc) from exc
        return self._client

    def _fail(self, what: str, exc: Exception) -> BackendError:
        """The error to raise; a lost server connection also drops the client,
        so the next call reconnects (pymilvus does not, after a server restart)."""
        if "not loaded" in str(exc):
            self._dim = None  # the next call loads it again (a restarted server forgets)
        if self.kind == "server" and _is_connection_error(exc):
            with self._lock:
                client, self._client = self._client, None
                self._dim = None
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing a dead connection is not an error
                    log.debug("closing Milvus client failed", exc_info=True)
        return _wrap(what, exc)

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            try:
                version = self.client().get_server_version()
            except Exception as exc:
                raise self._fail("version check", exc) from exc
            self._caps = detect(self.kind, str(version))
        return self._caps

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # closing a dead connection is not an error
                    log.debug("closing Milvus client failed", exc_info=True)
                self._client = None

    # ------------------------------------------------------------------ schema
    def ensure_collection(self, dim: int) -> None:
        """Create the collection for vectors of ``dim`` or check the existing one."""
        if self._dim == dim:
            return
        c = self.client()
        try:
            if c.has_collection(self.collection):
                have = self._existing_dim()
                if have != dim:
                    raise ConfigError(
                        f"collection {self.collection!r} holds {have}-dim vectors but the encoder makes {dim}-dim ones"
                    )
                c.load_collection(self.collection)
            else:
                self._create(dim)
        except (ConfigError, BackendError):
            raise
        except Exception as exc:
            raise self._fail("collection set-up", exc) from exc
        self._dim = dim

    def load(self) -> None:
        """Load an existing collection (for deletes and queries; no dimension check)."""
        try:
            self.client().load_collection(self.collection)
        except Exception as exc:
            raise self._fail("collection load", exc) from exc

    def exists(self) -> bool:
        try:
            return bool(self.client().has_collection(self.collection))
        except Exception as exc:
            raise self._fail("collection check", exc) from exc

    def _existing_dim(self) -> int:
        info = self.client().describe_collection(self.collection)
        for f in info.get("fields", []):
            if f.get("name") == "dense":
                return int(f.get("params", {}).get("dim"))
        raise ConfigError(f"collection {self.collection!r} exists but is not a permrag collection")

    def _create(self, dim: int) -> None:
        from pymilvus import DataType, Function, FunctionType

        c = self.client()
        bm25 = self.capabilities.bm25
        s = c.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("row_id", DataType.INT64, is_primary=True)
        s.add_field("tenant", DataType.VARCHAR, max_length=256, is_partition_key=True)
        s.add_field("vclass", DataType.INT64)
        text_kwargs: dict[str, Any] = {"enable_analyzer": bm25}
        if bm25 and self.analyzer is not None:
            text_kwargs["analyzer_params"] = self.analyzer
        s.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, **text_kwargs)
        s.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
        ip = c.prepare_index_params()
        params: dict[str, Any] = {}
        if self.index == "HNSW":
            params = {"M": 16, "efConstruction": 200}
        elif self.index == "IVF_FLAT":
            params = {"nlist": 128}
        ip.add_index("dense", index_type=self.index, metric_type="COSINE", params=params)
        if bm25:
            s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            s.add_function(
                Function(name="text_bm25", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["sparse"])
            )
            ip.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25", params={"inverted_index_algo": "TAAT_NAIVE"})
        kwargs: dict[str, Any] = {"schema": s, "index_params": ip, "consistency_level": self.consistency}
        c.create_collection(self.collection, **kwargs)
        c.load_collection(self.collection)

    def drop(self) -> None:
        try:
            if self.client().has_collection(self.collection):
                self.client().drop_collection(self.collection)
        except Exception as exc:
            raise self._fail("drop", exc) from exc
        self._dim = None

    # ------------------------------------------------------------------ writes
    def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        try:
            for i in range(0, len(rows), 1000):
                self.client().insert(self.collection, list(rows[i : i + 1000]))
        except Exception as exc:
            raise self._fail("insert", exc) from exc

    def delete(self, row_ids: Sequence[int]) -> None:
        ids = [int(r) for r in row_ids]
        try:
            for i in range(0, len(ids), 1000):
                self.client().delete(self.collection, ids=ids[i : i + 1000])
        except Exception as exc:
            raise self._fail("delete", exc) from exc

    def present(self, row_ids: Sequence[int]) -> set[int]:
        """Which of ``row_ids`` the collection holds."""
        ids = [int(r) for r in row_ids]
        out: set[int] = set()
        try:
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                res = self.client().query(
                    self.collection, filter=f"row_id in {chunk}", output_fields=["row_id"], consistency_level="Strong"
                )
                out.update(int(r["row_id"]) for r in res)
        except Exception as exc:
            raise self._fail("query", exc) from exc
        return out

    def all_ids(self, tenant_expr: str = "") -> set[int]:
        """Every row ID (for reconciliation), via an iterator."""
        out: set[int] = set()
        try:
            it = self.client().query_iterator(
                self.collection, filter=tenant_expr or "row_id >= 0", output_fields=["row_id"], batch_size=1000, consistency_level="Strong"
            )
            while True:
                batch = it.next()
                if not batch:
                    it.close()
                    break
                out.update(int(r["row_id"]) for r in batch)
        except Exception as exc:
            raise self._fail("query", exc) from exc
        return out

    def flush(self) -> None:
        try:
            self.client().flush(self.collection)
        except Exception as exc:
            raise self._fail("flush", exc) from exc

    # ------------------------------------------------------------------ search
    def search(
        self,
        mode: str,
        *,
        vectors: np.ndarray | None,
        texts: Sequence[str] | None,
        expr: str,
        limit: int,
    ) -> list[list[RawHit]]:
        """Top ``limit`` rows per query under ``expr``, best first; ``mode`` is
        ``dense`` or ``keyword`` (hybrid is fused by permrag.retrieval)."""
        try:
            return self._search(mode, vectors, texts, expr, limit)
        except BackendError as exc:
            if "not loaded" not in str(exc):
                raise
        # A restarted server comes back with the collection released: load it
        # and ask once more.
        self.load()
        return self._search(mode, vectors, texts, expr, limit)

    def _search(self, mode, vectors, texts, expr, limit) -> list[list[RawHit]]:
        self.capabilities.require(mode)
        limit = max(1, min(limit, MAX_LIMIT))
        c = self.client()
        out_fields = ["row_id", "text"]
        try:
            if mode == "dense":
                assert vectors is not None
                res = c.search(
                    self.collection,
                    data=[v.tolist() for v in vectors],
                    anns_field="dense",
                    limit=limit,
                    filter=expr,
                    output_fields=out_fields,
                    search_params=self._dense_params(limit),
                    consistency_level=self.consistency,
                )
                return [[self._hit(h, 1.0) for h in hits] for hits in res]
            if mode == "keyword":
                assert texts is not None
                res = c.search(
                    self.collection,
                    data=list(texts),
                    anns_field="sparse",
                    limit=limit,
                    filter=expr,
                    output_fields=out_fields,
                    search_params={"metric_type": "BM25"},
                    consistency_level=self.consistency,
                )
                sign = -1.0 if self.kind == "lite" else 1.0  # Lite returns negated BM25 scores
                return [[self._hit(h, sign) for h in hits] for hits in res]
            raise ConfigError(f"MilvusStore.search takes mode 'dense' or 'keyword', not {mode!r}")
        except (BackendError, UnsupportedError, ConfigError):
            raise
        except Exception as exc:
            raise self._fail("search", exc) from exc

    def _dense_params(self, limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {"metric_type": "COSINE"}
        if self.index == "HNSW":
            params["params"] = {"ef": max(64, 2 * limit)}
        elif self.index == "IVF_FLAT":
            params["params"] = {"nprobe": 32}
        return params

    @staticmethod
    def _hit(h: Any, sign: float) -> RawHit:
        entity = h.get("entity", {}) or {}
        rid = entity.get("row_id", h.get("id", h.get("row_id")))
        return RawHit(int(rid), sign * float(h["distance"]), entity.get("text", ""))
