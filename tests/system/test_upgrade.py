"""Upgrades keep stores: a store made by permrag 0.2.0 — that release's own
code, taken from this repository's history — opens with this version and
answers every question as before; later writes carry it forward. Its schema
is brought to this version by Alembic (permrag/storage/migrations): at open, or by
``permrag upgrade``; a migration that fails leaves it for 0.2.0 to open.

The old store holds what 0.2.0 could make: role rules, a document ACL, a
folder ACL, groups from an identity export, a folder sync and a derived row.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import sqlalchemy as sa

from permrag import PermRAG
from permrag.backends import collection_check
from permrag.backends.schema import tenant_schema
from permrag.errors import ConfigError
from permrag.storage.migrations import HEAD, VERSION_TABLE, Plan, Revision, runner

from ..helpers import old_release, revisions

ROOT = Path(__file__).resolve().parents[2]
USERS = ["alice", "bob", "carol", "dave", "nobody"]
QUERIES = ["leave policy", "salary bands", "storage design", "budget"]

BUILD = r"""
import json, pathlib, sys
from permrag import PermRAG
home, folder = sys.argv[1], pathlib.Path(sys.argv[2])
rag = PermRAG.open(home, encoder="hash")
rag.add_documents([
    {"external_id": "leave", "text": "Parental leave policy: 20 weeks.", "attrs": {"dept": "hr", "level": "public"}},
    {"external_id": "pay", "text": "Salary bands for 2026.", "attrs": {"dept": "hr", "level": "confidential"}},
    {"external_id": "design", "text": "Storage design notes.", "acl": {"folder": "/eng/specs"}},
    {"external_id": "offsite", "text": "Offsite budget and plans.", "acl": {"allow": ["user:carol"], "deny": ["group:platform"]}},
])
p = rag.policy
p.add_role("staff"); p.grant("staff", "level:public")
p.add_role("hr"); p.grant("hr", "dept:hr"); p.deny("hr", "level:confidential"); p.inherit("hr", "staff")
p.grant("staff", "folder:hr"); p.assign_user("alice", "hr"); p.assign_user("dave", "staff")
csv = pathlib.Path(home) / "groups.csv"
csv.write_text("group,member\nplatform,user:bob\nengineering,group:platform\nengineering,user:carol\n")
rag.identity.sync(str(csv))
rag.identity.set_folder_acl("/eng", allow=["group:engineering"])
rag.sync_folder(folder)
rag.add_generated("Summary: leave is 20 weeks.", sources=["leave"], user="alice", external_id="leave-summary")
out = {}
for u in sys.argv[3].split(","):
    out[u] = {
        "visible": sorted(r.external_id for r in rag.rows(rag.visible(u))),
        "search": {q: [h.external_id for h in rag.search(q, user=u, k=5, mode="dense")] for q in sys.argv[4].split(",")},
    }
rag.close()
print(json.dumps(out))
"""


class OldStore(NamedTuple):
    home: Path  # opened by the first test (upgraded at open)
    folder: Path  # the synced folder
    before: dict  # what 0.2.0 answered
    code: Path  # 0.2.0's code (PYTHONPATH)
    pristine: Path  # a copy of the home as 0.2.0 left it


@pytest.fixture(scope="module")
def old_store(tmp_path_factory) -> OldStore:
    """A home made by 0.2.0, and what 0.2.0 answered in it."""
    base = tmp_path_factory.mktemp("upgrade")
    code = old_release.extract(base / "old")
    folder = base / "handbook"
    (folder / "hr").mkdir(parents=True)
    (folder / "hr" / "holidays.md").write_text("# Holidays\n\nThe office closes for the holidays in December.\n")
    (folder / "eng.txt").write_text("Storage design review checklist for the platform team.\n")
    home = base / "home"
    out = old_release.run(code, BUILD, str(home), str(folder), ",".join(USERS), ",".join(QUERIES), cwd=base)
    pristine = base / "pristine"  # as 0.2.0 left it, for the tests that upgrade a copy
    shutil.copytree(home, pristine)
    return OldStore(home, folder, json.loads(out.strip().splitlines()[-1]), code, pristine)


def answers(rag: PermRAG) -> dict:
    return {
        u: {
            "visible": sorted(r.external_id for r in rag.rows(rag.visible(u))),
            "search": {q: [h.external_id for h in rag.search(q, user=u, k=5, mode="dense")] for q in QUERIES},
        }
        for u in USERS
    }


def test_a_0_2_0_store_answers_as_before_and_takes_new_writes(old_store) -> None:
    home, folder, before = old_store.home, old_store.folder, old_store.before
    assert before["alice"]["visible"] and "leave-summary" in before["alice"]["visible"]  # the old store is not empty
    assert revision(home) is None
    with PermRAG.open(home) as rag:
        assert revision(home) == HEAD and drift(home) == []  # the open ran the (additive) revisions
        assert answers(rag) == before
        collection_made_by_0_2_0_passes_the_hook(rag)
        # a re-sync of the same folder changes nothing and keeps the ids 0.2.0 gave its files
        report = rag.sync_folder(folder)
        assert report.ok and not (report.added or report.changed or report.metadata or report.restored or report.deleted), report.describe()
        assert rag.can_read("dave", "hr/holidays.md")
        # lineage written by 0.2.0 survives an ACL change of its source (read by name now)
        rag.update_metadata("leave", attrs={"dept": "hr", "level": "public", "reviewed": "yes"})
        assert rag.can_read("alice", "leave-summary")
        # identity from 0.2.0's export keeps its groups as ids
        assert rag.can_read("bob", "design") and not rag.can_read("bob", "offsite")
        after = answers(rag)  # 'leave' has a new row ID now: rows that tie may trade places, nothing else changes
        for u in USERS:
            assert after[u]["visible"] == before[u]["visible"]
            assert {q: set(ids) for q, ids in after[u]["search"].items()} == {q: set(ids) for q, ids in before[u]["search"].items()}


def collection_made_by_0_2_0_passes_the_hook(rag: PermRAG) -> None:
    """The Milvus side's upgrade hook: the collection 0.2.0 made has this
    permrag's schema; one more field in the schema would be refused, naming permrag upgrade."""
    from pymilvus import DataType, MilvusClient

    backend = rag.backend
    name = backend.name(rag.catalog.tenants.number("default"))
    described = backend.client().describe_collection(name)
    expected, _ = tenant_schema(MilvusClient, rag.encoder.dim, backend.index, backend.capabilities.bm25, backend.analyzer)
    assert collection_check.differences(described, expected) == []
    expected.add_field("owner", DataType.VARCHAR, max_length=64)
    assert collection_check.differences(described, expected) == ["no field 'owner'"]
    with pytest.raises(ConfigError, match="another schema") as err:
        collection_check.check(name, described, expected)
    assert "`permrag upgrade`" in err.value.for_cli()


def revision(home: Path) -> str | None:
    """The store's recorded schema revision (None: none recorded, as 0.2.0 left it)."""
    with sqlite3.connect(home / "permrag.db") as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (VERSION_TABLE,)).fetchall():
            return None
        (row,) = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
        return row[0]


def dump(home: Path) -> list[str]:
    """Every statement that would rebuild the store's database: schema and rows."""
    conn = sqlite3.connect(home / "permrag.db")
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def drift(home: Path) -> list:
    engine = sa.create_engine(f"sqlite:///{home / 'permrag.db'}")
    try:
        with engine.connect() as conn:
            return runner.drift(conn)
    finally:
        engine.dispose()


def test_revision_0001_is_the_schema_0_2_0_made(old_store, tmp_path) -> None:
    """The first revision, run on an empty database, makes the tables, columns
    and indexes that 0.2.0's own code made."""
    url = f"sqlite:///{tmp_path / 'first.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        runner.run(conn, Plan(None, False, "0001", (Revision("0001", "", True),)))
    engine.dispose()
    made = old_release.schema(f"sqlite:///{old_store.pristine / 'permrag.db'}")
    assert made and old_release.schema(url) == made


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "permrag", "--home", str(home), *args], capture_output=True, text=True, timeout=120, check=False)


def test_permrag_upgrade_dry_run_changes_nothing_and_the_upgrade_opens_at_head(old_store, tmp_path) -> None:
    home = tmp_path / "home"
    shutil.copytree(old_store.pristine, home)
    before = dump(home)
    pending = [s.revision for s in reversed(list(runner.scripts().iterate_revisions(HEAD, "0001")))]
    assert pending and pending[-1] == HEAD
    res = cli(home, "upgrade", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "from revision 0001 (made by permrag 0.2.0" in res.stdout and f"to revision {HEAD}" in res.stdout
    assert [line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ")] == pending
    assert "nothing was changed" in res.stdout and not res.stderr
    as_json = json.loads(cli(home, "upgrade", "--dry-run", "--json").stdout)
    assert (as_json["from"], as_json["from_recorded"], as_json["to"]) == ("0001", False, HEAD)
    assert [p["revision"] for p in as_json["pending"]] == pending
    assert dump(home) == before and revision(home) is None
    res = cli(home, "upgrade")
    assert res.returncode == 0, res.stderr
    assert f"ran {len(pending)} revision(s)" in res.stdout and not res.stderr
    assert revision(home) == HEAD and drift(home) == []
    res = cli(home, "upgrade")
    assert res.returncode == 0 and "nothing to run" in res.stdout
    with PermRAG.open(home) as rag:
        assert answers(rag) == old_store.before


OLD_READ = """
import json, sys
from permrag import PermRAG
rag = PermRAG.open(sys.argv[1], catalog_only=True)
print(json.dumps({u: sorted(r.external_id for r in rag.rows(rag.visible(u))) for u in sys.argv[2].split(",")}))
rag.close()
"""


def test_a_failing_migration_leaves_the_store_as_0_2_0_made_it(old_store, tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    shutil.copytree(old_store.pristine, home)
    before = dump(home)
    monkeypatch.setattr(runner, "LOCATION", revisions.location_with(tmp_path, revisions.FAILING))
    with pytest.raises(ConfigError, match=f"from schema revision 0001 to {revisions.NEXT} failed at revision {revisions.NEXT}") as err:
        PermRAG.open(home, catalog_only=True)
    assert "left at 0001, unchanged" in str(err.value)
    assert dump(home) == before and revision(home) is None  # no column, no table, no counter, no stamp
    visible = json.loads(old_release.run(old_store.code, OLD_READ, str(home), ",".join(USERS)).strip().splitlines()[-1])
    assert visible == {u: old_store.before[u]["visible"] for u in USERS}  # 0.2.0 still opens it and answers as before
    monkeypatch.setattr(runner, "LOCATION", runner.HERE)
    with PermRAG.open(home, catalog_only=True) as rag:  # this permrag's own revisions still run
        assert revision(home) == HEAD
        assert {u: sorted(r.external_id for r in rag.rows(rag.visible(u))) for u in USERS} == visible
