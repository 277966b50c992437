"""Folder sync against Milvus Lite: add, change, metadata-only change,
delete, unreadable changes, progress and the CLI — checked on the catalog,
the rows in Milvus and what the encoder was asked to encode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from permrag import ArgumentError, PermRAG
from permrag.cli import main
from permrag.embed import HashEncoder
from permrag.ingest.sync import FolderSync

from ..conftest import milvus_ids
from ..helpers.files import make_folder


class CountingEncoder(HashEncoder):
    """The hash encoder, counting the texts it encodes."""

    def __init__(self) -> None:
        super().__init__(32)
        self.name = "hash"
        self.texts: list[str] = []

    def encode(self, texts):
        self.texts.extend(texts)
        return super().encode(texts)


@pytest.fixture
def world(tmp_path):
    folder = make_folder(tmp_path / "docs")
    enc = CountingEncoder()
    rag = PermRAG.open(tmp_path / "h", encoder=enc, chunk_size=120, chunk_overlap=10)
    yield rag, folder, enc
    rag.close()


def live_rows(rag: PermRAG) -> dict[str, int]:
    return {r.external_id: r.row_id for r in rag.rows(rag.catalog.live_ids())}


def check_milvus_equals_catalog(rag: PermRAG, tenant: str = "default") -> None:
    assert milvus_ids(rag, tenant) == set(rag.catalog.tenant_rows(tenant))


def test_first_sync_adds_every_readable_file(world) -> None:
    rag, folder, enc = world
    rep = rag.sync_folder(folder)
    assert sorted(rep.added) == [f"docs/{p}" for p in ["eng/cafe.txt", "eng/resume.txt", "eng/security.rst", "hr/benefits.html", "hr/expenses.pdf", "hr/leave.MD", "hr/onboarding.docx"]]
    assert sorted(p for p, _ in rep.failed) == ["misc/broken.docx", "misc/broken.pdf"] and not rep.ok
    assert sorted(p for p, _ in rep.skipped) == ["misc/empty.txt", "misc/photo.png"]
    rows = live_rows(rag)
    assert rep.chunks == len(rows) == len(enc.texts)
    check_milvus_equals_catalog(rag)


def test_resync_of_an_unchanged_folder_writes_nothing(world) -> None:
    rag, folder, enc = world
    rag.sync_folder(folder)
    before, version, n = live_rows(rag), rag.catalog_version, len(enc.texts)
    rep = rag.sync_folder(folder)
    assert rep.unchanged == 7 and not (rep.added or rep.changed or rep.metadata or rep.deleted)
    assert live_rows(rag) == before and rag.catalog_version == version and len(enc.texts) == n


def test_a_changed_file_alone_is_reembedded(world) -> None:
    rag, folder, enc = world
    rag.sync_folder(folder)
    before = live_rows(rag)
    (folder / "hr" / "leave.MD").write_text("# Leave\n\nEveryone now gets thirty days of paid leave.\n")
    n = len(enc.texts)
    rep = rag.sync_folder(folder)
    assert rep.changed == ["docs/hr/leave.MD"] and rep.unchanged == 6
    assert enc.texts[n:] == ["# Leave\n\nEveryone now gets thirty days of paid leave."]
    after = live_rows(rag)
    assert {e: r for e, r in after.items() if not e.startswith("docs/hr/leave.MD")} == {e: r for e, r in before.items() if not e.startswith("docs/hr/leave.MD")}
    assert [e for e in after if e.startswith("docs/hr/leave.MD")] == ["docs/hr/leave.MD"]  # the old chunks are gone, one row now
    check_milvus_equals_catalog(rag)


def test_a_metadata_only_change_updates_attributes(world) -> None:
    rag, folder, enc = world
    rag.sync_folder(folder)
    (folder / "eng" / "cafe.txt.meta.json").write_text(json.dumps({"attrs": {"level": 3, "public": True}}))
    n = len(enc.texts)
    rep = rag.sync_folder(folder)
    assert rep.metadata == ["docs/eng/cafe.txt"] and not rep.changed and rep.unchanged == 6
    assert rag.row("docs/eng/cafe.txt").attrs == {"folder": "eng", "source": "eng/cafe.txt", "level": "3", "public": "true"}
    if hasattr(rag, "update_metadata"):  # the store's metadata-only update: nothing re-encoded
        assert len(enc.texts) == n
    check_milvus_equals_catalog(rag)
    assert rag.sync_folder(folder).unchanged == 7


def test_metadata_only_changes_go_through_the_one_update_call(world) -> None:
    rag, folder, enc = world
    calls = []
    sync = FolderSync(rag.ingester, lambda ext, *, tenant, attrs, acl: calls.append((ext, tenant, attrs, acl)))
    sync.sync(folder)
    (folder / "eng" / "cafe.txt.meta.json").write_text(json.dumps({"attrs": {"dept": "ops"}, "acl": {"allow": ["user:bob"]}}))
    n, rows = len(enc.texts), live_rows(rag)
    rep = sync.sync(folder)
    assert rep.metadata == ["docs/eng/cafe.txt"]
    assert calls == [("docs/eng/cafe.txt", "default", {"folder": "eng", "source": "eng/cafe.txt", "dept": "ops"}, {"folder": "/eng", "allow": ["user:bob"]})]
    assert len(enc.texts) == n and live_rows(rag) == rows  # nothing encoded or written by the sync itself


def test_files_gone_are_deleted_and_renames_are_delete_plus_add(world) -> None:
    rag, folder, _enc = world
    rag.sync_folder(folder)
    (folder / "eng" / "security.rst").unlink()
    (folder / "hr" / "expenses.pdf").rename(folder / "hr" / "travel.pdf")
    rep = rag.sync_folder(folder)
    assert rep.deleted == ["docs/eng/security.rst", "docs/hr/expenses.pdf"] and rep.added == ["docs/hr/travel.pdf"]
    ext = {e.split("#")[0] for e in live_rows(rag)}
    assert "docs/eng/security.rst" not in ext and "docs/hr/expenses.pdf" not in ext and "docs/hr/travel.pdf" in ext
    check_milvus_equals_catalog(rag)
    # a folder emptied out deletes everything it added, when told to (tests/integration/test_sync_safety.py: the guard)
    for f in [p for p in folder.rglob("*") if p.is_file()]:
        f.unlink()
    rep = rag.sync_folder(folder, allow_mass_delete=True)
    assert len(rep.deleted) == 6 and live_rows(rag) == {} and milvus_ids(rag) == set()


def test_an_unreadable_change_keeps_the_stored_version(world) -> None:
    rag, folder, _enc = world
    rag.sync_folder(folder)
    before = live_rows(rag)
    (folder / "hr" / "onboarding.docx").write_bytes(b"PK\x03\x04 truncated")
    rep = rag.sync_folder(folder)
    assert ("hr/onboarding.docx" in dict(rep.failed)) and not rep.changed
    assert live_rows(rag) == before
    assert "hr/onboarding.docx" in dict(rag.sync_folder(folder).failed)  # tried again next time


def test_tenants_and_folders_sync_independently(world, tmp_path) -> None:
    rag, folder, _enc = world
    rag.sync_folder(folder)
    rag.sync_folder(folder, tenant="t2")
    (folder / "eng" / "cafe.txt").unlink()
    assert rag.sync_folder(folder).deleted == ["docs/eng/cafe.txt"]
    assert rag.row("docs/eng/cafe.txt", "t2").external_id == "docs/eng/cafe.txt"  # t2 not synced yet
    check_milvus_equals_catalog(rag)
    check_milvus_equals_catalog(rag, "t2")
    assert len(rag.catalog.tenant_rows("t2")) == len(rag.catalog.tenant_rows("default")) + 1
    with pytest.raises(ArgumentError):
        rag.sync_folder(tmp_path / "missing")


def test_progress_counts_every_file_to_the_end(world) -> None:
    rag, folder, _enc = world
    seen = []
    rag.sync_folder(folder, progress=seen.append)
    assert seen[0].done == 0 and seen[-1].done == seen[-1].files == 11  # 7 documents, 2 failed, 2 skipped
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert seen[-1].chunks == len(live_rows(rag))


def test_dry_run_writes_nothing(world) -> None:
    rag, folder, enc = world
    rep = rag.sync_folder(folder, dry_run=True)
    assert len(rep.added) == 7 and live_rows(rag) == {} and enc.texts == []


def test_changed_chunk_settings_reembed_everything(world, tmp_path) -> None:
    rag, folder, _enc = world
    rag.sync_folder(folder)
    rag.close()
    rag2 = PermRAG.open(tmp_path / "h", encoder=CountingEncoder(), chunk_size=400, chunk_overlap=10)
    try:
        rep = rag2.sync_folder(folder)
        assert len(rep.changed) == 7
        check_milvus_equals_catalog(rag2)
    finally:
        rag2.close()


def test_cli_sync(tmp_path) -> None:
    folder = make_folder(tmp_path / "docs")
    runner = CliRunner()
    home = ["--home", str(tmp_path / "h")]
    assert runner.invoke(main, [*home, "init", "--encoder", "hash"]).exit_code == 0
    res = runner.invoke(main, [*home, "ingest", str(folder), "--sync", "--json"])
    assert res.exit_code == 1  # two files failed to load
    data = json.loads(res.stdout)
    assert len(data["added"]) == 7 and data["unchanged"] == 0
    for bad in ("broken.pdf", "broken.docx"):
        (folder / "misc" / bad).unlink()
    (folder / "eng" / "cafe.txt").write_text("changed text")
    res = runner.invoke(main, [*home, "ingest", str(folder), "--sync"])
    assert res.exit_code == 0, res.output
    assert "0 added, 1 changed, 0 metadata only, 0 restored, 0 deleted, 6 unchanged" in res.stdout
    res = runner.invoke(main, [*home, "ingest", str(Path(folder) / "eng" / "cafe.txt"), "--sync"])
    assert res.exit_code == 2 and "--sync takes a folder" in res.output


def test_a_sync_of_many_batches_flushes_milvus_lite_once(tmp_path, monkeypatch) -> None:
    """Each batch used to flush Milvus Lite (a sealed segment per batch); a
    sync flushes once at its end, also when it stops half-way, and a plain
    ingest afterwards flushes on its own again. Keyword search over the
    synced rows stays exact (the flush is what keeps Lite's BM25 statistics
    independent of the filter form)."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        (folder / f"f{i:02d}.txt").write_text(f"note {i} about budget travel and roadmap item {i}\n" * 8, encoding="utf-8")
    monkeypatch.setattr("permrag.ingest.sync.BATCH_ROWS", 5)  # several writes per sync
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(32), chunk_size=120, chunk_overlap=10)
    store = rag.backend
    real, flushes, writes = store.flush, [], []
    store.flush = lambda no: (flushes.append(no), real(no))[1]
    real_write = rag.ingester.write
    rag.ingester.write = lambda *a, **kw: (writes.append(1), real_write(*a, **kw))[1]
    try:
        rep = rag.sync_folder(folder)
        assert len(rep.added) == 12 and len(writes) >= 3
        assert len(flushes) == 1
        check_milvus_equals_catalog(rag)
        # stopped half-way (the progress callback raises after the first write): still flushed once
        for i in range(12):
            (folder / f"f{i:02d}.txt").write_text(f"changed note {i} about hiring\n" * 8, encoding="utf-8")
        flushes.clear()

        def stop(p) -> None:
            if p.chunks:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            rag.sync_folder(folder, progress=stop)
        assert len(flushes) == 1
        flushes.clear()
        rag.add_documents([{"external_id": "plain", "text": "a plain ingest"}])
        assert len(flushes) == 1  # no deferral left behind
        rag.sync_folder(folder)
        check_milvus_equals_catalog(rag)
        rag.policy.add_role("all")
        rag.policy.grant("all", "*")
        rag.policy.assign_user("u", "all")
        hits = rag.search("hiring", user="u", k=50, mode="keyword")
        assert {h.external_id.split("#")[0] for h in hits} >= {f"many/f{i:02d}.txt" for i in range(12)}
    finally:
        store.flush = real
        rag.close()


def test_a_file_the_store_refuses_is_reported_and_the_rest_go_in_one_write(world) -> None:
    """Each file is checked (id, attributes, ACL) as it is loaded: one with a
    bad sidecar is reported as failed, with the store's reason, and does not
    cost the others their shared write; nor does a metadata-only change that
    turns bad touch the stored version. Fixed, it goes in on the next sync."""
    rag, folder, _enc = world
    side = folder / "eng" / "cafe.txt.meta.json"
    side.write_text(json.dumps({"attrs": {"bad name": "x"}}))
    writes = []
    real = rag.ingester.write
    rag.ingester.write = lambda *a, **kw: (writes.append(len(a[0])), real(*a, **kw))[1]
    rep = rag.sync_folder(folder)
    assert dict(rep.failed)["eng/cafe.txt"].startswith("attribute name 'bad name'")
    assert "docs/eng/cafe.txt" not in rep.added and len(rep.added) == 6 and len(writes) == 1
    assert "docs/eng/cafe.txt" not in {e.split("#")[0] for e in live_rows(rag)}
    check_milvus_equals_catalog(rag)
    side.write_text(json.dumps({"attrs": {"dept": "ops"}}))
    assert rag.sync_folder(folder).added == ["docs/eng/cafe.txt"]
    before = live_rows(rag)
    side.write_text(json.dumps({"attrs": {"dept": {"nested": 1}}}))  # metadata only, and bad
    rep = rag.sync_folder(folder)
    assert "eng/cafe.txt" in dict(rep.failed) and not rep.metadata and not rep.changed
    assert live_rows(rag) == before


def test_progress_moves_within_a_write(world, monkeypatch) -> None:
    """A write of many rows reports its chunks as they are encoded, not only at its end."""
    rag, folder, _enc = world
    monkeypatch.setattr("permrag.ingest.ingest.ENCODE_STEP", 2)
    seen = []
    rep = rag.sync_folder(folder, progress=seen.append)
    inside = [p for p in seen if 0 < p.chunks < rep.chunks]  # one write here: its chunks come at its end
    assert len(inside) >= 2 and all(p.done < p.files for p in inside) and [p.chunks for p in seen] == sorted(p.chunks for p in seen)
    assert seen[-1].chunks == rep.chunks == len(live_rows(rag))
