"""Built-in loaders, each a thin layer over a maintained parser. Each takes
the bytes its caller read (``data``), so that what is parsed is what was hashed.

* plain text (``.txt``, ``.text``, ``.log``, ``.csv``): bytes decoded by
  their byte-order mark, else as UTF-8 when they are, else as Windows-1252
  (which reads Latin-1 too) when that reads cleanly, else with the encoding
  charset-normalizer detects (UTF-16 without BOM, Cyrillic, CJK, …); bytes no
  encoding fits are refused. Markdown, reStructuredText and HTML the same.
* Markdown (``.md``, ``.markdown``): sections at headings, found by
  markdown-it-py's CommonMark parser (so a ``#`` inside a code block is not a
  heading); the title is the first level-1 heading.
* reStructuredText (``.rst``): sections at underlined (optionally
  overlined) titles; the first title is the document's.
* HTML (``.html``, ``.htm``, ``.xhtml``): trafilatura extracts the main text
  as Markdown (navigation, scripts and footers dropped), then sections as
  Markdown; a page it finds no main text in falls back to its plain-text
  conversion. The title is the page's.
* PDF (``.pdf``): pypdf, one section per page (``page`` = 1-based number);
  the title from the document information. A PDF without extractable text
  (a scan) is refused, not stored empty.
* DOCX (``.docx``): python-docx; sections at ``Heading N`` paragraphs,
  tables after the body text; the title from the core properties or the
  ``Title`` paragraph.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from ...errors import CatalogError
from .registry import Parsed, Section, register_loader

# ---------------------------------------------------------------------- text
BOMS = ((b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
WESTERN_SLACK = 0.1  # how much messier than the detector's best reading a Windows-1252 reading may look


def decode(data: bytes, where: Path | str) -> str:
    """Bytes as text: by their byte-order mark (UTF-8, UTF-16, UTF-32) if they
    have one, else UTF-8 if valid, else Windows-1252 when it reads as well as
    charset-normalizer's best guess, else that guess."""
    for bom, codec in BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec).lstrip("\ufeff")
            except UnicodeDecodeError:
                raise CatalogError(f"{where}: not text (its {codec.upper()} byte-order mark does not fit its bytes)") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes
    from charset_normalizer.md import mess_ratio

    best = from_bytes(data).best()
    # Short Western text fits many single-byte code pages at once, and the
    # detector's pick among them is arbitrary (Mac Iceland for a Windows-1252
    # text with smart quotes, cp1250 for a Latin-1 one). Windows-1252 is the
    # superset of Latin-1 that WHATWG decodes "latin1" as; its bytes 0x80-0x9F
    # are the quotes, dashes and euro sign, which in Latin-1 are C1 control
    # codes that never occur in real text. So it is taken whenever it reads as
    # cleanly as the best guess; text of other scripts read as Windows-1252 is
    # a mess (a ratio near 1) and keeps the guess.
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        western = None
    if western is not None and mess_ratio(western, 1.0) <= (best.chaos if best is not None else 0.0) + WESTERN_SLACK:
        return western
    if best is None:
        raise CatalogError(f"{where}: not text (no character encoding fits its bytes)")
    return str(best).lstrip("\ufeff")


def _bytes(path: Path, data: bytes | None) -> bytes:
    """The file's bytes: those the caller read (and hashed) already, else read now."""
    return data if data is not None else path.read_bytes()


def clean(text: str) -> str:
    """Line ends unified; NUL and other C0 controls except tab/newline removed
    (they cannot be stored and only come from broken extractions)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)


@register_loader(".txt", ".text", ".log", ".csv")
def load_text(path: Path, data: bytes | None = None) -> Parsed:
    return Parsed([Section(clean(decode(_bytes(path, data), path)))])


# ---------------------------------------------------------------------- markdown
def markdown_sections(text: str) -> tuple[list[Section], str | None]:
    """Sections of Markdown ``text`` at its headings, and its first H1."""
    from markdown_it import MarkdownIt

    lines = text.split("\n")
    starts: list[tuple[int, int, str]] = []  # (line, level, heading text)
    tokens = MarkdownIt("commonmark").parse(text)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map and i + 1 < len(tokens):
            starts.append((tok.map[0], int(tok.tag[1]), tokens[i + 1].content.strip()))
    return _sections(lines, starts)


def _sections(lines: list[str], starts: list[tuple[int, int, str]]) -> tuple[list[Section], str | None]:
    """Cut ``lines`` at ``starts``; each section's heading is the path of
    headings above it (``"A > B"``)."""
    title = next((h for _, level, h in starts if level == 1), None)
    out: list[Section] = []
    if not starts or starts[0][0] > 0:
        head = "\n".join(lines[: starts[0][0] if starts else len(lines)])
        if head.strip():
            out.append(Section(head.strip("\n")))
    path: list[tuple[int, str]] = []
    for n, (line, level, heading) in enumerate(starts):
        path = [p for p in path if p[0] < level] + [(level, heading)]
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        body = "\n".join(lines[line:end]).strip("\n")
        if body.strip():
            out.append(Section(body, heading=" > ".join(h for _, h in path if h) or None))
    return out, title


@register_loader(".md", ".markdown", ".mdown", ".mkd")
def load_markdown(path: Path, data: bytes | None = None) -> Parsed:
    sections, title = markdown_sections(clean(decode(_bytes(path, data), path)))
    return Parsed(sections, title)


# ---------------------------------------------------------------------- reStructuredText
_RST_RULE = re.compile(r"""^([=\-`:'"~^_*+#<>.])\1{2,}\s*$""")


def rst_sections(text: str) -> tuple[list[Section], str | None]:
    """Sections of reStructuredText at its section titles: a line underlined
    (and maybe overlined) by a run of one punctuation character at least as
    long as it. Levels follow the order adornment styles first appear, as
    docutils assigns them."""
    lines = text.split("\n")
    styles: list[tuple[str, bool]] = []
    starts: list[tuple[int, int, str]] = []
    i = 0
    while i < len(lines) - 1:
        line, under = lines[i], lines[i + 1]
        over = i > 0 and _RST_RULE.match(lines[i - 1] or "") is not None
        if line.strip() and not _RST_RULE.match(line) and _RST_RULE.match(under) and len(under.rstrip()) >= len(line.rstrip()):
            style = (under[0], over and lines[i - 1][:1] == under[0])
            if style not in styles:
                styles.append(style)
            starts.append((i - 1 if style[1] else i, styles.index(style) + 1, line.strip()))
            i += 2
            continue
        i += 1
    return _sections(lines, starts)


@register_loader(".rst", ".rest")
def load_rst(path: Path, data: bytes | None = None) -> Parsed:
    sections, title = rst_sections(clean(decode(_bytes(path, data), path)))
    return Parsed(sections, title)


# ---------------------------------------------------------------------- HTML
@register_loader(".html", ".htm", ".xhtml")
def load_html(path: Path, data: bytes | None = None) -> Parsed:
    import trafilatura

    html = decode(_bytes(path, data), path)
    text = trafilatura.extract(html, output_format="markdown", include_formatting=True, include_tables=True, include_comments=False)
    if not text or not text.strip():
        text = trafilatura.html2txt(html) or ""
    meta = trafilatura.extract_metadata(html)
    sections, h1 = markdown_sections(clean(text))
    return Parsed(sections, (meta.title if meta is not None and meta.title else None) or h1)


# ---------------------------------------------------------------------- PDF
@register_loader(".pdf")
def load_pdf(path: Path, data: bytes | None = None) -> Parsed:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(_bytes(path, data)))
        if reader.is_encrypted and not reader.decrypt(""):
            raise CatalogError(f"{path}: the PDF is encrypted")
        sections = [Section(clean(page.extract_text() or "").strip(), page=n) for n, page in enumerate(reader.pages, start=1)]
        info = reader.metadata
        title = str(info.title).strip() if info is not None and info.title else None
    except PyPdfError as exc:
        raise CatalogError(f"{path}: not a readable PDF ({exc})") from None
    sections = [s for s in sections if s.text]
    if not sections:
        raise CatalogError(f"{path}: the PDF has no extractable text (a scan needs OCR first)")
    return Parsed(sections, title or None)


# ---------------------------------------------------------------------- DOCX
@register_loader(".docx")
def load_docx(path: Path, data: bytes | None = None) -> Parsed:
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(_bytes(path, data)))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise CatalogError(f"{path}: not a readable DOCX ({exc})") from None
    lines: list[str] = []
    starts: list[tuple[int, int, str]] = []
    title = (document.core_properties.title or "").strip() or None
    for p in document.paragraphs:
        text = clean(p.text).strip()
        if not text:
            continue
        style = (p.style.name if p.style is not None else "") or ""
        level = _heading_level(style)
        if style == "Title" and title is None:
            title = text
        if level:
            starts.append((len(lines), level, text))
        lines += [text, ""]  # a blank line between paragraphs, as in Markdown
    for table in document.tables:
        for row in table.rows:
            cells = [clean(c.text).strip() for c in row.cells]
            if any(cells):
                lines.append(" | ".join(cells))
    sections, _ = _sections(lines, starts)
    return Parsed(sections, title)


def _heading_level(style: str) -> int:
    m = re.fullmatch(r"Heading (\d)", style)
    return int(m.group(1)) if m else 0
