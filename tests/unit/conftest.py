"""Unit tests run with no Milvus and no server: no Milvus backend can be
made here (Lite or server), and the server fixtures fail. A test that needs
one belongs in tests/integration or tests/system."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_milvus(monkeypatch: pytest.MonkeyPatch) -> None:
    from permrag.backends import milvus

    def refuse(self, *args, **kwargs):
        raise AssertionError("a unit test made a Milvus backend: move it to tests/integration")

    monkeypatch.setattr(milvus.MilvusBackend, "__init__", refuse)


@pytest.fixture
def milvus_server():
    raise AssertionError("a unit test asked for a Milvus server: move it to tests/system")


@pytest.fixture
def pg_url():
    raise AssertionError("a unit test asked for PostgreSQL: move it to tests/integration or tests/system")
