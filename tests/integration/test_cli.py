"""Every CLI command through click's runner on a temporary home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from permrag import PermRAG
from permrag.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A home with documents and a policy, made through the CLI itself."""
    home = tmp_path_factory.mktemp("cli") / "home"
    runner = CliRunner()
    docs = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    docs.write_text(
        "\n".join(
            json.dumps(d)
            for d in [
                {"external_id": "eng-1", "text": "deploy pipeline release train", "attrs": {"dept": "eng"}},
                {"external_id": "eng-2", "text": "root signing key rotation", "attrs": {"dept": "eng", "level": "secret"}},
                {"external_id": "hr-1", "text": "parental leave twenty weeks", "attrs": {"dept": "hr"}},
            ]
        )
        + "\n"
    )

    def run(*args, code=0):
        res = runner.invoke(main, ["--home", str(home), *args], catch_exceptions=False)
        assert res.exit_code == code, res.output
        return res

    run("init")
    run("ingest", str(docs), "--encoder", "hash")
    run("role", "add", "eng")
    run("grant", "eng", "dept:eng")
    run("grant", "eng", "level:secret", "--deny")
    run("user", "assign", "alice", "eng")
    return home, run


def test_init_creates_the_home(tmp_path) -> None:
    res = CliRunner().invoke(main, ["--home", str(tmp_path / "h"), "init"])
    assert res.exit_code == 0 and (tmp_path / "h" / "permrag.db").exists()


def test_env_var_selects_the_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PERMRAG_HOME", str(tmp_path / "envhome"))
    assert CliRunner().invoke(main, ["init"]).exit_code == 0
    assert (tmp_path / "envhome" / "permrag.db").exists()


def test_role_list_and_user_show(store) -> None:
    home, run = store
    data = json.loads(run("role", "list", "--json").output)
    assert data == [{"role": "eng", "rules": ["allow dept:eng", "deny level:secret"], "inherits": [], "members": ["alice"]}]
    show = json.loads(run("user", "show", "alice", "--json").output)
    assert show["roles"] == ["eng"] and show["visible_rows"] == 1
    assert "sees 1 of 3 rows" in run("user", "show", "alice").output


def test_search_as_user_returns_only_visible_rows(store) -> None:
    home, run = store
    hits = json.loads(run("search", "--as", "alice", "deploy key rotation", "--encoder", "hash", "--json", "--k", "5").output)
    assert [h["external_id"] for h in hits] == ["eng-1"]
    assert json.loads(run("search", "--as", "alice", "parental leave", "--encoder", "hash", "--json", "--mode", "keyword").output) == []
    assert "may read no matching row" in run("search", "--as", "alice", "parental leave", "--encoder", "hash", "--mode", "keyword").output


def test_explain_and_who_can_see(store) -> None:
    home, run = store
    e = json.loads(run("explain", "--as", "alice", "eng-2", "--json").output)
    assert e["visible"] is False and e["decision"] == "deny" and e["path"] == ["alice", "eng"]
    assert "CANNOT" in run("explain", "--as", "alice", "eng-2").output
    w = json.loads(run("who-can-see", "eng-1", "--json").output)
    assert w == {"users": ["alice"], "roles": ["eng"]}


def test_audit_lists_searches(store) -> None:
    home, run = store
    run("search", "--as", "alice", "leave", "--encoder", "hash")
    rows = json.loads(run("audit", "--user", "alice", "--json", "--limit", "1").output)
    assert rows[0]["user"] == "alice" and rows[0]["event"] == "search" and rows[0]["queries"] == ["leave"]
    assert json.loads(run("audit", "--user", "nobody-searched", "--json").output) == []


def test_policy_export_import_check(store, tmp_path) -> None:
    home, run = store
    out = tmp_path / "p.csv"
    run("policy", "export", str(out))
    assert "p, eng, default, dept:eng, read, allow" in out.read_text()
    other = tmp_path / "other"
    runner = CliRunner()
    assert runner.invoke(main, ["--home", str(other), "init"]).exit_code == 0
    assert runner.invoke(main, ["--home", str(other), "policy", "import", str(out)]).exit_code == 0
    findings = json.loads(runner.invoke(main, ["--home", str(other), "policy", "check", "--json"]).output)
    kinds = {f["kind"] for f in findings}
    assert "no-match" in kinds  # the other home has no rows


def test_revoke_unassign_remove(tmp_path) -> None:
    runner = CliRunner()
    h = ["--home", str(tmp_path / "h")]
    for args in (["init"], ["role", "add", "r"], ["grant", "r", "*"], ["user", "assign", "u", "r"], ["revoke", "r", "*"], ["user", "unassign", "u", "r"], ["role", "remove", "r"]):
        res = runner.invoke(main, h + args)
        assert res.exit_code == 0, (args, res.output)
    assert json.loads(runner.invoke(main, h + ["role", "list", "--json"]).output) == []


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["grant", "ghost", "*"], "unknown role 'ghost'"),
        (["user", "assign", "bob", "ghost"], "unknown role"),
        (["grant", "eng", "nocolon"], "malformed selector"),
        (["explain", "--as", "alice", "no-such-doc"], "no row 'no-such-doc'"),
        (["user", "unassign", "alice", "nothing"], "does not hold"),
        (["search", "--as", "mallory", "deploy", "--encoder", "hash"], "unknown user 'mallory'"),
        (["user", "show", "mallory"], "unknown user 'mallory'"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(store, args, fragment) -> None:
    home, run = store
    with PermRAG.open(home, catalog_only=True) as rag:
        before = (rag.policy_version, rag.catalog_version, rag.policy.export_csv())
    res = CliRunner().invoke(main, ["--home", str(home), *args])
    assert res.exit_code == 1
    assert fragment in res.output and len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    with PermRAG.open(home, catalog_only=True) as rag:
        assert (rag.policy_version, rag.catalog_version, rag.policy.export_csv()) == before


def test_malformed_csv_names_the_line(store, tmp_path) -> None:
    home, run = store
    bad = tmp_path / "bad.csv"
    bad.write_text("p, eng, default, dept:eng, read, allow\np, eng, default\n")
    with PermRAG.open(home, catalog_only=True) as rag:
        before = (rag.policy_version, rag.policy.export_csv())
    res = CliRunner().invoke(main, ["--home", str(home), "policy", "import", str(bad)])
    assert res.exit_code == 1 and "line 2" in res.output and len(res.output.strip().splitlines()) == 1
    with PermRAG.open(home, catalog_only=True) as rag:
        assert (rag.policy_version, rag.policy.export_csv()) == before


def test_ingest_a_folder_with_folder_attrs_and_sidecars(tmp_path) -> None:
    src = tmp_path / "kb"
    (src / "hr" / "public").mkdir(parents=True)
    (src / "eng").mkdir()
    (src / "hr" / "public" / "leave.md").write_text("Parental leave is twenty weeks.")
    (src / "eng" / "deploy.txt").write_text("Deploy on Tuesdays.")
    (src / "eng" / "deploy.txt.attrs.json").write_text('{"dept": "eng", "level": "internal"}')
    h = ["--home", str(tmp_path / "h")]
    runner = CliRunner()
    assert runner.invoke(main, h + ["init"]).exit_code == 0
    res = runner.invoke(main, h + ["ingest", str(src), "--encoder", "hash", "--folder-attrs", "dept,level"])
    assert res.exit_code == 0, res.output
    with PermRAG.open(tmp_path / "h", catalog_only=True) as rag:
        assert rag.row("hr/public/leave.md").attrs == {"dept": "hr", "level": "public", "source": "hr/public/leave.md"}
        assert rag.row("eng/deploy.txt").attrs == {"dept": "eng", "level": "internal", "source": "eng/deploy.txt"}


def test_missing_home_and_unreachable_milvus(tmp_path) -> None:
    res = CliRunner().invoke(main, ["--home", str(tmp_path / "nope"), "role", "list"])
    assert res.exit_code == 1 and "does not exist" in res.output and not (tmp_path / "nope").exists()
    h = tmp_path / "h"
    assert CliRunner().invoke(main, ["--home", str(h), "init"]).exit_code == 0
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"external_id": "x", "text": "hello"}\n')
    res = CliRunner().invoke(main, ["--home", str(h), "--milvus-uri", "http://127.0.0.1:9", "ingest", str(docs), "--encoder", "hash"])
    assert res.exit_code == 1 and "Milvus" in res.output and len(res.output.strip().splitlines()) == 1
    with PermRAG.open(h, catalog_only=True) as rag:
        assert rag.catalog_version == 0 and rag.catalog.by_state("pending") == []


def test_usage_error_exits_2(tmp_path) -> None:
    assert CliRunner().invoke(main, ["search"]).exit_code == 2
    assert CliRunner().invoke(main, ["no-such-command"]).exit_code == 2


def test_demo_runs_on_the_embedded_default(tmp_path) -> None:
    res = CliRunner().invoke(main, ["--home", str(tmp_path / "h"), "demo"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "Parental leave policy" in out and "年假" in out
    assert "carol CAN read 'legal-acme-contract'" in out
    assert "alice CANNOT read 'eng-keys'" in out
