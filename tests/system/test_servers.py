"""Milvus servers from the PyPI package on one machine: the fixtures' helper
(tests/helpers/milvus_server.py) must give each its own ports, etcd's and
every component's, also when two start at the same moment (two pytest-xdist
workers, or a test's own server beside the session's)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from ..conftest import start_milvus_server

pytestmark = pytest.mark.server


def _ports(server) -> set[int]:
    items = server.config.configurable_items
    return {int(v[1]) for k, v in items.items() if k.endswith("_port")} | {server.webservice_port}


def test_a_server_started_while_another_boots_gets_ports_of_its_own(tmp_path) -> None:
    from pymilvus import MilvusClient

    started: dict[str, object] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            started[name] = start_milvus_server(tmp_path / name)
        except BaseException as exc:  # judged below
            errors.append(exc)

    # b starts in a's window: a's ports are chosen and let go of (its config is
    # written), its process is booting and has not bound them yet
    first = threading.Thread(target=start, args=("a",))
    first.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "a" / "configs" / "milvus.yaml").exists() and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = threading.Thread(target=start, args=("b",))
    second.start()
    for t in (first, second):
        t.join(400)
    try:
        if errors and os.environ.get("PERMRAG_REQUIRE_MILVUS_SERVER") != "1":
            pytest.skip(f"Milvus server could not start: {errors[0]!r}")
        assert not errors, errors
        a, b = started["a"], started["b"]
        assert not _ports(a) & _ports(b), "two servers share a port"
        # each is its own server: a collection made in one is not in the other
        rng = np.random.default_rng(0)
        clients = {n: MilvusClient(uri=f"http://127.0.0.1:{s.listen_port}") for n, s in started.items()}
        try:
            for n, c in clients.items():
                c.create_collection(f"only_{n}", dimension=8)
                c.insert(f"only_{n}", [{"id": i, "vector": rng.standard_normal(8).tolist()} for i in range(5)])
            assert clients["a"].has_collection("only_a") and not clients["a"].has_collection("only_b")
            assert clients["b"].has_collection("only_b") and not clients["b"].has_collection("only_a")
            for n, c in clients.items():
                assert len(c.query(f"only_{n}", filter="id >= 0", output_fields=["id"], consistency_level="Strong")) == 5
        finally:
            for c in clients.values():
                c.close()
    finally:
        for s in started.values():
            s.stop()
