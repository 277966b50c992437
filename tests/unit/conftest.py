"""Unit tests run with no Milvus and no server: no Milvus backend can be
made here (Lite or server), and the server fixtures fail. A test that needs
one belongs in tests/integration or tests/system."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package", autouse=True)
def _no_milvus():
    """For the whole package, before any module's fixtures (a module-scoped
    store made before a function-scoped guard would slip past it)."""
    from permrag.backends import milvus

    def refuse(self, *args, **kwargs):
        raise AssertionError("a unit test made a Milvus backend: move it to tests/integration")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(milvus.MilvusBackend, "__init__", refuse)
        yield


@pytest.fixture
def milvus_server():
    raise AssertionError("a unit test asked for a Milvus server: move it to tests/system")


@pytest.fixture
def pg_url():
    raise AssertionError("a unit test asked for PostgreSQL: move it to tests/integration or tests/system")
