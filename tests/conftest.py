"""Shared fixtures: temporary homes, a PostgreSQL database, the casbin oracle."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import casbin
import pytest

from permrag import PermRAG

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "policies" / "model.conf"  # the reference model; the package ships an equal copy (test_packaging)
PG_ADMIN_URL = os.environ.get("PERMRAG_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


# Markers by what a test needs (``make test-fast`` leaves these out): a Milvus
# server (the fixtures, or a ``server`` parameter of a backend-parametrised test),
# PostgreSQL, or seconds of processes, crashes and stress, subprocess servers,
# real embedding models and long property runs over Milvus (whole modules).
SERVER_FIXTURES = {"milvus_server", "own_milvus_server", "slapd"}


def examples(n: int) -> int:
    """Property-test examples: ``n``, or a quarter of it (at least 2) under
    ``make test-fast`` (PERMRAG_TEST_FAST=1); ``make test`` and CI run all ``n``."""
    return max(2, n // 4) if os.environ.get("PERMRAG_TEST_FAST") == "1" else n


# Slow outside tests/system (where every module is: processes, servers, packaging).
SLOW_MODULES = {
    "test_repartition",
    "test_covis",  # property runs over Milvus Lite placements
    "test_encoders",  # the real MiniLM and static models
    "test_multilingual",
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = set(map(str, getattr(getattr(item, "callspec", None), "params", {}).values()))
        if names & SERVER_FIXTURES or "server" in params:
            item.add_marker(pytest.mark.server)
        if "pg_url" in names or params & {"postgresql", "postgres"}:
            item.add_marker(pytest.mark.postgres)
        layer, module = item.module.__name__.split(".")[-2:]
        if layer == "system" or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def rag(home: Path) -> Iterator[PermRAG]:
    """A catalog-only store (no vector store): policy and bitmap tests."""
    r = PermRAG.open(home, catalog_only=True)
    yield r
    r.close()


TEST_TICK_MS = int(os.environ.get("PERMRAG_TEST_TICK_MS", "20"))  # Milvus' default: 200 (tests/helpers/milvus_server.py)


def start_milvus_server(base_dir: Path, port: int | None = None):
    """Start a Milvus server (PyPI package ``milvus``) on ``port`` (default: a
    free one), its embedded etcd on free ports too (tests/helpers/milvus_server.py)."""
    from .helpers.milvus_server import start

    return start(base_dir, port, tick_ms=TEST_TICK_MS)


def kill_milvus_server(server) -> None:
    """SIGKILL the server process (no shutdown of any kind)."""
    server.server_proc.kill()
    server.server_proc.wait()
    server.server_proc = None
    for fd in server.proc_fds.values():
        fd.close()
    server.proc_fds.clear()


def _server_or_skip(base_dir: Path):
    try:
        return start_milvus_server(base_dir)
    except Exception as exc:  # the package raises several kinds
        reason = f"Milvus server (PyPI package milvus) could not start: {exc.__class__.__name__}: {exc}"
        if os.environ.get("PERMRAG_REQUIRE_MILVUS_SERVER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """A real Milvus server from the PyPI package `milvus`, for the session.

    Skips with the reason when it cannot start, unless
    PERMRAG_REQUIRE_MILVUS_SERVER=1 (set by .ci/run), where that fails.
    """
    server = _server_or_skip(tmp_path_factory.mktemp("milvus-server"))
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()


@pytest.fixture
def own_milvus_server(tmp_path):
    """A Milvus server of this test's own (it may kill and restart it)."""
    server = _server_or_skip(tmp_path / "milvus")
    try:
        yield server
    finally:
        if server.server_proc is not None:
            server.stop()


def open_backend(backend: str, tmp: Path, request, **kwargs) -> PermRAG:
    """A PermRAG on Milvus Lite (a file under ``tmp``) or on the session's server."""
    if backend == "server":
        uri = request.getfixturevalue("milvus_server")
        kwargs.setdefault("collection", f"c_{uuid.uuid4().hex[:12]}")
        kwargs.setdefault("consistency", "Strong")  # tests search rows they just wrote
        return PermRAG.open(tmp, milvus_uri=uri, **kwargs)
    return PermRAG.open(tmp, **kwargs)


def milvus_ids(rag: PermRAG, tenant: str = "default") -> set[int]:
    """Every row ID in the tenant's Milvus collection."""
    no = rag.catalog.tenants.number(tenant)
    return rag.backend.all_ids(no) if no is not None else set()


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        import sqlalchemy as sa

        eng = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # any failure means "unreachable" here
        return f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards.

    Skips (with the reason) when the server is unreachable, unless
    PERMRAG_REQUIRE_PG=1 (set by .ci/run), where that is a failure.
    """
    import sqlalchemy as sa

    reason = _pg_available()
    if reason is not None:
        if os.environ.get("PERMRAG_REQUIRE_PG") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"permrag_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str | None:
    """A store's database URL: None (SQLite in the home), then a fresh PostgreSQL database."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


# ---------------------------------------------------------------- the oracle
def oracle_selector_match(row: dict, tenant: str, selector: str) -> bool:
    """Selector semantics written independently of permrag.selectors."""
    import re

    if row["tenant"] != tenant:
        return False
    if selector == "*":
        return True
    kind, _, value = selector.partition(":")
    if kind == "doc":
        return row["external_id"] == value or row.get("parent") == value
    pattern = "^" + ".*".join(re.escape(p) for p in value.split("*")) + "$"
    have = row["attrs"].get(kind)
    if have is None:
        return False
    values = [have] if isinstance(have, str) else list(have)
    return any(re.match(pattern, v, re.S) for v in values)


class Oracle:
    """casbin's enforce over the reference policies/model.conf, plus the derived-row rule.

    Users and roles are separate namespaces: a user is the casbin subject
    ``user:<id>`` (no role may start with ``user:``), so a user called like a
    role holds nothing by that.
    """

    def __init__(self) -> None:
        self.e = casbin.Enforcer(str(MODEL))
        self.e.add_function("selectorMatch", lambda row, dom, sel: oracle_selector_match(row, dom, sel))
        self.rows: dict[tuple[str, str], dict] = {}

    def add_row(self, row: dict) -> None:
        self.rows[(row["tenant"], row["external_id"])] = row

    def allow(self, role: str, tenant: str, sel: str, eft: str = "allow") -> None:
        self.e.add_policy(role, tenant, sel, "read", eft)

    def revoke(self, role: str, tenant: str, sel: str) -> None:
        for eft in ("allow", "deny"):
            self.e.remove_policy(role, tenant, sel, "read", eft)

    def assign(self, user: str, role: str, tenant: str) -> None:
        self.e.add_grouping_policy(f"user:{user}", role, tenant)

    def unassign(self, user: str, role: str, tenant: str) -> None:
        self.e.remove_grouping_policy(f"user:{user}", role, tenant)
        # casbin's domain role manager can keep a removed link when the same
        # link exists in another domain (measured with casbin 1.43): rebuild.
        self.e.build_role_links()

    def inherit(self, role: str, parent: str, tenant: str) -> None:
        self.e.add_grouping_policy(role, parent, tenant)

    def uninherit(self, role: str, parent: str, tenant: str) -> None:
        self.e.remove_grouping_policy(role, parent, tenant)
        self.e.build_role_links()

    def can_read(self, user: str, tenant: str, row: dict) -> bool:
        if row.get("derived_from"):
            return all(self.can_read(user, tenant, self.rows[(tenant, s)]) for s in row["derived_from"])
        return bool(self.e.enforce(f"user:{user}", tenant, row, "read"))

    def visible_external_ids(self, user: str, tenant: str) -> set[str]:
        return {ext for (t, ext), row in self.rows.items() if t == tenant and self.can_read(user, tenant, row)}


@pytest.fixture
def oracle() -> Oracle:
    return Oracle()
