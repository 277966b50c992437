"""A store's vectors: its backend bound to its catalog, and its encoder.

Two things must never be mixed up silently:

* **the collection** — the backend's root collection carries the store id
  of the catalog that created it (backends/milvus.py); the catalog records
  that it is bound (``milvus_bound``) and to which collection, so a later
  open without a collection name finds it, and an open against a Milvus that
  lacks it is an error, not a fresh empty store;
* **the encoder** — the catalog records the encoder's name and dimension at
  the first ingest. Opening the store without naming an encoder uses that
  one; naming another one (of any dimension) raises
  :class:`EncoderMismatchError` before any vector is written or searched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import Engine

from ..embed import Encoder, resolve_encoder
from ..errors import ArgumentError, ConfigError, EncoderMismatchError, PermragError
from ..storage import db
from .milvus import MilvusBackend


class Binding:
    """The backend and encoder of one store, bound and checked on first use."""

    def __init__(self, engine: Engine, make_backend: Callable[[str], MilvusBackend], collection: str | None, encoder: Encoder | str | None) -> None:
        self.engine = engine
        self._make_backend = make_backend
        self._collection = collection  # None: the one the catalog is bound to, else the default
        self._encoder_spec = encoder
        self._backend: MilvusBackend | None = None
        self._encoder: Encoder | None = None
        self._recorded: tuple[str, int] | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ backend
    def backend(self) -> MilvusBackend:
        """The backend, its root collection checked against this catalog's store id."""
        if self._backend is not None:
            return self._backend
        with self._lock:
            if self._backend is None:
                with db.reading(self.engine, "reading the store settings") as conn:
                    store_id = db.get_setting(conn, "store_id") or ""
                    bound = db.get_setting(conn, "milvus_collection")
                backend = self._make_backend(self._collection or bound or "permrag")
                try:
                    self._bind(backend, store_id, bound)
                except BaseException:
                    backend.close()  # a refused backend keeps no client (nor a Milvus Lite folder) open
                    raise
                self._backend = backend
        return self._backend

    def _bind(self, backend: MilvusBackend, store_id: str, bound: str | None) -> None:
        if bound is None:
            # A store's first use: its processes make the root one at a time
            # (two at once on a server once left it with only one of its two
            # identity rows). The lock is held only for this, once per store.
            with db.transaction(self.engine, "recording the store's collection") as conn:
                db.bump(conn, "schema_version", 0)  # the write lock first (see db.bump)
                backend.bind(store_id, bound_before=False)
                if db.get_setting(conn, "milvus_collection") is None:
                    db.set_setting(conn, "milvus_collection", backend.collection)
        else:
            backend.bind(store_id, bound_before=bound == backend.collection)

    @property
    def opened(self) -> MilvusBackend | None:
        """The backend if it was used already (for close and reconcile)."""
        return self._backend

    def bound_collection(self) -> str | None:
        with db.reading(self.engine, "reading the store settings") as conn:
            return db.get_setting(conn, "milvus_collection")

    # ------------------------------------------------------------------ encoder
    def recorded_encoder(self) -> tuple[str, int] | None:
        """(name, dim) of the encoder the store's vectors were made with, if any yet."""
        if self._recorded is None:
            with db.reading(self.engine, "reading the store settings") as conn:
                name, dim = db.get_setting(conn, "encoder"), db.get_setting(conn, "encoder_dim")
            if name is not None and dim is not None:
                self._recorded = (name, int(dim))
        return self._recorded

    @property
    def encoder(self) -> Encoder:
        """The store's encoder: the one given, checked against the recorded one, or the recorded one."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    recorded = self.recorded_encoder()
                    spec = self._encoder_spec if self._encoder_spec is not None else (recorded[0] if recorded else None)
                    enc = resolve_encoder(spec)
                    if recorded is not None and (enc.name != recorded[0] or enc.dim != recorded[1]):
                        raise EncoderMismatchError(
                            f"this store's vectors were made by encoder {recorded[0]!r} ({recorded[1]}-dim), not {enc.name!r} ({enc.dim}-dim)",
                            hint="open the store without an encoder to use its own",
                            cli_hint="leave out --encoder to use the store's own",
                        )
                    self._encoder = enc
        return self._encoder

    def record_encoder(self) -> None:
        """Remember the encoder at the first ingest (a concurrent first ingest with another encoder loses)."""
        enc = self.encoder
        if self._recorded is not None:
            return
        with db.transaction(self.engine, "recording the store's encoder") as conn:
            db.bump(conn, "schema_version", 0)  # the write lock first (see db.bump)
            name, dim = db.get_setting(conn, "encoder"), db.get_setting(conn, "encoder_dim")
            if name is None:
                db.set_setting(conn, "encoder", enc.name)
                db.set_setting(conn, "encoder_dim", str(enc.dim))
                name, dim = enc.name, str(enc.dim)
        self._recorded = (name, int(dim or 0))
        if self._recorded != (enc.name, enc.dim):
            self._encoder = None
            raise EncoderMismatchError(f"another process made this store's vectors with encoder {name!r} meanwhile")

    def encode(self, texts: list[str]) -> np.ndarray:
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
        """Caller-supplied query vectors as float32: ``n`` finite rows of the encoder's dimension."""
        dim = self.encoder.dim
        try:
            arr = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"vectors must be numbers, of shape ({n}, {dim}): {exc}") from None
        if arr.shape != (n, dim):
            raise ArgumentError(f"vectors must be of shape ({n}, {dim}), not {tuple(arr.shape)}")
        if not np.isfinite(arr).all():
            raise ArgumentError("vectors must be finite (no NaN or infinity)")
        return arr

    def close(self) -> None:
        """Close the backend's client; on Milvus Lite this releases the folder to other processes."""
        if self._backend is not None:
            self._backend.close()
