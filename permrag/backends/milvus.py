"""Milvus behind the :class:`~permrag.backends.base.SearchBackend` protocol —
with root.py and layout.py, the only code that calls pymilvus.

**Layout.** A store owns a *root* collection (default ``permrag``) holding
its identity, and one collection per tenant, ``<root>_t<n>`` (``n`` is the
tenant's number in the catalog). A tenant's collection holds ``row_id``
(INT64 primary key, permrag's row ID), ``tenant``, ``external_id``,
``vclass`` (visibility class), ``text`` (with an analyzer feeding a BM25
function into ``sparse`` where the backend has BM25) and ``dense`` (the
encoder's vector, cosine). One collection per tenant means no tenant's BM25
statistics (IDF, average length) ever include another tenant's rows, a
tenant is pinned without any filter, and a filter bug cannot cross tenants.
Inside it, rows may live in partitions by visibility-class group (layout.py).

**Binding.** The root holds the store id of the catalog that created it; opened
from another catalog it raises :class:`StoreMismatchError` — two homes on one
Milvus, or one home on the wrong database, never share rows silently.

Capabilities are detected: Milvus Lite and servers ≥ 2.5 have BM25, a 2.3 server
has not (keyword or hybrid search there raises :class:`UnsupportedError`).
Consistency is ``Bounded`` by default. Every pymilvus failure becomes :class:`BackendError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

from ..config import milvus_kind
from ..errors import BackendError, ConfigError, StoreLockedError, StoreMismatchError, UnsupportedError
from ..placement.layout import DEFAULT_GROUPS, Grouping, Partitions, by_partition
from .base import MAX_LIMIT, Capabilities, RawHit, detect, raw_hit
from .collection_check import collection_dim
from .lite_files import closed as lite_closed
from .lite_files import connect as lite_connect
from .lite_files import folder_lock as lite_lock
from .lite_files import load_collection, load_when_ready
from .root import create_root, read_owner
from .schema import analyzer_params, dense_search_params, tenant_schema

log = logging.getLogger(__name__)

ID_CHUNK = 1000  # IDs per `row_id in [...]` query
_CONNECTION_LOST = ("connect", "unavailable", "deadline", "channel", "closed", "not ready")


def _wrap(what: str, exc: Exception) -> BackendError:
    if isinstance(exc, StoreLockedError):  # it says what holds the folder and what to do: kept as it is
        return exc
    msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return BackendError(f"Milvus {what} failed: {msg}")


def _is_connection_error(exc: Exception) -> bool:
    text = f"{exc.__class__.__name__} {exc}".lower()
    return getattr(exc, "code", None) == 2 or any(w in text for w in _CONNECTION_LOST)


class MilvusBackend:
    """One store's collections in one Milvus (a Lite file or a server URI)."""

    def __init__(
        self,
        uri: str,
        *,
        token: str | None = None,
        collection: str = "permrag",
        index: str = "FLAT",
        consistency: str = "Bounded",
        analyzer: str | dict[str, Any] | None = None,
        groups: int | None = None,
    ) -> None:
        if consistency not in ("Strong", "Bounded", "Session", "Eventually"):
            raise ConfigError(f"consistency {consistency!r} must be Strong, Bounded, Session or Eventually")
        if index not in ("FLAT", "HNSW", "IVF_FLAT"):
            raise ConfigError(f"index {index!r} must be FLAT, HNSW or IVF_FLAT")
        if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or not 0 <= groups <= 4000):
            raise ConfigError(f"groups {groups!r} must be an integer from 0 (one flat partition) to 4000")
        self.kind = milvus_kind(uri)
        if self.kind == "lite" and not uri.endswith(".db"):
            raise ConfigError(f"Milvus URI {uri!r}: a Milvus Lite file must end in .db (or give http://host:port for a server)")
        self.consistency = consistency
        self.analyzer = analyzer_params(analyzer)
        self.uri = uri
        self._lite = uri if self.kind == "lite" else None  # Lite's data folder (lite_files: its lock, its repair)
        self.token = token
        self.collection = collection
        self.index = index
        self.groups = (DEFAULT_GROUPS[self.kind] if index == "FLAT" else 0) if groups is None else groups  # new tenant collections (layout.py); 0: flat
        self._client: Any = None
        self._caps: Capabilities | None = None
        self._ready: dict[int, int] = {}  # tenant number → dim of its loaded collection
        self._parts: dict[int, Partitions] = {}  # tenant number → its collection's partitions and grouping
        self._bound: str | None = None
        self._lock = lite_lock(uri) if self._lite else threading.RLock()  # Lite: one per folder, shared by this process's backends of it

    # ------------------------------------------------------------------ connection
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from pymilvus import MilvusClient

                    kwargs: dict[str, Any] = {"uri": self.uri, "grpc_options": {"grpc.use_local_subchannel_pool": 1}}
                    if self.token:
                        kwargs["token"] = self.token
                    if self.kind == "server":
                        kwargs["timeout"] = 10
                        kwargs["dedicated"] = True  # our own channel: pymilvus shares one per address, not recovered after a restart
                    try:
                        self._client = lite_connect(self.uri, lambda: MilvusClient(**kwargs)) if self._lite else MilvusClient(**kwargs)
                    except Exception as exc:  # pymilvus raises many kinds
                        raise self._fail("connection", exc) from None
        return self._client

    def _fail(self, what: str, exc: Exception) -> BackendError:
        """The error to raise; a lost server connection also drops the client,
        so the next call reconnects (pymilvus does not, after a server restart)."""
        if "not loaded" in str(exc) or "call load()" in str(exc):  # (a server's words; Milvus Lite's)
            self._ready.clear()  # the next call loads again (a restarted server forgets)
        if self.kind == "server" and _is_connection_error(exc):
            with self._lock:
                client, self._client = self._client, None
                self._ready.clear()
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing a dead connection is not an error
                    log.debug("closing Milvus client failed", exc_info=True)
        return _wrap(f"{what} ({self.kind} {self.uri if self.kind == 'lite' else 'server'})", exc)

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            try:
                version = self.client().get_server_version()
            except Exception as exc:
                raise self._fail("version check", exc) from None
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
                self._ready.clear()
                if self._lite:  # the last client of the folder releases it to other processes
                    lite_closed(self._lite)

    # ------------------------------------------------------------------ binding
    def bind(self, store_id: str, *, bound_before: bool) -> None:
        """Check (or create) the root collection: it must belong to ``store_id``.

        ``bound_before``: the catalog was bound to this collection already, so
        a missing root means the wrong Milvus, not a new store.
        """
        if self._bound == store_id:
            return
        with self._lock:
            c = self.client()
            try:
                exists = c.has_collection(self.collection)
            except Exception as exc:
                raise self._fail("collection check", exc) from None
            if not exists:
                if bound_before:
                    raise ConfigError(
                        f"this store's vectors live in collection {self.collection!r}, which the Milvus at {self._where()} "
                        "does not have: check the Milvus URI (or run reconcile --full to see what is missing)"
                    )
                self._create_root(store_id)
            owner = self._root_owner()
            if owner != store_id:
                raise StoreMismatchError(
                    f"Milvus collection {self.collection!r} at {self._where()} belongs to another permrag store "
                    f"({owner}), not to this catalog ({store_id}): each store needs its own collection name, "
                    "or open the catalog that owns it"
                )
            self._bound = store_id

    def _where(self) -> str:
        return self.uri if self.kind == "lite" else "the server"

    def _root_owner(self) -> str:
        try:
            return read_owner(self.client(), self.collection, self._where(), self._lite)
        except StoreMismatchError:
            raise
        except Exception as exc:
            raise self._fail("reading the store identity", exc) from None

    def _create_root(self, store_id: str) -> None:
        try:
            create_root(self.client(), self.collection, store_id, server=self.kind == "server")
        except Exception as exc:
            raise self._fail("creating the store's root collection", exc) from None

    # ------------------------------------------------------------------ tenants
    def name(self, tenant_no: int) -> str:
        return f"{self.collection}_t{int(tenant_no)}"

    def has_tenant(self, tenant_no: int) -> bool:
        """Whether the tenant's collection exists (asked beside a search); under the lock until loaded here (lite_files.folder_lock)."""
        try:  # (the load state, not has_collection: the same answer, and cheaper on a server)
            with nullcontext() if tenant_no in self._ready else self._lock:
                return self.client().get_load_state(self.name(tenant_no))["state"].name != "NotExist"
        except Exception as exc:
            raise self._fail("collection check", exc) from None

    def ensure_tenant(self, tenant_no: int, dim: int) -> None:
        """Create the tenant's collection for ``dim``-dim vectors, or check and load it."""
        if self._ready.get(tenant_no) == dim:
            return
        name = self.name(tenant_no)
        with self._lock:
            c = self.client()
            try:
                if c.has_collection(name):
                    have = self._dim(name)
                    if have != dim:
                        raise ConfigError(f"collection {name!r} holds {have}-dim vectors but the encoder makes {dim}-dim ones")
                    load_collection(c, name, self._lite)
                else:
                    self._create(name, dim)
            except (ConfigError, BackendError):
                raise
            except Exception as exc:
                if not c.has_collection(name):
                    raise self._fail("collection set-up", exc) from None
                # another process is creating it at this moment: use theirs once it loads
                if self._dim(name) != dim:
                    raise ConfigError(f"collection {name!r} holds vectors of another dimension than {dim}") from None
                try:
                    load_when_ready(c, name, self._lite)
                except Exception as again:
                    raise self._fail("loading the collection", again) from None
            self._read_layout(tenant_no)
            self._ready[tenant_no] = dim

    def _dim(self, name: str) -> int:
        """The collection's vector dimension, once its fields are this permrag's (else: permrag upgrade)."""
        return collection_dim(self.client(), name, lambda dim: tenant_schema(self.client(), dim, self.index, self.capabilities.bm25, self.analyzer)[0])

    def _create(self, name: str, dim: int) -> None:
        c = self.client()
        schema, ip = tenant_schema(c, dim, self.index, self.capabilities.bm25, self.analyzer)
        c.create_collection(name, schema=schema, consistency_level=self.consistency)
        if self.groups:  # the layout before the index: no process loads it, or reads its layout, before both
            c.create_partition(name, Grouping(self.groups).marker)
        # sync=False: the collection is empty, nothing to build (pymilvus would poll every 0.5 s)
        c.create_index(name, ip, sync=False)
        load_collection(c, name, self._lite)

    def _read_layout(self, tenant_no: int) -> None:
        self._parts[tenant_no] = Partitions(self.client(), self.name(tenant_no))

    def grouping(self, tenant_no: int) -> Grouping | None:
        """How the tenant's collection groups rows into partitions (None: flat or absent)."""
        if not self._known(tenant_no):
            return None
        if tenant_no not in self._parts:
            self._read_layout(tenant_no)
        return self._parts[tenant_no].grouping

    def _partition_names(self, tenant_no: int, groups: Sequence[int]) -> list[str] | None:
        self.grouping(tenant_no)
        try:
            return self._parts[tenant_no].names(self.client(), groups)
        except Exception as exc:
            raise self._fail("listing partitions", exc) from None

    def _known(self, tenant_no: int) -> bool:
        """Whether the tenant's collection exists, loading it if needed (reads). One thread
        loads at a time: Milvus Lite left a collection loading forever when two loaded it at once."""
        if tenant_no in self._ready:
            return True
        name = self.name(tenant_no)
        with self._lock:
            try:
                c = self.client()
                if tenant_no in self._ready or not c.has_collection(name):
                    return tenant_no in self._ready
                load_collection(c, name, self._lite)
                self._read_layout(tenant_no)
                self._ready[tenant_no] = self._dim(name)
            except (ConfigError, BackendError):
                raise
            except Exception as exc:
                raise self._fail("collection load", exc) from None
        return True

    def insert(self, tenant_no: int, rows: Sequence[dict[str, Any]]) -> None:
        """Write rows (each with its ``vclass``) into their class group's partition."""
        grouping = self.grouping(tenant_no)
        parts = by_partition(grouping, rows) if grouping else {"": list(rows)}
        try:
            for part, members in parts.items():
                if part:
                    self._parts[tenant_no].ensure(self.client(), part, load=self.kind == "server")
                for i in range(0, len(members), 5000):
                    self.client().insert(self.name(tenant_no), list(members[i : i + 5000]), partition_name=part)
        except BackendError:
            raise
        except Exception as exc:
            raise self._fail("insert", exc) from None

    def delete(self, tenant_no: int, row_ids: Sequence[int]) -> None:
        ids = [int(r) for r in row_ids]
        if not ids or not self._known(tenant_no):
            return
        try:
            for i in range(0, len(ids), ID_CHUNK):
                self.client().delete(self.name(tenant_no), ids=ids[i : i + ID_CHUNK])
        except Exception as exc:
            raise self._fail("delete", exc) from None

    def flush(self, tenant_no: int) -> None:
        if not self._known(tenant_no):
            return
        try:
            self.client().flush(self.name(tenant_no))
        except Exception as exc:
            raise self._fail("flush", exc) from None

    # ------------------------------------------------------------------ reads
    def tenant_numbers(self) -> list[int]:
        """Numbers of the tenants that have a collection of this store."""
        prefix = f"{self.collection}_t"
        try:
            with self._lock:  # Milvus Lite opens every collection to list them: never beside a first load
                names = self.client().list_collections()
        except Exception as exc:
            raise self._fail("listing collections", exc) from None
        return sorted(int(n[len(prefix) :]) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit())

    def all_ids(self, tenant_no: int | None = None, expr: str = "", groups: Sequence[int] = ()) -> set[int]:
        """Every row ID of the tenant's collection matching ``expr`` (all by
        default; in the class groups ``groups`` only, if given); without a
        tenant, of every tenant's collection of the store."""
        if tenant_no is None:
            return set().union(*(self.all_ids(no, expr) for no in self.tenant_numbers()))
        if not self._known(tenant_no):
            return set()
        out: set[int] = set()
        try:
            if (parts := self._partition_names(tenant_no, groups)) == []:
                return out
            it = self.client().query_iterator(self.name(tenant_no), filter=expr or "row_id >= 0", output_fields=["row_id"], batch_size=1000, consistency_level="Strong", partition_names=parts)
            while True:
                batch = it.next()
                if not batch:
                    it.close()
                    break
                out.update(int(r["row_id"]) for r in batch)
        except Exception as exc:
            raise self._fail("query", exc) from None
        return out

    def texts(self, tenant_no: int, row_ids: Sequence[int]) -> dict[int, str]:
        return {i: r["text"] for i, r in self.stored(tenant_no, row_ids, ["text"]).items()}

    def stored(self, tenant_no: int, row_ids: Sequence[int], fields: Sequence[str] = ("text", "dense"), *, strong: bool = True) -> dict[int, dict[str, Any]]:
        """``fields`` of the stored rows ``row_ids`` (text, dense vector …), by
        row ID; at the store's search consistency unless ``strong``."""
        ids = sorted({int(r) for r in row_ids})
        if not ids or not self._known(tenant_no):
            return {}
        out: dict[int, dict[str, Any]] = {}
        try:
            level = "Strong" if strong else self.consistency
            for i in range(0, len(ids), ID_CHUNK):
                got = self.client().query(self.name(tenant_no), filter=f"row_id in {ids[i : i + ID_CHUNK]}", output_fields=["row_id", *fields], consistency_level=level)
                out.update((int(g["row_id"]), dict(g)) for g in got)
        except Exception as exc:
            raise self._fail("query", exc) from None
        return out

    def vector(self, tenant_no: int, row_id: int) -> np.ndarray | None:
        if not self._known(tenant_no):
            return None
        try:
            got = self.client().query(self.name(tenant_no), filter=f"row_id == {int(row_id)}", output_fields=["dense"], consistency_level="Strong")
        except Exception as exc:
            raise self._fail("query", exc) from None
        return np.asarray(got[0]["dense"], dtype=np.float32) if got else None

    # ------------------------------------------------------------------ search
    def search(
        self, tenant_no: int, mode: str, *, vectors: np.ndarray | None, texts: Sequence[str] | None, expr: str, limit: int, groups: Sequence[int] = (), admits: float = 1.0
    ) -> list[list[RawHit]]:
        """Top ``limit`` rows per query under ``expr`` (in the class groups
        ``groups`` only, if given), best first; ``mode`` is ``dense`` or
        ``keyword`` (hybrid is fused by permrag.search.fusion); ``admits``: the
        share of the tenant's rows the caller may see (an ANN index searches wider)."""
        self.capabilities.require(mode)
        n = len(vectors) if vectors is not None else len(texts or ())
        if not self._known(tenant_no):
            return [[] for _ in range(n)]
        if (parts := self._partition_names(tenant_no, groups)) == []:  # none of the groups holds a row yet
            return [[] for _ in range(n)]
        try:
            return self._search(tenant_no, mode, vectors, texts, expr, limit, parts, admits)
        except BackendError as exc:
            if "not loaded" not in str(exc):
                raise
        # A restarted server comes back with the collection released: load it and ask again.
        self._known(tenant_no)
        return self._search(tenant_no, mode, vectors, texts, expr, limit, parts, admits)

    def _search(self, tenant_no, mode, vectors, texts, expr, limit, parts, admits=1.0) -> list[list[RawHit]]:
        limit = max(1, min(limit, MAX_LIMIT))
        c = self.client()
        common: dict[str, Any] = {
            "limit": limit,
            "filter": expr,
            "partition_names": parts,
            "output_fields": ["row_id", "tenant", "external_id", "text"],
            "consistency_level": self.consistency,
        }
        try:
            if mode == "dense":
                if vectors is None:
                    raise ConfigError("a dense search needs query vectors")
                res = c.search(self.name(tenant_no), data=[v.tolist() for v in vectors], anns_field="dense", search_params=dense_search_params(self.index, limit, admits), **common)
                return [[raw_hit(h, 1.0) for h in hits] for hits in res]
            if mode == "keyword":
                if texts is None:
                    raise ConfigError("a keyword search needs query texts")
                res = c.search(self.name(tenant_no), data=list(texts), anns_field="sparse", search_params={"metric_type": "BM25"}, **common)
                sign = -1.0 if self.kind == "lite" else 1.0  # Lite returns negated BM25 scores
                return [[raw_hit(h, sign) for h in hits] for hits in res]
            raise ConfigError(f"a backend search takes mode 'dense' or 'keyword', not {mode!r}")
        except (BackendError, UnsupportedError, ConfigError):
            raise
        except Exception as exc:
            raise self._fail("search", exc) from None
