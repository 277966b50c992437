"""Every CLI command, given what users get wrong: one line, a documented exit
code (1 for errors, 2 for usage), never a Python traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from permrag.cli import main
from permrag.cli.doc import commands


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("clierr") / "home"
    docs = tmp_path_factory.mktemp("docs") / "d.jsonl"
    docs.write_text(json.dumps({"external_id": "a", "text": "budget", "attrs": {"dept": "eng"}}) + "\n")
    for args in (["init", "--encoder", "hash"], ["ingest", str(docs)], ["role", "add", "eng"], ["grant", "eng", "dept:eng"], ["user", "assign", "ann", "eng"]):
        res = CliRunner().invoke(main, ["--home", str(h), *args])
        assert res.exit_code == 0, res.output
    return h


def check(res, code: int) -> None:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    if code == 1:
        lines = [line for line in res.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.output


def invoke(home, *args):
    return CliRunner().invoke(main, ["--home", str(home), *args])


def test_every_command_without_its_arguments_is_a_usage_error(home):
    for full, cmd in commands():
        required = [p for p in cmd.params if getattr(p, "required", False)]
        if not required or full == "permrag":
            continue
        res = invoke(home, *full.split()[1:])
        check(res, 2)


UNKNOWN = [
    ["role", "remove", "ghost"],
    ["role", "inherit", "ghost", "eng"],
    ["role", "uninherit", "eng", "ghost"],
    ["role", "list", "--tenant", "nowhere"],
    ["grant", "ghost", "*"],
    ["deny", "ghost", "*"],
    ["grant", "eng", "bad selector"],
    ["revoke", "eng", "dept:none"],
    ["user", "assign", "ann", "ghost"],
    ["user", "unassign", "ann", "ghost"],
    ["user", "show", "mallory"],
    ["user", "list", "--tenant", "nowhere"],
    ["search", "x", "--as", "mallory"],
    ["search", "x", "--as", "ann", "--tenant", "nowhere"],
    ["explain", "ghost-doc", "--as", "ann"],
    ["explain", "a", "--as", "ann", "--tenant", "nowhere"],
    ["who-can-see", "ghost-doc"],
    ["delete", "a", "--tenant", "nowhere"],
    ["policy", "export", "-", "--tenant", "nowhere"],
    ["policy", "check", "--tenant", "nowhere"],
    ["search", "x", "--as", "ann", "--encoder", "random-16"],
]


@pytest.mark.parametrize("args", UNKNOWN, ids=[" ".join(a) for a in UNKNOWN])
def test_unknown_names_are_one_line_errors(home, args):
    check(invoke(home, *args), 1)


def test_unknown_tenants_are_reported_the_same_way_by_every_command(home):
    for args in (a for a in UNKNOWN if "nowhere" in a):
        assert "unknown tenant 'nowhere'" in invoke(home, *args).output


def test_unreadable_files(home, tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("p, caf\xe9, default, *, read, allow\n".encode("latin-1"))
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"external_id": "x", "text": "ok"}\n{"external_id": 5, "text": "bad"}\n')
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(b"%PDF-1.4 not really a pdf")  # (text files are decoded by detection now)
    for args, fragment in (
        (["ingest", str(tmp_path / "missing.jsonl")], "no such file"),
        (["ingest", str(bad_jsonl)], "line 2"),
        (["policy", "import", str(tmp_path / "missing.csv")], "missing.csv"),
        (["policy", "import", str(latin)], "not UTF-8"),
        (["policy", "export", "/proc/no/such/file.csv"], "cannot write"),
    ):
        res = invoke(home, *args)
        check(res, 1)
        assert fragment in res.output, res.output
    # a folder reports every file that failed (several lines) and exits 1
    res = invoke(home, "ingest", str(folder))
    assert res.exit_code == 1 and "Traceback" not in res.output and "a.pdf: not a readable PDF" in res.output, res.output


def test_unreachable_servers(home):
    for args in (["--milvus-uri", "http://127.0.0.1:9", "search", "budget", "--as", "ann"], ["--milvus-uri", "http://127.0.0.1:9", "reconcile", "--full"]):
        res = invoke(home, *args)
        check(res, 1)
        assert "Milvus" in res.output
    for args in (["role", "list"], ["user", "show", "ann"], ["config", "show"]):
        res = invoke(home, "--database-url", "postgresql://nobody:pw@127.0.0.1:1/none", *args)
        check(res, 0 if args == ["config", "show"] else 1)


def test_version_help_and_hints_in_cli_syntax(home, tmp_path):
    from permrag import __version__

    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"permrag {__version__}"
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0
    docs = tmp_path / "again.jsonl"
    docs.write_text(json.dumps({"external_id": "a", "text": "again"}) + "\n")
    res = invoke(home, "ingest", str(docs))
    check(res, 1)
    assert "--replace" in res.output and "replace=True" not in res.output


def test_policy_export_to_stdout_and_check_exit_codes(home):
    res = invoke(home, "policy", "export", "-")
    assert res.exit_code == 0 and res.output.startswith("# permrag policy") and "p, eng, default, dept:eng, read, allow" in res.output
    res = invoke(home, "role", "add", "idle")
    assert res.exit_code == 0
    res = invoke(home, "policy", "check")
    assert res.exit_code == 1 and "unused-role" in res.output
    invoke(home, "role", "remove", "idle")
    res = invoke(home, "policy", "check")
    assert res.exit_code == 0 and "no findings" in res.output


def test_reconcile_says_what_it_checked(home):
    res = invoke(home, "reconcile")
    assert res.exit_code == 0 and "not scanned" in res.output and "orphan" not in res.output.replace("not scanned for orphans", "")
    res = invoke(home, "reconcile", "--full")
    assert res.exit_code == 0 and "orphan Milvus rows removed" in res.output


def test_user_and_tenant_lists_and_delete(home, tmp_path):
    assert json.loads(invoke(home, "user", "list", "--json").output) == [{"user": "ann", "roles": ["eng"]}]
    tenants = json.loads(invoke(home, "tenant", "list", "--json").output)
    assert tenants == [{"tenant": "default", "rows": 1, "roles": 1, "users": 1}]
    docs = tmp_path / "more.jsonl"
    docs.write_text(json.dumps({"external_id": "gone", "text": "soon deleted"}) + "\n")
    assert invoke(home, "ingest", str(docs)).exit_code == 0
    res = invoke(home, "delete", "gone")
    assert res.exit_code == 0 and "deleted 1 rows" in res.output
    res = invoke(home, "deny", "eng", "dept:hr")
    assert res.exit_code == 0 and "deny dept:hr" in res.output
