"""The Milvus schemas of a store: its root collection and a tenant's collection."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError
from .base import MAX_TEXT_BYTES


def analyzer_params(analyzer: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Milvus analyzer parameters for the BM25 text field.

    ``None`` / ``"standard"``: Milvus' default; ``"jieba"``: Chinese word
    segmentation (Milvus Lite needs the ``jieba`` package); ``"english"``:
    the English analyzer (stemming, stop words) where the backend has it; a
    dict is passed to Milvus as it is. Fixed when a collection is created.
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


def root_schema(client: Any) -> tuple[Any, Any]:
    """The root collection: the store's identity (``key`` → ``value``)."""
    from pymilvus import DataType

    s = client.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    s.add_field("value", DataType.VARCHAR, max_length=1024)
    s.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field to load a collection
    ip = client.prepare_index_params()
    ip.add_index("v", index_type="FLAT", metric_type="L2")
    return s, ip


# The dense index's build and search parameters (one place: benchmarks compare a silo built alike).
INDEX_BUILD: dict[str, dict[str, int]] = {"FLAT": {}, "HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 128}}


EF_MAX = 4096  # the widest HNSW search permrag asks for


def dense_search_params(index: str, limit: int, admits: float = 1.0) -> dict[str, Any]:
    """A dense search's parameters for ``index`` when ``limit`` hits are asked
    for by a caller who may see ``admits`` of the searched rows (1.0: all).
    An ANN search over the whole collection walks the same graph or lists
    whatever the caller may see, and only the visible rows among what it
    weighs count (kept by the filter, or by permrag's verify after an
    over-fetch), so it widens: by ``1 / admits`` it would weigh as many
    visible candidates as a silo of those rows alone, but measured (random
    vectors, 6,000 rows, half visible) that recall stayed below the silo's
    (IVF 0.77 against 0.81, HNSW 0.83 against 0.85): the silo's index is fit
    to its rows alone. By ``1 / admits²`` (HNSW's ``ef`` up to EF_MAX, IVF's
    ``nprobe`` up to every list) it is at least the silo's
    (tests/system/test_ann.py)."""
    widen = 1.0 / min(1.0, max(admits, 1e-6)) ** 2
    params: dict[str, Any] = {"metric_type": "COSINE"}
    if index == "HNSW":
        params["params"] = {"ef": int(min(EF_MAX, math.ceil(max(64, 2 * limit) * widen)))}
    elif index == "IVF_FLAT":
        params["params"] = {"nprobe": int(min(INDEX_BUILD["IVF_FLAT"]["nlist"], math.ceil(32 * widen)))}
    return params


def tenant_schema(client: Any, dim: int, index: str, bm25: bool, analyzer: dict[str, Any] | None) -> tuple[Any, Any]:
    """A tenant's collection: row identity, visibility class, text (+ BM25) and the dense vector."""
    from pymilvus import DataType, Function, FunctionType

    s = client.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("row_id", DataType.INT64, is_primary=True)
    s.add_field("tenant", DataType.VARCHAR, max_length=1024)
    s.add_field("external_id", DataType.VARCHAR, max_length=4096)
    s.add_field("vclass", DataType.INT64)
    text_kwargs: dict[str, Any] = {"enable_analyzer": True} if bm25 else {}
    if bm25 and analyzer is not None:
        text_kwargs["analyzer_params"] = analyzer
    s.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, **text_kwargs)
    s.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
    ip = client.prepare_index_params()
    ip.add_index("dense", index_type=index, metric_type="COSINE", params=dict(INDEX_BUILD[index]))
    if bm25:
        s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        s.add_function(Function(name="text_bm25", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["sparse"]))
        ip.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25", params={"inverted_index_algo": "TAAT_NAIVE"})
    return s, ip
