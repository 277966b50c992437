"""The catalog's schema revisions (permrag/storage/migrations), on SQLite and PostgreSQL.

* a new store (``create_all`` stamped at the head), a database taken through
  every revision, and a store made by permrag 0.2.0 then opened here have one
  schema, and Alembic's comparison finds no difference from permrag.storage.db's
  tables (so a table or column added there without a revision fails here);
* processes that open an old store at the same moment migrate it once;
* a revision that fails midway changes nothing; a store a newer permrag
  upgraded is refused, naming both revisions; a revision that is not
  additive waits for ``permrag upgrade``.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from permrag import PermRAG, config
from permrag.errors import ConfigError, NoStoreError
from permrag.storage import migrations as mig
from permrag.storage.create import init_schema, upgrade_store
from permrag.storage.db import dispose, make_engine, metadata
from permrag.storage.migrations import FIRST, HEAD, VERSION_TABLE, author, runner

from ..helpers import old_release, revisions
from ..helpers.revisions import NEXT

MAKE_OLD = """
import sys
from permrag import PermRAG
rag = PermRAG.open(sys.argv[1], database_url=sys.argv[2], catalog_only=True)
rag.policy.add_role("staff"); rag.policy.grant("staff", "level:public"); rag.policy.assign_user("alice", "staff")
rag.add_documents([{"external_id": "a", "text": "a", "attrs": {"level": "public"}}])
rag.close()
"""


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    return old_release.extract(tmp_path_factory.mktemp("release-0.2.0"))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'permrag.db'}"


def make_old(code: Path, url: str, home: Path) -> None:
    """A store made by permrag 0.2.0 in ``url``: roles, a grant, a user, a row."""
    old_release.run(code, MAKE_OLD, str(home), url)


def state(url: str) -> dict:
    """The schema and every row of every permrag table (the revision's too)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            names = sorted(t for t in sa.inspect(conn).get_table_names() if t.startswith("permrag_"))
            rows = {t: sorted(map(repr, conn.execute(sa.text(f'SELECT * FROM "{t}"')).all())) for t in names}
    finally:
        engine.dispose()
    return {"schema": old_release.schema(url), "rows": rows}


def revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return mig.recorded(conn, set(sa.inspect(conn).get_table_names()))
    finally:
        engine.dispose()


def drift(url: str, target: sa.MetaData = metadata) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return runner.drift(conn, target)
    finally:
        engine.dispose()


def drop_all(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        found = sa.MetaData()
        found.reflect(conn)
        found.drop_all(conn)
    engine.dispose()


def open_new(url: str) -> None:
    """Open (make, or migrate) the store at ``url`` as PermRAG.open does."""
    engine = make_engine(url)
    try:
        init_schema(engine)
    finally:
        dispose(engine)


def test_the_revisions_form_one_line_from_0001_to_head() -> None:
    script = runner.scripts()
    assert runner.head() == HEAD and FIRST == "0001"
    chain = list(reversed(list(script.iterate_revisions(HEAD, None))))
    assert chain[0].revision == FIRST and chain[0].down_revision is None
    assert all(later.down_revision == earlier.revision for earlier, later in itertools.pairwise(chain))
    assert all(isinstance(s.module.additive, bool) for s in chain), "every revision says whether it only adds"


def test_fresh_migrated_and_0_2_0_stores_have_one_schema_the_metadata(url, old_code, tmp_path) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # every revision, from an empty database
        runner.run(conn, runner.plan(conn, url))
    engine.dispose()
    migrated = old_release.schema(url)
    assert revision(url) == HEAD and drift(url) == []
    drop_all(url)
    open_new(url)  # a new store: create_all, stamped at the head
    assert revision(url) == HEAD and drift(url) == [] and old_release.schema(url) == migrated
    drop_all(url)
    make_old(old_code, url, tmp_path / "old-home")
    made_by_0_2_0 = old_release.schema(url)
    open_new(url)  # 0.2.0's store, stamped at 0001 and taken to the head
    assert revision(url) == HEAD and drift(url) == [] and old_release.schema(url) == migrated
    drop_all(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # revision 0001 alone is what 0.2.0 made
        runner.run(conn, mig.Plan(None, False, FIRST, (mig.Revision(FIRST, "", True),)))
    engine.dispose()
    assert old_release.schema(url) == made_by_0_2_0
    # the comparison sees columns permrag.db has and no revision run here adds: 0002's, and one no revision adds
    target = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(target)
    target.tables["permrag_audit"].append_column(sa.Column("unmigrated", sa.String(8), nullable=True))
    added = {(d[2], d[3].name) for d in drift(url, target) if d[0] == "add_column"}
    assert added == {("permrag_audit", "agent"), ("permrag_tokens", "agent"), ("permrag_tokens", "scopes"), ("permrag_audit", "unmigrated")}


WORKER = """
import logging, os, sys, time
from pathlib import Path
from permrag.storage.db import make_engine, dispose
from permrag.storage.create import init_schema
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s %(message)s")
logging.getLogger("permrag.storage.create").setLevel(logging.INFO)
gate, me, n = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
(gate / me).touch()
while len(list(gate.iterdir())) < n:
    time.sleep(0.002)
engine = make_engine(sys.argv[1])
init_schema(engine, create=False)
dispose(engine)
print("opened")
"""


def test_processes_opening_an_old_store_at_once_migrate_it_once(url, old_code, tmp_path) -> None:
    make_old(old_code, url, tmp_path / "old-home")
    before = state(url)["rows"]["permrag_casbin_rule"]
    gate, n = tmp_path / "gate", 4
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(gate), str(i), str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert all(out.strip().endswith("opened") for out, _ in outs)
    upgrades = [line for out, _ in outs for line in out.splitlines() if "upgraded the permrag store" in line]
    assert len(upgrades) == 1 and f"from schema revision {FIRST} to {HEAD}" in upgrades[0], upgrades
    after = state(url)
    assert revision(url) == HEAD and drift(url) == []
    assert after["rows"]["permrag_casbin_rule"] == before and after["rows"][VERSION_TABLE] == [repr((HEAD,))]


def test_a_revision_that_fails_midway_changes_nothing(url, tmp_path, monkeypatch) -> None:
    PermRAG.open(tmp_path / "home", database_url=url, catalog_only=True).close()
    before = state(url)
    monkeypatch.setattr(runner, "LOCATION", revisions.location_with(tmp_path, revisions.FAILING))
    monkeypatch.setattr(mig, "HEAD", NEXT)
    with pytest.raises(ConfigError, match=f"from schema revision {HEAD} to {NEXT} failed at revision {NEXT}") as err:
        PermRAG.open(tmp_path / "home", database_url=url, catalog_only=True)
    assert f"left at {HEAD}, unchanged" in str(err.value)
    assert state(url) == before
    monkeypatch.undo()
    PermRAG.open(tmp_path / "home", database_url=url, catalog_only=True).close()
    assert revision(url) == HEAD and drift(url) == []


def cli(url: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "permrag", "--home", str(home), "--database-url", url, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_a_store_a_newer_permrag_upgraded_is_refused_and_left_as_it_is(url, tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    PermRAG.open(home, database_url=url, catalog_only=True).close()
    with monkeypatch.context() as newer:  # a newer permrag: one more revision
        newer.setattr(runner, "LOCATION", revisions.location_with(tmp_path, revisions.ADDING))
        newer.setattr(mig, "HEAD", NEXT)
        PermRAG.open(home, database_url=url, catalog_only=True).close()
    assert revision(url) == NEXT
    before = state(url)
    with pytest.raises(ConfigError, match=f"at schema revision {NEXT}, which this permrag does not know \\(its newest is {HEAD}\\)") as err:
        PermRAG.open(home, database_url=url, catalog_only=True)
    assert "pip install -U permrag" in str(err.value)
    res = cli(url, home, "upgrade")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("error: ") and NEXT in res.stderr and f"its newest is {HEAD}" in res.stderr
    assert state(url) == before


def test_a_revision_that_is_not_additive_waits_for_permrag_upgrade(tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'permrag.db'}"
    home = tmp_path / "home"
    with PermRAG.open(home, database_url=url, catalog_only=True) as rag:
        rag.policy.add_role("staff")
    cfg = config.resolve(home, database_url=url)
    before = state(url)
    monkeypatch.setattr(runner, "LOCATION", revisions.location_with(tmp_path, revisions.REWRITING))
    monkeypatch.setattr(mig, "HEAD", NEXT)
    with pytest.raises(ConfigError, match=NEXT) as err:
        PermRAG.open(home, database_url=url, catalog_only=True)
    assert "permrag upgrade" in err.value.for_cli() and state(url) == before
    plan = upgrade_store(cfg, dry_run=True)
    assert (plan.start, plan.head, [(r.id, r.additive) for r in plan.pending]) == (HEAD, NEXT, [(NEXT, False)])
    assert state(url) == before
    done = upgrade_store(cfg)
    assert not done.dry_run and revision(url) == NEXT
    with PermRAG.open(home, database_url=url, catalog_only=True):
        assert "ix_permrag_audit_event" in {i["name"] for i in sa.inspect(sa.create_engine(url)).get_indexes("permrag_audit")}


def test_upgrade_of_a_database_without_a_store_makes_nothing(tmp_path) -> None:
    path = tmp_path / "none.db"
    cfg = config.resolve(tmp_path / "home", database_url=f"sqlite:///{path}")
    with pytest.raises(NoStoreError):
        upgrade_store(cfg)
    assert not path.exists()
    res = cli(f"sqlite:///{path}", tmp_path / "home", "upgrade", "--dry-run")
    assert res.returncode == 1 and res.stderr.startswith("error: no permrag store") and not path.exists()


def test_a_change_of_permrag_db_becomes_a_revision_that_closes_the_difference(tmp_path) -> None:
    """The developers' tool (permrag.storage.migrations.author): a table, a nullable
    column and an index added to the tables become one additive revision
    after the head; run from an empty database, the revisions then make
    exactly those tables. A NOT NULL column is not additive."""
    location = revisions.location_with(tmp_path, "")
    (Path(location) / "versions" / f"rev{NEXT}_test.py").unlink()
    assert author.write("no change", location=location) is None
    target = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(target)
    audit = target.tables["permrag_audit"]
    audit.append_column(sa.Column("reviewer", sa.String(64), nullable=True))
    sa.Index("ix_permrag_audit_reviewer", audit.c.reviewer)
    sa.Table("permrag_reviews", target, sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text, nullable=False))
    path = author.write("Reviews of audit records", target, location=location)
    assert path is not None and path.name == f"rev{NEXT}_reviews_of_audit_records.py"
    text = path.read_text()
    assert 'down_revision = "' + HEAD + '"' in text and "additive = True" in text
    url = f"sqlite:///{tmp_path / 'authored.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        runner.run(conn, runner.plan(conn, url, location=location), location=location)
    engine.dispose()
    assert drift(url, target) == [] and drift(url) != []
    target.tables["permrag_rows"].append_column(sa.Column("required", sa.String(8), nullable=False))
    assert not author.additive(author.changes(target, location=location))
