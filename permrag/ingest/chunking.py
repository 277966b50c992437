"""Split documents into chunks at their structure, never inside a word.

The split is langchain-text-splitters' recursive splitter with separators
tried in order of strength — a Markdown heading, a blank line (paragraph), a
line end, a sentence end (``. ! ?`` and the CJK ``。！？；``), a clause
(``; : ,``), whitespace — and only for a single word longer than a chunk,
characters. Every separator is whitespace (or zero-width after a CJK
sentence mark) kept at the *end* of the piece before it, so a chunk always
starts at the start of a word.

Sizes are in characters (``unit="chars"``) or in tokens of the store's
encoder (``unit="tokens"``: the model's own tokenizer, so a chunk fits its
window). Documents read by a loader come as sections (a page of a PDF, a
part under a heading of Markdown, HTML, reStructuredText or DOCX); a
document longer than one chunk is chunked section by section, and each chunk
keeps its section's page and heading.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

UNITS = ("chars", "tokens")
SEPARATORS = [
    r"\n(?=#{1,6}\s)",  # before a Markdown heading
    r"\n[ \t]*\n\s*",  # paragraphs
    r"\n",  # lines
    r"(?<=[.!?])\s+",  # sentences
    r"(?<=[。！？；])",  # CJK sentences (no space after the mark)
    r"(?<=[;:,])\s+",  # clauses
    r"(?<=[，、：])",  # CJK clauses
    r"\s+",  # words
    "",  # a word longer than a chunk: characters
]
Length = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    """One chunk's text and where in its document it comes from."""

    text: str
    page: int | None = None
    heading: str | None = None


@dataclass(frozen=True)
class Chunker:
    """Chunks of at most ``size`` units (characters or tokens), ``overlap``
    units shared with the previous chunk (see the module docstring)."""

    size: int = 1000
    overlap: int = 100
    unit: str = "chars"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1 or not isinstance(self.overlap, int) or not 0 <= self.overlap < self.size:
            raise ConfigError(f"chunk size {self.size} / overlap {self.overlap}: need size >= 1 and 0 <= overlap < size")
        if self.unit not in UNITS:
            raise ConfigError(f"chunk unit must be 'chars' or 'tokens', not {self.unit!r}")

    def splitter(self, length: Length | None = None) -> Any:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        if self.unit == "tokens" and length is None:
            raise ConfigError("chunks sized in tokens need the encoder's tokenizer")
        return RecursiveCharacterTextSplitter(
            separators=SEPARATORS,
            is_separator_regex=True,
            keep_separator="end",
            chunk_size=self.size,
            chunk_overlap=self.overlap,
            length_function=length or len,
            strip_whitespace=True,
        )

    def split(self, text: str, length: Length | None = None) -> list[str]:
        """``text`` in chunks (one if it fits)."""
        return [c.text for c in self.chunks(text, length=length)]

    def chunks(self, text: str, sections: Sequence[Mapping[str, Any]] | None = None, length: Length | None = None) -> list[Chunk]:
        """``text`` in chunks; with ``sections`` (``text``, ``page``,
        ``heading`` mappings whose texts make up ``text``) section by section.
        A document that fits in one chunk stays whole."""
        measure = length or len
        if measure(text) <= self.size:
            return [Chunk(text)] if text.strip() else []
        splitter = self.splitter(length)
        if not sections:
            return [Chunk(t) for t in splitter.split_text(text) if t.strip()]
        out: list[Chunk] = []
        for s in sections:
            body = s.get("text") or ""
            page = s.get("page")
            heading = s.get("heading")
            pieces = [body.strip()] if measure(body) <= self.size else splitter.split_text(body)
            out.extend(Chunk(p, page, heading) for p in pieces if p.strip())
        return out


def token_length(encoder: Any) -> Length:
    """The token count of the encoder's own tokenizer (sentence-transformers
    and model2vec models; the hash encoder counts its words)."""
    tokens = getattr(encoder, "_tokens", None)
    if callable(tokens):
        return lambda text: len(tokens(text))
    load = getattr(encoder, "_load", None)
    model = load() if callable(load) else None
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError(f"encoder {getattr(encoder, 'name', type(encoder).__name__)!r} has no tokenizer: size chunks in characters")
    if hasattr(tok, "get_vocab") and hasattr(tok, "convert_tokens_to_ids"):  # a transformers tokenizer
        return lambda text: len(tok.encode(text, add_special_tokens=False))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)  # a tokenizers.Tokenizer
