"""ANN indexes on a Milvus server: permrag's recall@10 is at least a silo's.

A store made with ``index="HNSW"`` or ``"IVF_FLAT"`` keeps its collection
under that index. Each caller's answers are compared with the exact top-10 of
the rows the caller may see (brute force over the visible vectors), and with
a *silo*: a collection of only those rows, built and searched with the same
index and parameters (``permrag.backends.schema``); both are searched once
the server answers from their indexes, not by brute force. permrag ranks small and
medium visible sets in process (exact by construction) and asks Milvus for
the rest; on every route its recall must be at least the silo's, and it
returns no row the caller may not see.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from permrag import PermRAG
from permrag.backends.schema import INDEX_BUILD, dense_search_params
from permrag.embed import RandomEncoder

pytestmark = pytest.mark.server

DIM = 128  # random vectors of this many dimensions are hard for an ANN index: recall below 1 in a silo too
ROWS = 6000
TEAMS = 100  # 60 rows a team
FRACTIONS = (0.1, 0.5, 1.0)
MIN_INDEXED = 1024  # a Milvus 2.3 server builds no index for a smaller segment


def _recall(got: list[int], exact: list[int]) -> float:
    return len(set(got) & set(exact)) / len(exact)


def _indexed(uri: str, name: str, rows: int, timeout_s: float = 240.0) -> None:
    """Wait until the server answers ``name`` from sealed segments with their index
    loaded, all ``rows`` of them: until then it searches rows by brute force, which
    would make every recall 1 and prove nothing."""
    from pymilvus import connections, utility

    alias = f"ann_{uuid.uuid4().hex[:6]}"
    connections.connect(alias, uri=uri)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            segs = utility.get_query_segment_info(name, using=alias)
            # (a segment under the server's 1,024 rows gets no index: it is searched by brute force, a silo's too)
            if sum(int(s.num_rows) for s in segs if s.index_name or int(s.num_rows) < MIN_INDEXED) >= rows:
                return
            assert time.monotonic() < deadline, f"{name}: the server has not loaded its index for {rows} rows: {segs}"
            time.sleep(0.5)
    finally:
        connections.disconnect(alias)


def _silo(client, uri: str, name: str, index: str, ids: np.ndarray, vecs: np.ndarray):
    from pymilvus import DataType

    s = client.create_schema(auto_id=False)
    s.add_field("row_id", DataType.INT64, is_primary=True)
    s.add_field("dense", DataType.FLOAT_VECTOR, dim=DIM)
    ip = client.prepare_index_params()
    ip.add_index("dense", index_type=index, metric_type="COSINE", params=dict(INDEX_BUILD[index]))
    client.create_collection(name, schema=s, index_params=ip, consistency_level="Strong")
    client.insert(name, [{"row_id": int(i), "dense": v.tolist()} for i, v in zip(ids, vecs)])
    client.flush(name)
    client.load_collection(name)
    _indexed(uri, name, len(ids))


@pytest.mark.parametrize("index", ["HNSW", "IVF_FLAT"])
def test_recall_at_least_a_silos_with_the_same_index(tmp_path, milvus_server, index) -> None:
    """Three stores of one collection laid out in partitions by co-visibility: the
    default search options (sets this size are ranked in process), every search
    sent to Milvus, and ``local_rows=500`` (sets over it take the route of large
    sets). One role is made before the ingest, so its rows get groups of their
    own; the others after it.
    A set over ``local_rows`` that its groups hold alone, or everything, is
    searched by Milvus' index over exactly those rows with a silo's parameters,
    not read back for in-process ranking (which costs time in proportion to the
    set); a set under a residual filter is read back and ranked exactly."""
    from pymilvus import MilvusClient

    collection = f"ann_{uuid.uuid4().hex[:8]}"
    common = {"milvus_uri": milvus_server, "collection": collection, "encoder": RandomEncoder(DIM), "index": index, "consistency": "Strong", "repartition_every": 0}
    # (an ANN store given no layout stays flat; the groups' route needs one, as a store may choose)
    rag = PermRAG.open(tmp_path / "h", **common, partitions=8, partition_by="visibility+acl")
    client = MilvusClient(milvus_server)
    stores = {"default": rag}
    try:
        _role(rag, "early", 0.5)  # before the ingest: its rows get groups of their own
        docs = [{"external_id": f"d{i}", "text": f"doc {i}", "attrs": {"team": f"t{i % TEAMS}"}} for i in range(ROWS)]
        ids = np.asarray(rag.add_documents(docs), dtype=np.int64)
        vecs = np.asarray(rag.encoder.encode([d["text"] for d in docs]), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        team = np.arange(ROWS) % TEAMS
        no = rag.catalog.tenants.number("default")
        rag.backend.flush(no)
        _indexed(milvus_server, rag.backend.name(no), ROWS)
        rng = np.random.default_rng(5)
        queries = rng.standard_normal((12, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for f in FRACTIONS:
            users = [_role(rag, f"r{f}", f)] + (["u_early"] if f == 0.5 else [])
            if len(stores) == 1:
                stores["milvus-only"] = PermRAG.open(tmp_path / "h", **common, local_rows=0, prefetch_rows=0)
                stores["large"] = PermRAG.open(tmp_path / "h", **common, local_rows=500)
            for store in stores.values():
                store.refresh()
            mask = team < int(TEAMS * f)
            vis_ids, vis_vecs = ids[mask], vecs[mask]
            silo = f"{collection}_silo"
            _silo(client, milvus_server, silo, index, vis_ids, vis_vecs)
            for user in users:
                mean = _recalls(client, silo, index, stores, user, queries, vis_ids, vis_vecs)
                print(f"\n{index} {f:.0%} {user}: recall@10 " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
                assert mean["default"] == 1.0, f"{index} {f:.0%}: a set this size is ranked in process, exactly"
                # Milvus searches the whole collection's index (under permrag's filter, or
                # over-fetching past rows the caller may not see), searched wider by the share
                # the caller may see; a silo searches an index of the visible rows alone.
                # (0.02: two hits of the 120, the noise of two indexes built apart; at 100 %
                # both search alike.)
                assert mean["milvus-only"] >= mean["silo"] - 0.02, (index, f, user, mean)
                assert mean["large"] >= mean["silo"] - 0.02, (index, f, user, mean)
            client.drop_collection(silo)
        only = stores["milvus-only"].stats
        assert only["local_searches"] == 0 and only["milvus_searches"] > 0
    finally:
        client.close()
        for store in stores.values():
            store.close()


def _role(rag: PermRAG, role: str, share: float) -> str:
    """A role that reads the first ``share`` of the teams, and its user."""
    rag.policy.add_role(role)
    for t in range(int(TEAMS * share)):
        rag.policy.grant(role, f"team:t{t}")
    user = f"u_{role}"
    rag.policy.assign_user(user, role)
    return user


def _recalls(client, silo: str, index: str, stores: dict[str, PermRAG], user: str, queries: np.ndarray, vis_ids: np.ndarray, vis_vecs: np.ndarray) -> dict[str, float]:
    """Mean recall@10 of each store and of the silo for ``user``. The ``large`` store
    is searched twice over (a background read its first round queued is done by
    the second), and its route is checked: groups of visible rows alone, or
    everything, go to Milvus and are never read back; a residual filter's set is."""
    large = stores["large"]
    plan = large.searcher.plan(large.access.snapshot(user, "default"))
    alone = getattr(plan, "strategy", "all") in ("all", "groups")
    assert alone == (user != "u_r0.1"), f"{user}: {plan.describe()}"  # r0.1: a part of the early role's groups
    before = (large.stats["local_searches"], large.cache_memory()["rows"])
    visible = set(vis_ids.tolist())
    recalls: dict[str, list[float]] = {name: [] for name in (*stores, "silo")}
    for round_ in range(2):
        for q in queries:
            exact = [int(i) for i in vis_ids[np.argsort(-(vis_vecs @ q), kind="stable")[:10]]]
            for name, store in stores.items():
                if round_ and name != "large":
                    continue
                got = [h.row_id for h in store.search_many(["q"], user=user, k=10, mode="dense", vectors=q[None, :])[0]]
                assert set(got) <= visible, f"{index} {name} {user}: a row outside the caller's permissions"
                assert len(got) == 10
                recalls[name].append(_recall(got, exact))
            if not round_:
                res = client.search(silo, data=[q.tolist()], anns_field="dense", limit=10, search_params=dense_search_params(index, 10))
                recalls["silo"].append(_recall([int(h["id"]) for h in res[0]], exact))
        large._local.wait(60)
    after = (large.stats["local_searches"], large.cache_memory()["rows"])
    if alone:
        assert after == before, f"{index} {user}: a set the index holds alone was read back and ranked in process"
    else:
        assert after[0] > before[0], f"{index} {user}: a set under a residual filter should be read back and ranked exactly"
    return {k: float(np.mean(v)) for k, v in recalls.items()}
