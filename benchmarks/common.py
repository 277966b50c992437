"""Helpers shared by the benchmarks: where results go, the machine line,
raw Milvus searches for the peers, and interleaved timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def save(name: str, quick: bool, data: object, text: str) -> None:
    """Write ``results/<name>[_quick].json`` and ``.md``."""
    RESULTS.mkdir(exist_ok=True)
    suffix = "_quick" if quick else ""
    (RESULTS / f"{name}{suffix}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    (RESULTS / f"{name}{suffix}.md").write_text(text + "\n")


def version(dist: str) -> str:
    try:
        from importlib.metadata import version as v

        return v(dist)
    except Exception:  # not installed: say so in the table
        return "?"


def raw_search(client, coll: str, q: np.ndarray, limit: int, expr: str = "", field: str = "dense", id_field: str = "row_id", with_text: bool = False, index: str = "FLAT") -> list[int]:
    """A plain pymilvus dense search; the IDs of the hits (``with_text``:
    fetching the text too, as permrag and an application do; ``index``: the
    collection's dense index, searched with permrag's parameters for it)."""
    from permrag.backends.schema import dense_search_params

    fields = [id_field, "text"] if with_text else [id_field]
    res = client.search(coll, data=[q.tolist()], anns_field=field, limit=limit, filter=expr, output_fields=fields, search_params=dense_search_params(index, limit))
    return [int((h.get("entity") or {}).get(id_field, h.get("id"))) for h in res[0]]


def acl_collection(client, name: str, ids, acl: list[str], vecs: np.ndarray, texts: list[str] | None = None, uri: str = "", index: str = "FLAT") -> None:
    """A second collection with an ``acl`` ARRAY field (one group per row):
    the row-level RBAC pattern, filtered with ``array_contains_any`` (on a
    server, searched once settled: :func:`settle`)."""
    from pymilvus import DataType

    if client.has_collection(name):
        client.drop_collection(name)
    s = client.create_schema(auto_id=False)
    s.add_field("row_id", DataType.INT64, is_primary=True)
    s.add_field("acl", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=4, max_length=64)
    s.add_field("dense", DataType.FLOAT_VECTOR, dim=vecs.shape[1])
    if texts is not None:
        s.add_field("text", DataType.VARCHAR, max_length=65535)
    from permrag.backends.schema import INDEX_BUILD

    ip = client.prepare_index_params()
    ip.add_index("dense", index_type=index, metric_type="COSINE", params=dict(INDEX_BUILD[index]))
    client.create_collection(name, schema=s, index_params=ip, consistency_level="Bounded")
    for j in range(0, len(ids), 5000):  # built per batch: 1M rows of float lists at once would take ~10 GB
        rows = [{"row_id": int(i), "acl": [t], "dense": v.tolist()} for i, t, v in zip(ids[j : j + 5000], acl[j : j + 5000], vecs[j : j + 5000])]
        if texts is not None:
            for r, t in zip(rows, texts[j : j + 5000]):
                r["text"] = t
        client.insert(name, rows)
    client.flush(name)
    client.load_collection(name)
    settle(uri, name, len(ids))


def recall_at_k(got: list[int], sims: dict[int, float], kth: float, k: int, tol: float = 1e-5) -> float:
    """Share of the exact top-k found; a returned row whose exact similarity
    ties the k-th best (within float error) counts as found."""
    want = min(k, len(sims))
    if want == 0:
        return 1.0
    return min(want, sum(1 for r in got if r in sims and sims[r] >= kth - tol)) / want


def williams(n: int) -> list[list[int]]:
    """Orders of ``n`` approaches in which each is run right after every other one
    equally often (a Williams design: ``n`` orders for even ``n``, ``2n`` for odd)."""
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(j + i) % n for j in first] for i in range(n)]
    return rows if n % 2 == 0 else rows + [r[::-1] for r in rows]


def measure(fns: dict[str, Callable], queries, budget_s: float = 8.0) -> dict[str, tuple[float, list]]:
    """Median latency and outputs of every approach, interleaved query by
    query so that background work in the backend weighs on all alike. The
    order changes each query so that every approach follows every other one
    equally often (:func:`williams`): what ran just before weighs — a
    full-collection scan leaves the CPU caches cold for whatever follows, and
    a fixed turn of one order would put one approach after the scan every
    time. (To compare two approaches without the others' scans between them,
    measure them again alone, as bench_search's side by side does.) A slow
    approach stops after 3 queries once it has used its time budget."""
    for fn in fns.values():
        fn(queries[0])  # warm
    times: dict = {n: [] for n in fns}
    outs: dict = {n: [] for n in fns}
    names = list(fns)
    orders = williams(len(names))
    for qi, q in enumerate(queries):
        for name in (names[j] for j in orders[qi % len(orders)]):
            fn = fns[name]
            if len(times[name]) >= 3 and sum(times[name]) > budget_s:
                continue
            t = time.perf_counter()
            outs[name].append(fn(q))
            times[name].append(time.perf_counter() - t)
    return {n: (statistics.median(times[n]), outs[n]) for n in fns}


def settle(uri: str, name: str, rows: int, timeout_s: float = 300.0) -> float:
    """Wait until a server serves all ``rows`` of collection ``name`` from
    sealed, loaded segments; returns the seconds waited (Lite: 0).

    After a flush a 2.3 server keeps answering from the growing segments for
    a while (measured, 100k × 384 FLAT: 31–35 ms a search for ~15 s, then
    15–19 ms once the sealed segments are loaded); a collection searched
    right after it is made would be measured at half speed. Every collection
    a benchmark compares on a server is settled first."""
    if not uri.startswith("http"):
        return 0.0
    import warnings

    from pymilvus import connections, utility

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        connections.connect("settle", uri=uri)
        while time.perf_counter() - t0 < timeout_s:
            if sum(int(s.num_rows) for s in utility.get_query_segment_info(name, using="settle")) >= rows:
                break
            time.sleep(0.5)
    return time.perf_counter() - t0


def loaded_segments(uri: str, name: str) -> int:
    """How many sealed segments a server serves collection ``name`` from (Lite: 0).
    A search pays a fixed cost per segment: a collection split over many
    partitions holds more, smaller ones than one collection of the same rows."""
    if not uri.startswith("http"):
        return 0
    import warnings

    from pymilvus import connections, utility

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        connections.connect("settle", uri=uri)
        return len(utility.get_query_segment_info(name, using="settle"))


@contextmanager
def fresh_postgres(admin_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of ``admin_url`` (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"permrag_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
