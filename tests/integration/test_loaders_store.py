"""Loaded files in a store: folder ingest and sync keep pages, headings and legacy encodings; the CLI reports skipped and failed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from permrag import PermRAG
from permrag.cli import main
from permrag.ingest.loaders import load_folder
from permrag.integrations.langchain import to_document

from ..helpers.files import make_folder, write_pdf


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("files") / "docs")


def test_folder_ingest_stores_chunks_with_page_and_heading(tmp_path, folder) -> None:
    rag = PermRAG.open(tmp_path / "h", encoder="hash", chunk_size=120, chunk_overlap=10)
    try:
        rep = load_folder(folder)
        rag.add_documents(rep.documents)
        pdf = rag.row("hr/expenses.pdf")
        assert [c.attrs["page"] for c in pdf.chunks] == ["1", "2"]
        assert all(c.attrs["title"] == "Expense policy" and c.attrs["source"] == "hr/expenses.pdf" for c in pdf.chunks)
        md = rag.row("hr/leave.MD")
        assert {c.attrs.get("heading") for c in md.chunks} == {"Leave policy", "Leave policy > Sick leave", "Leave policy > Parental leave"}
        rag.policy.add_role("all")
        rag.policy.grant("all", "*")
        rag.policy.assign_user("u", "all")
        hit = rag.search("hotel stays need director approval", user="u", k=1, mode="keyword")[0]
        assert hit.parent == "hr/expenses.pdf" and hit.attrs["page"] == "2"
        d = to_document(hit)
        assert d.metadata["attrs"]["page"] == "2" and d.id == hit.external_id
        written = {r.external_id: r.stored_attrs() for r in rag.rows(rag.catalog.live_ids())}
    finally:
        rag.close()
    # what the catalog stored (each chunk's attrs as JSON, made once for chunks that share them) reads back equal
    with PermRAG.open(tmp_path / "h", encoder="hash", chunk_size=120, chunk_overlap=10) as again:
        stored = {r.external_id: r.stored_attrs() for r in again.rows(again.catalog.live_ids())}
    assert stored == written and len({str(a) for a in stored.values()}) > 10


def test_cli_reports_skipped_and_failed_files_and_exits_1(tmp_path, folder) -> None:
    runner = CliRunner()
    for home in ("h", "h2"):
        assert runner.invoke(main, ["--home", str(tmp_path / home), "init", "--encoder", "hash"]).exit_code == 0
    res = runner.invoke(main, ["--home", str(tmp_path / "h"), "ingest", str(folder), "--json"])
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)
    assert data["documents"] == 7 and sorted(p for p, _ in data["failed"]) == ["misc/broken.docx", "misc/broken.pdf"]
    assert sorted(p for p, _ in data["skipped"]) == ["misc/empty.txt", "misc/photo.png"]
    good = tmp_path / "good"
    good.mkdir()
    write_pdf(good / "a.PDF")
    res = runner.invoke(main, ["--home", str(tmp_path / "h2"), "ingest", str(good)])
    assert res.exit_code == 0, res.output
    assert "ingested 1 documents" in res.output


# Realistic sentences in each encoding a file share holds (issue 34): the bytes
# are written here, as the editors that made them would have.
WIN1252 = "The committee’s “final” report – due in March — puts the budget at €40,000; it’s ‘approved’ … mostly."


def test_a_sync_stores_windows_1252_text_right(tmp_path) -> None:
    from permrag.embed import HashEncoder

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "memo.txt").write_bytes(WIN1252.encode("cp1252"))
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(32), chunk_size=400, chunk_overlap=10)
    try:
        assert rag.sync_folder(tmp_path / "docs").added == ["docs/memo.txt"]
        no = rag.catalog.tenants.number("default")
        stored = rag.backend.client().query(rag.backend.name(no), filter="row_id >= 0", output_fields=["text"])
        assert [h["text"] for h in stored] == [WIN1252]
    finally:
        rag.close()
