"""Real files of every supported format, written by the tests themselves
(PDF with fpdf2, DOCX with python-docx, the rest as bytes)."""

from __future__ import annotations

from pathlib import Path

PDF_PAGES = [
    "Travel expenses are refunded within thirty days of the receipt being filed.",
    "Hotel stays above two hundred euros per night need approval from a director.",
]
MD = """# Leave policy

Everyone gets twenty-five days of paid leave per calendar year.

## Sick leave

Sick leave longer than three days needs a doctor's note.

```
# not a heading: inside a code block
```

## Parental leave

Parents may take sixteen weeks of parental leave.
"""
RST = """Security handbook
=================

Laptops must use full disk encryption.

Passwords
---------

Passwords are at least sixteen characters long.
"""
LATIN1 = "Café crème: the cafeteria opens at eight o'clock. Ærøskøbing straße naïve façade."
UTF16 = "Résumé screening: the recruiting team reviews every application within a week. 日本語も."


def html_page() -> str:
    parts = "".join(f"<h2>Benefit {i}</h2><p>" + f"The company pension plan matches contributions up to five percent of salary, benefit number {i}. " * 4 + "</p>" for i in range(3))
    return (
        "<html><head><title>Benefits overview</title><script>var tracking = 1;</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"
        f"<article><h1>Benefits overview</h1>{parts}</article>"
        "<footer>Copyright ACME</footer></body></html>"
    )


def write_pdf(path: Path, pages: list[str] = PDF_PAGES, title: str = "Expense policy") -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))


def write_docx(path: Path) -> None:
    import docx

    d = docx.Document()
    d.core_properties.title = "Onboarding guide"
    d.add_heading("Onboarding guide", level=0)
    d.add_paragraph("Welcome to the company. Your first week is for setting up.")
    d.add_heading("Accounts", level=1)
    d.add_paragraph("IT creates your accounts on the first morning.")
    d.add_heading("Badges", level=2)
    d.add_paragraph("Badges are collected at the front desk.")
    t = d.add_table(rows=1, cols=2)
    t.rows[0].cells[0].text = "Contact"
    t.rows[0].cells[1].text = "helpdesk"
    d.save(str(path))


def make_folder(root: Path) -> Path:
    """A folder with one file of each kind, good and bad."""
    (root / "hr").mkdir(parents=True)
    (root / "eng").mkdir()
    (root / "misc").mkdir()
    write_pdf(root / "hr" / "expenses.pdf")
    write_docx(root / "hr" / "onboarding.docx")
    (root / "hr" / "leave.MD").write_text(MD, encoding="utf-8")
    (root / "hr" / "benefits.html").write_text(html_page(), encoding="utf-8")
    (root / "eng" / "security.rst").write_text(RST, encoding="utf-8")
    (root / "eng" / "cafe.txt").write_bytes(LATIN1.encode("latin-1"))
    (root / "eng" / "resume.txt").write_bytes(UTF16.encode("utf-16"))
    (root / "misc" / "empty.txt").write_bytes(b"")
    (root / "misc" / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage that is not a pdf body")
    (root / "misc" / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "misc" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.txt").write_text("never loaded")
    return root
