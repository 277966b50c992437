"""Loaders on real files written here (PDF, DOCX, HTML, Markdown, reST,
Latin-1 and UTF-16 text, empty and corrupt files): extracted text, metadata,
the report of what was left out, the registry, and the CLI's exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from permrag import CatalogError
from permrag.ingest.loaders import Parsed, Section, load_folder, load_path, loader_for, register_loader, unregister_loader

from ..helpers.files import LATIN1, MD, PDF_PAGES, UTF16, make_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("files") / "docs")


@pytest.fixture(scope="module")
def loaded(folder):
    return load_folder(folder)


def doc(report, ext):
    return next(d for d in report.documents if d["external_id"] == ext)


def test_every_good_file_is_a_document_and_every_bad_one_is_reported(loaded) -> None:
    assert sorted(d["external_id"] for d in loaded.documents) == [
        "eng/cafe.txt",
        "eng/resume.txt",
        "eng/security.rst",
        "hr/benefits.html",
        "hr/expenses.pdf",
        "hr/leave.MD",
        "hr/onboarding.docx",
    ]
    assert dict(loaded.skipped) == {"misc/empty.txt": "empty file", "misc/photo.png": "no loader for .png"}
    assert sorted(p for p, _ in loaded.failed) == ["misc/broken.docx", "misc/broken.pdf"]
    reasons = dict(loaded.failed)
    assert "not a readable PDF" in reasons["misc/broken.pdf"] and "not a readable DOCX" in reasons["misc/broken.docx"]
    assert not loaded.ok
    assert "2 file(s) failed" in loaded.describe() and "misc/photo.png" in loaded.describe()
    assert not any(".hidden" in d["external_id"] for d in loaded.documents)  # hidden folders are passed over


def test_pdf_text_pages_and_title(loaded) -> None:
    d = doc(loaded, "hr/expenses.pdf")
    assert [s["page"] for s in d["sections"]] == [1, 2]
    assert [" ".join(s["text"].split()) for s in d["sections"]] == PDF_PAGES
    assert d["attrs"] == {"folder": "hr", "source": "hr/expenses.pdf", "title": "Expense policy"}


def test_docx_headings_tables_and_title(loaded) -> None:
    d = doc(loaded, "hr/onboarding.docx")
    assert d["attrs"]["title"] == "Onboarding guide"
    assert [s["heading"] for s in d["sections"]] == [None, "Accounts", "Accounts > Badges"]
    assert "IT creates your accounts on the first morning." in d["sections"][1]["text"]
    assert "Contact | helpdesk" in d["text"]  # the table's row


def test_markdown_sections_follow_headings_not_code(loaded) -> None:
    d = doc(loaded, "hr/leave.MD")  # upper-case suffix: still Markdown
    assert d["attrs"]["title"] == "Leave policy"
    assert [s["heading"] for s in d["sections"]] == ["Leave policy", "Leave policy > Sick leave", "Leave policy > Parental leave"]
    assert "# not a heading" in d["sections"][1]["text"]  # the fenced line stays in its section
    assert d["text"].split() == MD.split()


def test_html_main_text_without_navigation_or_script(loaded) -> None:
    d = doc(loaded, "hr/benefits.html")
    assert d["attrs"]["title"] == "Benefits overview"
    assert "pension plan matches contributions" in d["text"]
    assert "tracking" not in d["text"] and "Copyright ACME" not in d["text"] and "About" not in d["text"]
    assert [s["heading"] for s in d["sections"]][1:] == [f"Benefits overview > Benefit {i}" for i in range(3)]


def test_rst_sections(loaded) -> None:
    d = doc(loaded, "eng/security.rst")
    assert d["attrs"]["title"] == "Security handbook"
    assert [s["heading"] for s in d["sections"]] == ["Security handbook", "Security handbook > Passwords"]


def test_latin1_and_utf16_text_decoded(loaded) -> None:
    assert doc(loaded, "eng/cafe.txt")["text"] == LATIN1
    assert doc(loaded, "eng/resume.txt")["text"] == UTF16


def test_sidecars_give_attrs_and_acl_and_bad_ones_fail_alone(tmp_path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / name).write_text(f"text of {name}")
    (root / "a.txt.meta.json").write_text(json.dumps({"attrs": {"level": 3, "public": True, "tags": ["x", 2]}, "acl": {"allow": ["user:bob"]}}))
    (root / "b.txt.attrs.json").write_text(json.dumps({"dept": "eng"}))
    (root / "c.txt.meta.json").write_text("{not json")
    rep = load_folder(root)
    a, b = doc(rep, "a.txt"), doc(rep, "b.txt")
    assert a["attrs"] == {"source": "a.txt", "level": 3, "public": True, "tags": ["x", 2]}
    assert a["acl"] == {"folder": "/", "allow": ["user:bob"]}  # files sit in their folder (for folder ACLs)
    assert b["attrs"] == {"source": "b.txt", "dept": "eng"} and b["acl"] == {"folder": "/"}  # no entries of its own
    assert [p for p, _ in rep.failed] == ["c.txt"] and "not JSON" in rep.failed[0][1]


def test_folder_attrs_name_the_levels(folder) -> None:
    rep = load_folder(folder, ["dept"])
    assert doc(rep, "hr/leave.MD")["attrs"]["dept"] == "hr"


def test_a_registered_loader_is_used_and_can_be_removed(tmp_path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "t.CSVX").write_text("a;b\n1;2")

    @register_loader(".csvx")
    def read(path: Path) -> Parsed:
        return Parsed([Section(path.read_text().replace(";", " "))], title="table")

    try:
        assert loader_for(root / "t.CSVX") is read
        rep = load_folder(root)
        assert doc(rep, "t.CSVX")["text"] == "a b\n1 2" and doc(rep, "t.CSVX")["attrs"]["title"] == "table"
    finally:
        unregister_loader(".csvx")
    assert load_folder(root).skipped == [("t.CSVX", "no loader for .csvx")]


def test_a_loader_that_crashes_is_reported_not_raised(tmp_path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "x.boom").write_text("x")
    (root / "ok.txt").write_text("fine")
    register_loader(".boom", loader=lambda p: 1 / 0)
    try:
        rep = load_folder(root)
    finally:
        unregister_loader(".boom")
    assert [d["external_id"] for d in rep.documents] == ["ok.txt"]
    assert rep.failed == [("x.boom", "ZeroDivisionError: division by zero")]


def test_too_long_and_bad_names_fail_per_file(tmp_path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "long.txt").write_text("word " * 100)
    (root / "fine.txt").write_text("short")
    rep = load_folder(root, max_chars=100)
    assert [d["external_id"] for d in rep.documents] == ["fine.txt"]
    assert rep.failed[0][0] == "long.txt" and "max_document_chars" in rep.failed[0][1]


def test_bad_register_arguments() -> None:
    from permrag import ArgumentError

    with pytest.raises(ArgumentError):
        register_loader("pdf")
    with pytest.raises(ArgumentError):
        register_loader()


def test_load_path_of_nothing(tmp_path) -> None:
    with pytest.raises(CatalogError, match="no such file"):
        load_path(tmp_path / "nope")


# Realistic sentences in each encoding a file share holds (issue 34): the bytes
# are written here, as the editors that made them would have.
WIN1252 = "The committee’s “final” report – due in March — puts the budget at €40,000; it’s ‘approved’ … mostly."
FRENCH = "Le comité a approuvé la réunion à Genève; coût total réglé, à l'œil près."
GERMAN = "Die Größe der Büroräume wird überprüft; Straßenlärm stört die Mitarbeiter."
ENCODED = {
    "utf8.txt": GERMAN.encode("utf-8"),
    "utf8bom.txt": b"\xef\xbb\xbf" + WIN1252.encode("utf-8"),
    "utf16le.txt": b"\xff\xfe" + WIN1252.encode("utf-16-le"),
    "utf16be.txt": b"\xfe\xff" + FRENCH.encode("utf-16-be"),
    "latin1.txt": FRENCH.replace("œ", "oe").encode("latin-1"),
    "latin1de.txt": GERMAN.encode("latin-1"),
    "cp1252.txt": WIN1252.encode("cp1252"),
    "cp1252.md": ("# Memo\n\n" + WIN1252).encode("cp1252"),
    "cp1252fr.txt": FRENCH.encode("cp1252"),  # œ is 0x9C: a C1 control in Latin-1
}


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_encodings_decode_right(tmp_path, name) -> None:
    (tmp_path / name).write_bytes(ENCODED[name])
    rep = load_folder(tmp_path)
    text = doc(rep, name)["text"]
    expected = {
        "utf8.txt": GERMAN,
        "utf8bom.txt": WIN1252,
        "utf16le.txt": WIN1252,
        "utf16be.txt": FRENCH,
        "latin1.txt": FRENCH.replace("œ", "oe"),
        "latin1de.txt": GERMAN,
        "cp1252.txt": WIN1252,
        "cp1252.md": "# Memo\n\n" + WIN1252,
        "cp1252fr.txt": FRENCH,
    }[name]
    assert text == expected


def test_other_scripts_keep_their_detected_encoding_and_binary_is_refused(tmp_path) -> None:
    """Windows-1252 is preferred only where it reads cleanly: Cyrillic in
    cp1251 and Polish in cp1250 read as Windows-1252 are a mess, and stay
    with the detector's reading; bytes that are no text are refused."""
    from permrag.ingest.loaders.formats import decode

    russian = "Отчёт комитета о бюджете на следующий год утверждён в пятницу, все согласны."
    assert decode(russian.encode("cp1251"), "r.txt") == russian
    polish = "Zażółć gęślą jaźń — Łódź, Kraków i Wrocław są w Polsce; budżet zatwierdzony."
    assert "ż" in decode(polish.encode("cp1250"), "p.txt")
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 4)
    assert [p for p, _ in load_folder(tmp_path).failed] == ["blob.txt"]


def test_listing_reports_what_it_cannot_list(tmp_path, monkeypatch) -> None:
    """load_folder (plain ingest) lists with errors reported too."""
    import os

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("inside a folder that cannot be listed")
    (tmp_path / "b.txt").write_text("beside it")
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied")) if str(p).endswith("/a") else real(p))
    rep = load_folder(tmp_path)
    assert [d["external_id"] for d in rep.documents] == ["b.txt"] and rep.failed == [("a/", "folder not listed: Permission denied")]
