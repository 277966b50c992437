"""A store's files (issue 34, points 8, 9 and 11): private to their owner,
never silently repointed or made where a store should be found, and a
Milvus Lite folder handed over between processes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from permrag import PermRAG, StoreMismatchError, config
from permrag.cli import main
from permrag.embed import HashEncoder
from permrag.errors import NoStoreError, RepointError, StoreLockedError

ROOT = Path(__file__).resolve().parents[2]


def run(*args, code=0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    return res.output


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tables(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()


def other_database(kind: str, tmp_path: Path, request) -> str:
    return request.getfixturevalue("pg_url") if kind == "postgres" else f"sqlite:///{tmp_path / 'elsewhere' / 'other.db'}"


def has_no_store(url: str, tmp_path: Path) -> bool:
    """The database holds no permrag table (and a SQLite one was not even made)."""
    if url.startswith("sqlite"):
        return not (tmp_path / "elsewhere" / "other.db").exists()
    return not [t for t in tables(url) if t.startswith("permrag")]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def with_docs(rag: PermRAG) -> PermRAG:
    rag.add_documents([{"external_id": f"d{i}", "text": f"budget plan {i}", "attrs": {"dept": "eng"}} for i in range(5)])
    rag.policy.add_role("eng")
    rag.policy.grant("eng", "dept:eng")
    rag.policy.assign_user("ann", "eng")
    return rag


# ---------------------------------------------------------------- 8. private files
def test_a_new_store_s_files_are_private_under_umask_022(tmp_path, umask_022):
    home = tmp_path / "h"
    run("--home", home, "init", "--encoder", "hash")
    assert mode(home) == 0o700 and mode(home / "config.toml") == 0o600 and mode(home / "permrag.db") == 0o600
    with with_docs(PermRAG.open(home)) as rag:
        assert [h.external_id for h in rag.search("budget", user="ann", mode="dense", k=1)]
        # while it is open, SQLite's WAL and SHM exist and the Lite folder has been made
        for name in ("permrag.db", "permrag.db-wal", "permrag.db-shm"):
            assert mode(home / name) == 0o600, name
        assert mode(home / "milvus.db") == 0o700
    # the library's own first open of a fresh home, and a SQLite catalog outside the home
    lib, outside = tmp_path / "lib", tmp_path / "dbs"
    outside.mkdir()
    with with_docs(PermRAG.open(lib, database_url=f"sqlite:///{outside / 'cat.db'}", encoder=HashEncoder(16))):
        assert mode(lib) == 0o700 and mode(lib / "milvus.db") == 0o700
        assert {name: mode(outside / name) for name in ("cat.db", "cat.db-wal", "cat.db-shm")} == dict.fromkeys(("cat.db", "cat.db-wal", "cat.db-shm"), 0o600)
    assert run("--home", home, "config", "show", "--json").count("other local users") == 0


def test_config_show_warns_about_files_other_users_can_open(tmp_path, umask_022):
    home = tmp_path / "h"
    run("--home", home, "init", "--encoder", "hash", "--milvus-token", "root:secret")
    PermRAG.open(home, create=False).close()
    assert json.loads(run("--home", home, "config", "show", "--json"))["warnings"] == []
    os.chmod(home, 0o755)
    os.chmod(home / "permrag.db", 0o644)
    os.chmod(home / "config.toml", 0o640)
    out = run("--home", home, "config", "show")
    warned = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warned) == 3 and all("other local users" in w for w in warned)
    assert any(f"{home} is mode 0755" in w and "chmod 700" in w for w in warned)
    assert any(f"{home / 'permrag.db'} is mode 0644" in w and "chmod 600" in w for w in warned)
    shown = json.loads(run("--home", home, "config", "show", "--json"))  # only JSON: the warnings are in it
    assert len(shown["warnings"]) == 3 and "secret" not in json.dumps(shown)
    # nothing was changed by looking: the modes stay as the user left them
    assert mode(home) == 0o755 and mode(home / "permrag.db") == 0o644


# ---------------------------------------------------------------- 9. no silent repointing
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_init_refuses_to_repoint_a_home_without_force(kind, tmp_path, request, monkeypatch):
    home = tmp_path / "h"
    run("--home", home, "init", "--encoder", "hash")
    run("--home", home, "role", "add", "eng")
    before = (home / "config.toml").read_bytes()
    url = other_database(kind, tmp_path, request)
    (tmp_path / "elsewhere").mkdir()
    out = run("--home", home, "init", "--database-url", url, "--collection", "other", code=1)
    assert out.startswith("error: ") and len(out.strip().splitlines()) == 1
    assert "database_url" in out and "collection permrag -> other" in out and "--force" in out
    assert (home / "config.toml").read_bytes() == before and has_no_store(url, tmp_path)
    assert "eng" in run("--home", home, "role", "list")  # still the home's own store
    # a re-run with the same settings is not a change, nor the same files named by other paths
    run("--home", home, "init", "--encoder", "hash")
    monkeypatch.chdir(tmp_path)
    run("--home", home, "init", "--database-url", "sqlite:///h/../h/permrag.db", "--milvus-uri", "h/milvus.db")
    (home / "config.toml").write_bytes(before)
    # --force repoints, says what changed, and makes the store there
    out = run("--home", home, "init", "--database-url", url, "--force")
    assert "changed database_url" in out
    assert "eng" not in run("--home", home, "role", "list")  # the new (empty) store is the home's now
    assert not has_no_store(url, tmp_path)
    # the library's form of the same check: going back to the home's own SQLite file is a change too
    with pytest.raises(RepointError, match="database_url"):
        config.check_repoint(config.resolve(home, database_url=f"sqlite:///{home / 'permrag.db'}"))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_command_pointed_at_a_database_without_the_store_creates_nothing(kind, tmp_path, request):
    home = tmp_path / "h"
    run("--home", home, "init", "--encoder", "hash")
    url = other_database(kind, tmp_path, request)
    (tmp_path / "elsewhere").mkdir()
    for args in (["role", "list"], ["role", "add", "eng"], ["search", "x", "--as", "ann"], ["audit"]):
        out = run("--home", home, "--database-url", url, *args, code=1)
        assert "no permrag store in" in out and "permrag init" in out and len(out.strip().splitlines()) == 1, out
        assert has_no_store(url, tmp_path)
    # the library: a home whose store is elsewhere is refused, explicitly creating is allowed
    with pytest.raises(StoreMismatchError, match="no permrag store in"):
        PermRAG.open(home, database_url=url, catalog_only=True)
    (tmp_path / "new").mkdir()
    with pytest.raises(NoStoreError):
        PermRAG.open(tmp_path / "new", database_url=url, catalog_only=True, create=False)
    assert has_no_store(url, tmp_path)
    PermRAG.open(home, database_url=url, catalog_only=True, create=True).close()
    PermRAG.open(home, database_url=url, catalog_only=True).close()  # found now
    assert not has_no_store(url, tmp_path)


def test_an_empty_sqlite_file_gets_no_tables_from_a_read_command(tmp_path):
    home = tmp_path / "h"
    run("--home", home, "init")
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    out = run("--home", home, "--database-url", f"sqlite:///{empty}", "user", "list", code=1)
    assert "no permrag store in" in out
    assert tables(f"sqlite:///{empty}") == []


def test_a_home_whose_database_was_removed_is_not_given_a_new_one(tmp_path):
    home = tmp_path / "h"
    run("--home", home, "init")
    (home / "permrag.db").unlink()
    out = run("--home", home, "role", "list", code=1)
    assert "no permrag store in" in out and not (home / "permrag.db").exists()
    with pytest.raises(NoStoreError, match="records its store there"):
        PermRAG.open(home, catalog_only=True)
    assert not (home / "permrag.db").exists()


def test_a_new_user_s_first_open_still_creates_the_store(tmp_path):
    with PermRAG.open(tmp_path / "fresh", catalog_only=True) as rag:  # no config.toml, no database: how users start
        rag.policy.add_role("r")
    with PermRAG.open(tmp_path / "fresh", catalog_only=True) as rag:
        assert rag.policy.roles() == ["r"]


FIRST_OPEN = """
import sys, time
from pathlib import Path
from permrag import PermRAG
import permrag.core  # imported before the start line, so that the opens meet
Path(sys.argv[2] + sys.argv[3]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
with PermRAG.open(sys.argv[1], catalog_only=True) as rag:
    rag.policy.add_role("r" + sys.argv[3])
print("ok")
"""


def test_processes_opening_a_new_home_at_once_all_find_or_make_its_store(tmp_path):
    """The first to come makes the home's permrag.db; the others, finding the
    file, complete or find the store there rather than being refused."""
    home, go = tmp_path / "h", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_OPEN, str(home), str(go), str(i)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}{i}").exists() for i in range(4)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [out.strip() for out, _ in results] == ["ok"] * 4, [err[-500:] for _, err in results]
    with PermRAG.open(home, catalog_only=True) as rag:
        assert rag.policy.roles() == ["r0", "r1", "r2", "r3"]


def test_init_checks_that_the_milvus_server_answers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "h"
    out = run("--home", home, "init", "--milvus-uri", f"http://127.0.0.1:{port}", "--milvus-token", "root:pw-secret", code=1)
    assert "cannot reach the Milvus server" in out and "nothing was written" in out and "pw-secret" not in out
    assert not home.exists()
    out = run("--home", home, "init", "--milvus-uri", tmp_path / "no" / "such" / "m.db", code=1)
    assert "does not exist" in out and not home.exists()
    out = run("--home", home, "init", "--milvus-uri", tmp_path / "vectors", code=1)
    assert "must end in .db" in out and not home.exists()
    run("--home", home, "init", "--milvus-uri", tmp_path / "m.db")  # a Lite folder outside the home
    assert config.resolve(home).milvus_uri == str(tmp_path / "m.db")


# ---------------------------------------------------------------- 11. Milvus Lite hand-over
HOLDER = """
import sys
from permrag import PermRAG
from permrag.embed import HashEncoder
rag = PermRAG.open(sys.argv[1], encoder=HashEncoder(16))
ids = [h.external_id for h in rag.search("budget", user="ann", mode="dense", k=2)]
if sys.argv[2] == "close":
    rag.close()
print("ready", len(ids), flush=True)
sys.stdin.readline()  # alive until told to go
"""


def holder(home: Path, close: bool) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home), "close" if close else "keep"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        pytest.fail(f"the holder did not start: {line} {proc.stderr.read()[-2000:]}")
    assert line.split() == ["ready", "2"]
    return proc


def test_close_hands_the_lite_folder_to_another_process(tmp_path):
    home = tmp_path / "h"
    with_docs(PermRAG.open(home, encoder=HashEncoder(16))).close()
    proc = holder(home, close=True)  # opened, searched, closed, and still alive
    try:
        with PermRAG.open(home) as rag:
            assert [h.external_id for h in rag.search("budget plan 3", user="ann", mode="dense", k=1)] == ["d3"]
        hits = json.loads(run("--home", home, "search", "budget", "--as", "ann", "--mode", "dense", "--json"))
        assert len(hits) == 5
    finally:
        proc.communicate("go\n", timeout=60)


def test_a_lite_folder_held_by_another_process_says_what_holds_it(tmp_path):
    home = tmp_path / "h"
    with_docs(PermRAG.open(home, encoder=HashEncoder(16))).close()
    proc = holder(home, close=False)  # keeps it open, as a running `permrag mcp` does
    try:
        rag = PermRAG.open(home)
        with pytest.raises(StoreLockedError, match="permrag mcp") as caught:
            rag.search("budget", user="ann", mode="dense")
        assert "Milvus server" in str(caught.value)
        assert rag.can_read("ann", "d1")  # the catalog still answers
        rag.close()
        out = run("--home", home, "search", "budget", "--as", "ann", code=1)
        assert out.startswith("error: ") and len(out.strip().splitlines()) == 1
        assert "in use by another process" in out and "permrag init --milvus-uri" in out
        assert "eng" in run("--home", home, "role", "list")  # commands without vectors keep working
    finally:
        proc.communicate("go\n", timeout=60)
    with PermRAG.open(home) as rag:  # the holder exited: the folder is free
        assert len(rag.search("budget", user="ann", mode="dense")) == 5


def test_closing_one_of_two_stores_on_one_folder_keeps_the_other_working(tmp_path):
    home = tmp_path / "h"
    first = with_docs(PermRAG.open(home, encoder=HashEncoder(16)))
    second = PermRAG.open(home)
    assert len(first.search("budget", user="ann", mode="dense")) == 5
    assert len(second.search("budget", user="ann", mode="dense")) == 5
    first.close()
    assert len(second.search("budget", user="ann", mode="dense")) == 5
    second.close()
    proc = holder(home, close=True)  # and the last close released it
    proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0
