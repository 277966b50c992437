"""Folder syncs that lose nothing and leak nothing (issue 34): unreadable
folders, the mass-deletion guard, links out of the root, sources of their
own, documents changed behind the sync, reading each file once, and quiet
third-party loaders. Checked on the catalog, on Milvus (Lite) and through the
CLI; sources and restores on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from permrag import PermRAG
from permrag.cli import main
from permrag.embed import HashEncoder
from permrag.errors import MassDeleteError, SourceClashError
from permrag.ingest.loaders import Parsed, Section, register_loader, unregister_loader
from permrag.ingest.loaders.folder import read_file
from permrag.ingest.loaders.walk import list_folder
from permrag.ingest.sync import FolderSync, hashes

from ..conftest import milvus_ids

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # file modes do not stop root


def write(folder: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")
    return folder


FILES = {
    "hr/leave.txt": "Everyone gets twenty-five days of paid leave per year.",
    "hr/sick.txt": "Sick leave longer than three days needs a doctor's note.",
    "eng/laptops.txt": "Laptops must use full disk encryption.",
    "eng/passwords.txt": "Passwords are at least sixteen characters long.",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str | None:
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@pytest.fixture
def store(tmp_path, db_url):
    rag = PermRAG.open(tmp_path / "h", database_url=db_url, encoder=HashEncoder(32), chunk_size=200, chunk_overlap=10)
    yield rag
    rag.close()


@pytest.fixture
def lite(tmp_path):
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(32), chunk_size=200, chunk_overlap=10)
    yield rag
    rag.close()


def docs(rag: PermRAG, tenant: str = "default") -> dict[str, int]:
    """Live documents (chunks folded into their document) → row count."""
    out: dict[str, int] = {}
    for r in rag.rows(rag.catalog.tenant_rows(tenant)):
        out[r.document] = out.get(r.document, 0) + 1
    return out


def stored_texts(rag: PermRAG, tenant: str = "default") -> dict[str, str]:
    """Each live document's text as Milvus holds it (chunks joined in order)."""
    no = rag.catalog.tenants.number(tenant)
    rows = rag.backend.client().query(rag.backend.name(no), filter="row_id >= 0", output_fields=["row_id", "text"])
    recs = {r.row_id: r for r in rag.rows(rag.catalog.tenant_rows(tenant))}
    out: dict[str, list[tuple[str, str]]] = {}
    for h in rows:
        rec = recs.get(h["row_id"])
        if rec is not None:
            out.setdefault(rec.document, []).append((rec.external_id, h["text"]))
    return {d: " ".join(t for _, t in sorted(parts)) for d, parts in out.items()}


def consistent(rag: PermRAG, tenant: str = "default") -> None:
    assert milvus_ids(rag, tenant) == set(rag.catalog.tenant_rows(tenant))


def records(rag: PermRAG) -> dict:
    from sqlalchemy import select

    from permrag.storage import db

    with rag.catalog.engine.connect() as conn:
        return {(r.root, r.external_id): (r.content_hash, r.meta_hash) for r in conn.execute(select(db.sync_state))}


def refuse_listing(monkeypatch, *paths: Path) -> None:
    """os.scandir raises PermissionError for ``paths``, as for a folder its
    user may not list (file modes do not stop root, who runs these tests)."""
    real = os.scandir
    bad = {os.path.realpath(p) for p in paths}

    def scandir(path="."):
        if os.path.realpath(path) in bad:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


# ---------------------------------------------------------------------- 1. listing errors are errors
def test_a_folder_that_cannot_be_listed_is_reported_and_nothing_below_it_is_deleted(lite, tmp_path, monkeypatch) -> None:
    folder = write(tmp_path / "docs", FILES)
    lite.sync_folder(folder)
    before = docs(lite)
    refuse_listing(monkeypatch, folder / "hr")
    (folder / "eng" / "laptops.txt").unlink()  # a real deletion beside it still happens
    rep = lite.sync_folder(folder)
    assert ("hr/", "folder not listed: Permission denied") in rep.failed and not rep.ok
    assert rep.deleted == ["docs/eng/laptops.txt"]
    assert docs(lite) == {d: n for d, n in before.items() if d != "docs/eng/laptops.txt"}
    consistent(lite)
    monkeypatch.undo()
    rep = lite.sync_folder(folder)  # readable again: nothing to do there
    assert rep.ok and rep.unchanged == 3 and not rep.deleted


def test_a_root_that_cannot_be_listed_deletes_nothing(lite, tmp_path, monkeypatch) -> None:
    folder = write(tmp_path / "docs", FILES)
    lite.sync_folder(folder)
    before = docs(lite)
    refuse_listing(monkeypatch, folder)
    rep = lite.sync_folder(folder)
    assert rep.failed == [("./", "folder not listed: Permission denied")] and not rep.deleted
    assert docs(lite) == before


def test_a_file_that_cannot_be_read_is_failed_and_kept(lite, tmp_path, monkeypatch) -> None:
    folder = write(tmp_path / "docs", FILES)
    lite.sync_folder(folder)
    before = docs(lite)
    target = os.path.realpath(folder / "hr" / "sick.txt")
    real = Path.read_bytes

    def read_bytes(self):
        if os.path.realpath(self) == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    rep = lite.sync_folder(folder)
    assert rep.failed == [("hr/sick.txt", "Permission denied")] and not rep.deleted
    assert docs(lite) == before


def test_the_cli_says_so_and_exits_1(tmp_path, monkeypatch) -> None:
    folder = write(tmp_path / "docs", FILES)
    runner = CliRunner()
    home = ["--home", str(tmp_path / "h")]
    assert runner.invoke(main, [*home, "init", "--encoder", "hash"]).exit_code == 0
    assert runner.invoke(main, [*home, "ingest", str(folder), "--sync", "-q"]).exit_code == 0
    refuse_listing(monkeypatch, folder / "eng")
    res = runner.invoke(main, [*home, "ingest", str(folder), "--sync", "--json"])
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["failed"] == [["eng/", "folder not listed: Permission denied"]] and data["deleted"] == []
    res = runner.invoke(main, [*home, "ingest", str(folder), "--sync"])
    assert res.exit_code == 1 and "eng/: folder not listed: Permission denied" in res.stderr and "Traceback" not in res.output


@pytest.mark.skipif(AS_ROOT, reason="file modes do not stop root; the monkeypatched listings above stand in")
def test_chmod_000_folder_and_file(lite, tmp_path) -> None:
    folder = write(tmp_path / "docs", FILES)
    lite.sync_folder(folder)
    before = docs(lite)
    (folder / "hr").chmod(0)
    (folder / "eng" / "laptops.txt").chmod(0)
    try:
        rep = lite.sync_folder(folder)
        assert {p for p, _ in rep.failed} == {"hr/", "eng/laptops.txt"} and not rep.deleted
        assert docs(lite) == before
    finally:
        (folder / "hr").chmod(0o755)
        (folder / "eng" / "laptops.txt").chmod(0o644)


# ---------------------------------------------------------------------- 2. mass-deletion guard
def test_an_emptied_or_unmounted_folder_is_refused_and_changes_nothing(store, tmp_path) -> None:
    folder = write(tmp_path / "docs", FILES)
    store.sync_folder(folder)
    before, recs, version = docs(store), records(store), store.catalog_version
    for f in folder.rglob("*.txt"):
        f.unlink()
    with pytest.raises(MassDeleteError, match="would delete 4 of the 4 documents of source 'docs'"):
        store.sync_folder(folder)
    assert docs(store) == before and records(store) == recs and store.catalog_version == version
    rep = store.sync_folder(folder, dry_run=True)  # the dry run shows what would go, and why it would be refused
    assert sorted(rep.deleted) == sorted(f"docs/{p}" for p in FILES) and rep.refused and not rep.ok
    assert docs(store) == before
    rep = store.sync_folder(folder, allow_mass_delete=True)
    assert len(rep.deleted) == 4 and docs(store) == {}
    consistent(store)


def test_more_than_half_is_refused_half_is_not(lite, tmp_path) -> None:
    folder = write(tmp_path / "docs", FILES)
    lite.sync_folder(folder)
    (folder / "hr" / "leave.txt").unlink()
    (folder / "hr" / "sick.txt").unlink()
    assert len(lite.sync_folder(folder).deleted) == 2  # two of four: allowed
    (folder / "eng" / "laptops.txt").unlink()  # one of the two left: half, allowed
    assert lite.sync_folder(folder).deleted == ["docs/eng/laptops.txt"]
    (folder / "eng" / "passwords.txt").unlink()  # the last one: all of them
    with pytest.raises(MassDeleteError):
        lite.sync_folder(folder)
    assert list(docs(lite)) == ["docs/eng/passwords.txt"]
    write(folder, {f"new/{i}.txt": f"note {i} about the travel budget" for i in range(3)})
    (folder / "eng").rmdir()
    with pytest.raises(MassDeleteError, match="would delete 1 of the 1 documents"):  # new files do not make up for it
        lite.sync_folder(folder)
    rep = lite.sync_folder(folder, allow_mass_delete=True)
    assert rep.deleted == ["docs/eng/passwords.txt"] and len(rep.added) == 3
    consistent(lite)


def test_cli_mass_delete_dry_run_and_flag(tmp_path) -> None:
    folder = write(tmp_path / "share", FILES)
    runner = CliRunner()
    home = ["--home", str(tmp_path / "h")]
    assert runner.invoke(main, [*home, "init", "--encoder", "hash"]).exit_code == 0
    assert runner.invoke(main, [*home, "ingest", str(folder), "--sync", "-q"]).exit_code == 0
    for f in folder.rglob("*.txt"):
        f.unlink()
    res = runner.invoke(main, [*home, "ingest", str(folder), "--sync"])
    assert res.exit_code == 1 and res.stderr.startswith("error: the sync would delete 4 of the 4 documents") and "--allow-mass-delete" in res.stderr
    assert "Traceback" not in res.output
    res = runner.invoke(main, [*home, "ingest", str(folder), "--sync", "--dry-run"])
    assert res.exit_code == 1 and "would delete 4\n  share/eng/laptops.txt" in res.stdout and "refused without --allow-mass-delete" in res.stdout
    res = runner.invoke(main, [*home, "ingest", str(folder), "--sync", "--dry-run", "--json"])
    assert json.loads(res.stdout)["deleted"] == sorted(f"share/{p}" for p in FILES)
    res = runner.invoke(main, [*home, "ingest", str(folder), "--sync", "--allow-mass-delete"])
    assert res.exit_code == 0 and "4 deleted" in res.stdout
    res = runner.invoke(main, [*home, "ingest", str(folder), "--allow-mass-delete"])
    assert res.exit_code == 2 and "go with --sync" in res.output


# ---------------------------------------------------------------------- 3. links never leave the root
def test_links_out_of_the_root_are_skipped_links_inside_followed_once(lite, tmp_path) -> None:
    outside = write(tmp_path / "outside", {"secret.txt": "The root password is hunter2.", "dir/more.txt": "Salaries of every employee."})
    folder = write(tmp_path / "docs", FILES)
    (folder / "leak.txt").symlink_to(outside / "secret.txt")
    (folder / "leakdir").symlink_to(outside / "dir")
    (folder / "eng" / "up").symlink_to(tmp_path)  # above the root
    (folder / "eng" / "loop").symlink_to(folder / "eng")  # a loop inside
    (folder / "hr" / "alias.txt").symlink_to(folder / "hr" / "leave.txt")
    (folder / "broken.txt").symlink_to(folder / "nowhere.txt")
    rep = lite.sync_folder(folder)
    skipped = dict(rep.skipped)
    assert skipped["leak.txt"] == skipped["leakdir"] == skipped["eng/up"] == "link to outside the folder"
    assert skipped["eng/loop"] == skipped["hr/alias.txt"] == "link to an entry listed already"
    assert skipped["broken.txt"] == "broken link"
    assert sorted(rep.added) == sorted(f"docs/{p}" for p in FILES) and rep.ok
    texts = stored_texts(lite)
    assert not any("hunter2" in t or "Salaries" in t for t in texts.values())
    assert lite.row("docs/hr/leave.txt").attrs == {"folder": "hr", "source": "hr/leave.txt"}  # no attributes from outside


def test_a_link_to_an_unlisted_inside_folder_is_followed(lite, tmp_path) -> None:
    folder = write(tmp_path / "docs", {"a.txt": "Alpha notes on the budget.", ".archive/old.txt": "Old notes on the budget."})
    (folder / "archive").symlink_to(folder / ".archive")
    rep = lite.sync_folder(folder)
    assert sorted(rep.added) == ["docs/a.txt", "docs/archive/old.txt"]


# ---------------------------------------------------------------------- 3b. a sidecar is never dropped
DENY = {"deny": ["user:mallory"]}


def acl_of(rag: PermRAG, ext: str) -> dict:
    return rag.row(ext).acl.to_json()


def test_a_sidecar_link_inside_the_root_is_followed_even_to_an_entry_listed_already(store, tmp_path) -> None:
    folder = write(tmp_path / "docs", {"hr/pay.txt": "Salaries of every employee.", "acl/finance.meta.json": json.dumps({"acl": DENY})})
    (folder / "hr" / "pay.txt.meta.json").symlink_to(folder / "acl" / "finance.meta.json")  # listed after its real target
    rep = store.sync_folder(folder)
    assert rep.added == ["docs/hr/pay.txt"] and rep.ok
    assert "user:mallory" in json.dumps(acl_of(store, "docs/hr/pay.txt"))
    assert list_folder(folder).sidecars["hr/pay.txt.meta.json"] == (folder / "acl" / "finance.meta.json").resolve()


def test_a_sidecar_that_cannot_be_read_fails_its_file_and_keeps_the_stored_version(store, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = write(tmp_path / "docs", {"hr/pay.txt": "Salaries of every employee.", "hr/pay.txt.meta.json": json.dumps({"acl": DENY})})
    store.sync_folder(folder)
    before, recs = acl_of(store, "docs/hr/pay.txt"), records(store)
    side = folder / "hr" / "pay.txt.meta.json"
    (outside / "pay.meta.json").write_text(json.dumps({"acl": {}}))  # moved out, and the deny taken off
    side.unlink()
    side.symlink_to(outside / "pay.meta.json")
    for why in ("link to outside the folder", "broken link"):
        if why == "broken link":
            side.unlink()
            side.symlink_to(folder / "hr" / "gone.meta.json")
        rep = store.sync_folder(folder)
        assert not rep.ok and [p for p, _ in rep.failed] == ["hr/pay.txt"] and why in rep.failed[0][1], rep.failed
        assert not rep.metadata and not rep.changed and not rep.deleted
        assert acl_of(store, "docs/hr/pay.txt") == before and records(store) == recs
    side.unlink()
    side.mkdir()  # not a regular file
    write(folder, {"new.txt": "A new file with a sidecar gone.", "new/x.txt": "Another new one."})
    (folder / "new.txt.meta.json").symlink_to(folder / "gone.meta.json")
    (folder / "new" / "x.txt.attrs.json").symlink_to(folder / "new")
    rep = store.sync_folder(folder)
    assert sorted(p for p, _ in rep.failed) == ["hr/pay.txt", "new.txt", "new/x.txt"] and not rep.added  # no new file without its sidecar
    assert set(docs(store)) == {"docs/hr/pay.txt"} and acl_of(store, "docs/hr/pay.txt") == before


def test_a_sidecar_whose_kind_cannot_be_told_fails_its_file(lite, tmp_path, monkeypatch) -> None:
    folder = write(tmp_path / "docs", {"pay.txt": "Salaries of every employee.", "pay.txt.meta.json": json.dumps({"acl": DENY})})
    lite.sync_folder(folder)
    real = os.scandir

    class Entry:
        def __init__(self, e):
            self.e, self.name, self.path = e, e.name, e.path

        def __getattr__(self, name):
            if self.name.endswith(".meta.json"):

                def fail(*a, **kw):
                    raise OSError(5, "Input/output error")

                return fail
            return getattr(self.e, name)

    class Listed:
        def __init__(self, path):
            self.it = real(path)

        def __enter__(self):
            return [Entry(e) for e in self.it.__enter__()]

        def __exit__(self, *exc):
            return self.it.__exit__(*exc)

    monkeypatch.setattr(os, "scandir", Listed)
    rep = lite.sync_folder(folder)
    assert rep.failed == [("pay.txt", "its sidecar pay.txt.meta.json cannot be read (its kind cannot be told: Input/output error); the file is not stored without it")]
    assert "user:mallory" in json.dumps(acl_of(lite, "docs/pay.txt"))
    from permrag.ingest.loaders.folder import load_folder

    assert [p for p, _ in load_folder(folder).failed] == ["pay.txt"]  # a plain ingest refuses it too


def test_the_cli_exits_1_for_a_sidecar_out_of_the_folder(tmp_path) -> None:
    folder = write(tmp_path / "docs", {"pay.txt": "Salaries of every employee."})
    (folder / "pay.txt.meta.json").symlink_to(write(tmp_path / "out", {"m.json": json.dumps({"acl": DENY})}) / "m.json")
    runner = CliRunner()
    home = ["--home", str(tmp_path / "h")]
    assert runner.invoke(main, [*home, "init", "--encoder", "hash"]).exit_code == 0
    res = runner.invoke(main, [*home, "ingest", str(folder), "--sync", "--json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["added"] == []


# ---------------------------------------------------------------------- 4. each folder a source of its own
def test_a_linked_root_is_keyed_by_the_path_given(store, tmp_path) -> None:
    r1 = write(tmp_path / "r1", FILES)
    r2 = write(tmp_path / "r2", {**{k: v for k, v in FILES.items() if k != "eng/laptops.txt"}, "eng/phones.txt": "Phones need a PIN."})
    r3 = write(tmp_path / "r3", {"x.txt": "Nothing like the others."})
    current = tmp_path / "current"
    current.symlink_to(r1)
    rep = store.sync_folder(current)
    assert rep.source == "current" and sorted(rep.added) == sorted(f"current/{p}" for p in FILES)
    current.unlink()
    current.symlink_to(r2)
    rep = store.sync_folder(current)
    assert rep.source == "current" and rep.deleted == ["current/eng/laptops.txt"] and rep.added == ["current/eng/phones.txt"]
    assert set(docs(store)) == {f"current/{p}" for p in r2.rglob("*.txt") for p in [p.relative_to(r2).as_posix()]}
    current.unlink()
    current.symlink_to(r3)
    with pytest.raises(MassDeleteError):
        store.sync_folder(current)
    from permrag.ingest.sources import sources

    assert [(s.name, s.root) for s in sources(store.catalog.engine, "default")] == [("current", str(current))]
    consistent(store)


def test_a_root_inside_or_holding_another_source_is_refused(store, tmp_path) -> None:
    share = write(tmp_path / "share", {"a.txt": "Top level notes.", "sub/b.txt": "Notes further down."})
    store.sync_folder(share)
    before, recs = docs(store), records(store)
    (tmp_path / "link").symlink_to(share)
    for other, where in ((share / "sub", "lies inside"), (tmp_path, "holds"), (tmp_path / "link", "is")):
        with pytest.raises(SourceClashError, match=f"{where} the folder {share} of sync source 'share'"):
            store.sync_folder(other, source="other")
    assert docs(store) == before and records(store) == recs
    assert store.sync_folder(share / "sub", tenant="t2").added == ["sub/b.txt"]  # another tenant is another world
    with pytest.raises(SourceClashError, match="holds the folder .* of sync source 'sub'"):
        store.sync_folder(share, tenant="t2")


def test_two_roots_never_overwrite_or_delete_each_other(store, tmp_path) -> None:
    a = write(tmp_path / "a", {"notes/readme.txt": "Team A writes its notes here.", "a.txt": "Only in A, about budgets."})
    b = write(tmp_path / "b", {"notes/readme.txt": "Team B keeps other notes.", "b.txt": "Only in B, about hiring."})
    assert sorted(store.sync_folder(a).added) == ["a/a.txt", "a/notes/readme.txt"]
    assert sorted(store.sync_folder(b).added) == ["b/b.txt", "b/notes/readme.txt"]
    assert stored_texts(store)["a/notes/readme.txt"] == "Team A writes its notes here."
    assert stored_texts(store)["b/notes/readme.txt"] == "Team B keeps other notes."
    (a / "a.txt").unlink()
    rep = store.sync_folder(a)
    assert rep.deleted == ["a/a.txt"] and rep.unchanged == 1
    assert set(docs(store)) == {"a/notes/readme.txt", "b/b.txt", "b/notes/readme.txt"}
    consistent(store)


def test_a_source_name_clash_is_an_error_and_changes_nothing(store, tmp_path) -> None:
    one = write(tmp_path / "x" / "docs", {"a.txt": "First folder called docs."})
    two = write(tmp_path / "y" / "docs", {"b.txt": "Second folder called docs."})
    store.sync_folder(one)
    before, recs = docs(store), records(store)
    with pytest.raises(SourceClashError, match="source 'docs' of tenant 'default' is the folder"):
        store.sync_folder(two)
    with pytest.raises(SourceClashError, match="as source 'docs', not 'other'"):
        store.sync_folder(one, source="other")
    assert docs(store) == before and records(store) == recs
    from permrag.ingest.sources import sources

    assert store.sync_folder(two, source="docs-y", dry_run=True).added == ["docs-y/b.txt"]
    assert [s.name for s in sources(store.catalog.engine, "default")] == ["docs"]  # a dry run records no source
    assert store.sync_folder(two, source="docs-y").added == ["docs-y/b.txt"]
    assert store.sync_folder(two).unchanged == 1  # the folder keeps its recorded name
    assert store.sync_folder(two, tenant="t2").added == ["docs/b.txt"]  # names are per tenant
    from permrag.errors import ArgumentError

    for bad in ("", "a/b", ".hidden", " x"):
        with pytest.raises(ArgumentError):
            store.sync_folder(one, source=bad, tenant="t3")


def test_a_store_synced_before_sources_keeps_its_ids(store, tmp_path) -> None:
    """Records written before sources (bare relative ids, keyed by the
    resolved folder) are taken over: the folder becomes a source whose ids
    keep their form, nothing is re-encoded, and a new folder of the same
    name is a clash, not a silent merge."""
    from permrag.ingest.loaders import load_folder

    folder = write(tmp_path / "docs", FILES)
    loaded = load_folder(folder)
    store.add_documents(loaded.documents)  # what the sync wrote then: the relative path as id
    sync = FolderSync(store.ingester)
    listing = list_folder(folder)
    sync.record("default", str(listing.root), {rel: hashes(read_file(listing, rel), None, sync.settings()) for rel in listing.files})
    version = store.catalog_version
    (tmp_path / "via").symlink_to(folder)  # reached through a link: its records are under the real path
    with pytest.raises(SourceClashError, match="predate sources"):
        store.sync_folder(tmp_path / "via")
    rep = store.sync_folder(folder)
    assert rep.source == "docs" and rep.unchanged == 4 and not (rep.added or rep.changed or rep.restored or rep.deleted)
    assert store.catalog_version == version
    (folder / "hr" / "leave.txt").write_text("Everyone now gets thirty days of paid leave.")
    rep = store.sync_folder(folder)
    assert rep.changed == ["hr/leave.txt"] and rep.unchanged == 3
    store.delete("eng/laptops.txt")  # and the catalog check works on the records taken over
    assert store.sync_folder(folder).restored == ["eng/laptops.txt"]
    assert set(docs(store)) == set(FILES)
    other = write(tmp_path / "elsewhere" / "docs", {"hr/leave.txt": "Another leave policy."})
    with pytest.raises(SourceClashError):
        store.sync_folder(other)
    assert store.sync_folder(other, source="docs2").added == ["docs2/hr/leave.txt"]
    assert stored_texts(store)["hr/leave.txt"] == "Everyone now gets thirty days of paid leave."


def test_an_id_held_by_another_folder_is_refused(lite, tmp_path) -> None:
    """A folder synced before sources writes bare ids, which can meet a new
    source's ``<name>/…`` ids: the one that holds the id keeps it."""
    legacy = write(tmp_path / "old", {"team/plan.txt": "The old folder's plan."})
    sync = FolderSync(lite.ingester)
    listing = list_folder(legacy)
    from permrag.ingest.loaders import load_folder

    lite.add_documents(load_folder(legacy).documents)
    sync.record("default", str(listing.root), {"team/plan.txt": hashes(read_file(listing, "team/plan.txt"), None, sync.settings())})
    lite.sync_folder(legacy)  # taken over: ids stay bare
    team = write(tmp_path / "team", {"plan.txt": "The team folder's plan."})
    rep = lite.sync_folder(team)
    assert rep.failed == [("plan.txt", f"its external id 'team/plan.txt' belongs to the synced folder {os.path.realpath(legacy)}")]
    assert stored_texts(lite)["team/plan.txt"] == "The old folder's plan."


# ---------------------------------------------------------------------- 5. the store equals the folder after every sync
def test_documents_deleted_or_replaced_behind_the_sync_are_restored(store, tmp_path) -> None:
    folder = write(tmp_path / "docs", FILES)
    store.sync_folder(folder)
    expected = stored_texts(store)
    store.delete("docs/hr/leave.txt")
    store.add_documents([{"external_id": "docs/eng/laptops.txt", "text": "Laptops need no encryption."}], replace=True)
    store.add_documents([{"external_id": "docs/eng/passwords.txt", "text": "Passwords are at least sixteen characters long.", "attrs": {"source": "x"}}], replace=True)
    rep = store.sync_folder(folder)
    assert sorted(rep.restored) == ["docs/eng/laptops.txt", "docs/eng/passwords.txt", "docs/hr/leave.txt"] and rep.unchanged == 1
    assert stored_texts(store) == expected
    assert store.row("docs/eng/passwords.txt").attrs == {"folder": "eng", "source": "eng/passwords.txt"}
    consistent(store)
    assert store.sync_folder(folder).unchanged == 4


def test_metadata_changed_behind_the_sync_is_restored(lite, tmp_path) -> None:
    folder = write(tmp_path / "docs", FILES)
    lite.sync_folder(folder)
    lite.update_metadata("docs/hr/sick.txt", attrs={"folder": "public"})
    rep = lite.sync_folder(folder)
    assert rep.restored == ["docs/hr/sick.txt"] and lite.row("docs/hr/sick.txt").attrs == {"folder": "hr", "source": "hr/sick.txt"}
    assert lite.sync_folder(folder).unchanged == 4


def test_a_regroup_is_not_a_change(tmp_path) -> None:
    """A regroup moves rows to new IDs; the documents stay what they were and
    the next sync writes nothing."""
    folder = write(tmp_path / "docs", FILES)
    rag = PermRAG.open(tmp_path / "g", encoder=HashEncoder(32), chunk_size=200, chunk_overlap=10, partitions=4, partition_by="visibility")
    try:
        rag.sync_folder(folder)
        before = {r.external_id: r.row_id for r in rag.rows(rag.catalog.tenant_rows("default"))}
        rag.policy.add_role("hr")
        rag.policy.grant("hr", "folder:hr")
        rag.policy.add_role("eng")
        rag.policy.grant("eng", "folder:eng")
        rag.repartition("default")
        after = {r.external_id: r.row_id for r in rag.rows(rag.catalog.tenant_rows("default"))}
        assert after.keys() == before.keys() and after != before  # rows did move
        version = rag.catalog_version
        rep = rag.sync_folder(folder)
        assert rep.unchanged == 4 and not (rep.restored or rep.changed) and rag.catalog_version == version
    finally:
        rag.close()


# ---------------------------------------------------------------------- 6. hash what you read
def test_each_file_is_read_once_per_sync(lite, tmp_path, monkeypatch) -> None:
    from ..helpers.files import make_folder

    folder = make_folder(tmp_path / "all")
    (folder / "eng" / "cafe.txt.meta.json").write_text(json.dumps({"attrs": {"dept": "eng"}}))
    reads: dict[str, int] = {}
    real = Path.read_bytes

    def read_bytes(self):
        reads[os.path.realpath(self)] = reads.get(os.path.realpath(self), 0) + 1
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    rep = lite.sync_folder(folder)
    assert len(rep.added) == 7
    assert reads and set(reads.values()) == {1}
    assert os.path.realpath(folder / "eng" / "cafe.txt.meta.json") in reads
    reads.clear()
    (folder / "hr" / "leave.MD").write_text("# Leave\n\nThirty days.\n")
    assert lite.sync_folder(folder).changed == ["all/hr/leave.MD"] and set(reads.values()) == {1}


def test_a_file_edited_while_the_sync_reads_it(lite, tmp_path, monkeypatch) -> None:
    """The file changes right after the sync read it (between hash and
    parse): the stored text and the recorded hash are both the bytes read,
    so the next sync sees the edit, and an edit back is seen too."""
    import permrag.ingest.sync as sync_mod

    folder = write(tmp_path / "docs", {"a.txt": "Version one of the travel policy."})
    real = sync_mod.read_file

    def read_then_edit(listing, rel):
        item = real(listing, rel)
        (folder / rel).write_text("Version two of the travel policy.")
        return item

    monkeypatch.setattr(sync_mod, "read_file", read_then_edit)
    assert lite.sync_folder(folder).added == ["docs/a.txt"]
    monkeypatch.undo()
    assert stored_texts(lite) == {"docs/a.txt": "Version one of the travel policy."}
    assert lite.sync_folder(folder).changed == ["docs/a.txt"]
    assert stored_texts(lite) == {"docs/a.txt": "Version two of the travel policy."}
    (folder / "a.txt").write_text("Version one of the travel policy.")
    assert lite.sync_folder(folder).changed == ["docs/a.txt"]
    assert stored_texts(lite) == {"docs/a.txt": "Version one of the travel policy."}


def test_a_loader_that_reads_the_file_itself_is_checked(lite, tmp_path) -> None:
    """A user's loader that takes only the path reads the file again: if the
    file changed meanwhile, the file fails this sync and is read next time."""
    folder = write(tmp_path / "docs", {"a.note": "Version one."})
    edits = ["Version two."]

    def load_note(path: Path) -> Parsed:
        text = path.read_text()
        if edits:
            path.write_text(edits.pop())
        return Parsed([Section(text)])

    register_loader(".note", loader=load_note)
    try:
        rep = lite.sync_folder(folder)
        assert rep.failed == [("a.note", "changed while it was read; it is read again at the next sync")] and not rep.added
        rep = lite.sync_folder(folder)
        assert rep.added == ["docs/a.note"] and stored_texts(lite) == {"docs/a.note": "Version two."}
    finally:
        unregister_loader(".note")


# ---------------------------------------------------------------------- 10. quiet third-party libraries
@pytest.mark.slow  # a subprocess, a stress run or a timed wait: left out by make test-fast
def test_json_output_is_only_json_with_a_broken_pdf(tmp_path) -> None:
    folder = write(tmp_path / "docs", {"a.txt": "Plain notes about the budget."})
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n garbage without an end")
    env = {**os.environ, "PERMRAG_HOME": str(tmp_path / "h")}
    run = lambda *args: subprocess.run([sys.executable, "-m", "permrag", *args], capture_output=True, text=True, env=env, timeout=300)  # noqa: E731
    assert run("init", "--encoder", "hash").returncode == 0
    res = run("ingest", str(folder), "--sync", "--json")
    assert res.returncode == 1, res.stderr
    data = json.loads(res.stdout)  # the whole of stdout
    assert data["added"] == ["docs/a.txt"] and [p for p, _ in data["failed"]] == ["broken.pdf"]
    assert "EOF marker" not in res.stderr and "EOF marker" not in res.stdout
    res = run("--verbose", "ingest", str(folder), "--sync", "--json")
    assert "EOF marker not found" in res.stderr and json.loads(res.stdout)["unchanged"] == 1
