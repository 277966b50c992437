"""Deployment shapes (issue 12): saved configuration, secrets, the README's
PostgreSQL URL, one encoder per store, documents by their own id."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from permrag import ConfigError, EncoderMismatchError, PermRAG, UnknownRowError
from permrag.cli import main
from permrag.embed import HashEncoder, RandomEncoder


def run(*args, code=0, env=None):
    res = CliRunner().invoke(main, list(args), env=env)
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    return res.output


def test_init_records_the_settings_every_later_command_uses(tmp_path, pg_url, milvus_server):
    home = str(tmp_path / "h")
    url = pg_url.replace("postgresql+psycopg2://", "postgresql://")  # the README's form
    out = run("--home", home, "init", "--database-url", url, "--milvus-uri", milvus_server, "--collection", "cfg_test", "--encoder", "hash")
    assert "initialised" in out
    docs = tmp_path / "d.jsonl"
    docs.write_text(json.dumps({"external_id": "a", "text": "budget plan", "attrs": {"dept": "eng"}}) + "\n")
    run("--home", home, "ingest", str(docs))
    run("--home", home, "role", "add", "eng")
    run("--home", home, "grant", "eng", "dept:eng")
    run("--home", home, "user", "assign", "ann", "eng")
    hits = json.loads(run("--home", home, "search", "budget", "--as", "ann", "--mode", "dense", "--json"))
    assert [h["external_id"] for h in hits] == ["a"]
    # the library reads the same file
    with PermRAG.open(home) as rag:
        assert rag.settings.database_url == url and rag.settings.milvus_uri == milvus_server
        assert rag.encoder.name == "hash-64" and len(rag.visible("ann")) == 1
    shown = json.loads(run("--home", home, "config", "show", "--json"))
    assert shown["database_url"]["source"] == "config file" and shown["collection"]["value"] == "cfg_test"
    # a flag or a variable overrides the file
    shown = json.loads(run("--home", home, "--collection", "other", "config", "show", "--json"))
    assert shown["collection"] == {"value": "other", "source": "argument"}
    shown = json.loads(run("--home", home, "config", "show", "--json", env={"PERMRAG_COLLECTION": "from_env"}))
    assert shown["collection"] == {"value": "from_env", "source": "environment"}


def test_secrets_are_never_printed(tmp_path):
    home = str(tmp_path / "h")
    secret_url = "postgresql://app:s3cr3t-pw@127.0.0.1:1/nodb"
    out = run("--home", home, "init", "--milvus-token", "root:t0ken-secret", code=0)
    assert "t0ken-secret" not in out
    shown = run("--home", home, "config", "show")
    assert "t0ken-secret" not in shown and "milvus_token: ***" in shown
    assert (tmp_path / "h" / "config.toml").stat().st_mode & 0o077 == 0
    out = run("--home", home, "--database-url", secret_url, "role", "list", code=1)
    assert "s3cr3t-pw" not in out and "***" in out
    out = run("--home", home, "--database-url", secret_url, "config", "show")
    assert "s3cr3t-pw" not in out


def test_postgresql_url_as_the_readme_writes_it(tmp_path, pg_url):
    url = pg_url.replace("postgresql+psycopg2://", "postgresql://")
    with PermRAG.open(tmp_path / "h", database_url=url, catalog_only=True) as rag:
        rag.policy.add_role("r")
        assert rag._engine.dialect.driver in ("psycopg", "psycopg2")
        assert rag.policy.roles() == ["r"]


def test_an_empty_home_is_refused(tmp_path):
    assert "must not be empty" in run("--home", "", "role", "list", code=1)
    with pytest.raises(ConfigError, match="must not be empty"):
        PermRAG.open("")


def test_the_store_keeps_its_encoder(tmp_path):
    home = tmp_path / "h"
    with PermRAG.open(home, encoder=HashEncoder(32)) as rag:
        rag.add_documents([{"external_id": "a", "text": "budget"}])
        rag.policy.add_role("r")
        rag.policy.grant("r", "*")
        rag.policy.assign_user("ann", "r")
    with PermRAG.open(home) as rag:  # no encoder named: the store's own
        assert rag.encoder.name == "hash-32"
        assert [h.external_id for h in rag.search("budget", user="ann", mode="dense")] == ["a"]
    with PermRAG.open(home, encoder=RandomEncoder(32)) as rag:  # same dimension, another encoder
        with pytest.raises(EncoderMismatchError, match="hash-32"):
            rag.search("budget", user="ann", mode="dense")
        with pytest.raises(EncoderMismatchError):
            rag.add_documents([{"external_id": "b", "text": "x"}])
    out = run("--home", str(home), "search", "budget", "--as", "ann", "--encoder", "random-32", code=1)
    assert "leave out --encoder" in out and "open the store without" not in out


def test_documents_answer_by_their_own_id(tmp_path):
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(32), chunk_size=120, chunk_overlap=10)
    rag.add_documents([{"external_id": "handbook", "text": "leave policy and travel rules. " * 20, "attrs": {"dept": "hr"}}])
    rag.policy.add_role("hr")
    rag.policy.grant("hr", "dept:hr")
    rag.policy.assign_user("bea", "hr")
    rag.policy.add_role("part")
    rag.policy.grant("part", "doc:handbook#0")
    rag.policy.assign_user("pat", "part")
    doc = rag.row("handbook")
    assert len(doc.chunks) > 2 and all(c.parent == "handbook" for c in doc.chunks)
    assert rag.row("handbook#1").external_id == "handbook#1"
    assert rag.can_read("bea", "handbook") and not rag.can_read("pat", "handbook") and rag.can_read("pat", "handbook#0")
    e = rag.explain("pat", "handbook")
    assert e.decision == "document" and not e.visible and len(e.chunks) == len(doc.chunks)
    assert rag.who_can_see("handbook") == {"users": ["bea"], "roles": ["hr"]}
    with pytest.raises(UnknownRowError):
        rag.row("no-such")
    home = str(tmp_path / "h")
    out = run("--home", home, "explain", "handbook", "--as", "bea")
    assert "CAN read 'handbook'" in out and "chunks" in out
    assert json.loads(run("--home", home, "who-can-see", "handbook", "--json")) == {"users": ["bea"], "roles": ["hr"]}
    hits = json.loads(run("--home", home, "search", "leave policy", "--as", "bea", "--mode", "dense", "--k", "3", "--json"))
    assert all(h["external_id"].startswith("handbook#") and h["document"] == "handbook" for h in hits)
    table = run("--home", home, "search", "leave policy", "--as", "bea", "--mode", "dense", "--k", "3")
    assert table.count("handbook#") >= 3 and "chunks" in table
    rag.close()
