"""Structure-aware chunking: sizes in characters and tokens, boundaries at
headings, paragraphs and sentences, never inside a word, overlap, and the
page and heading each chunk keeps."""

from __future__ import annotations

import random
import re

import pytest

from permrag import ConfigError
from permrag.embed import HashEncoder
from permrag.ingest.chunking import Chunker, token_length


def words_text(seed: int, n: int = 2000) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzé") for _ in range(rng.randint(1, 12)))
        out.append(w)
        r = rng.random()
        if r < 0.08:
            out.append(". ")
        elif r < 0.1:
            out.append("\n\n")
        elif r < 0.12:
            out.append(", ")
        else:
            out.append(" ")
    return "".join(out)


def boundary_positions(text: str, chunks: list[str]) -> list[int]:
    """Where each chunk starts in ``text``: the first occurrence after the
    previous chunk's start, no further than just past its end, that begins
    at a word boundary; fails if there is none (a chunk cut inside a word)."""
    out: list[int] = []
    prev_start, prev_end = -1, 0
    for c in chunks:
        p = text.find(c, prev_start + 1)
        while p >= 0 and p > 0 and text[p - 1].isalnum() and c[0].isalnum():
            p = text.find(c, p + 1)
        assert 0 <= p <= prev_end + 8, f"chunk {c[:20]!r} does not start at a word boundary after the previous one"
        out.append(p)
        prev_start, prev_end = p, p + len(c)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_no_chunk_starts_or_ends_inside_a_word_and_sizes_hold(seed) -> None:
    text = words_text(seed)
    size = random.Random(seed).choice([80, 150, 400])
    chunks = Chunker(size, size // 5).split(text)
    assert len(chunks) > 1
    assert all(len(c) <= size for c in chunks)
    for c, p in zip(chunks, boundary_positions(text, chunks)):
        end = p + len(c)
        assert end == len(text) or not (text[end].isalnum() and c[-1].isalnum()), "a chunk ends inside a word"
    # nothing is lost: every word of the text is in some chunk
    assert set(re.findall(r"\w+", text)) == set(w for c in chunks for w in re.findall(r"\w+", c))


def test_overlap_repeats_the_end_of_the_previous_chunk() -> None:
    text = " ".join(f"word{i}" for i in range(300))
    chunks = Chunker(100, 30).split(text)
    for a, b in zip(chunks, chunks[1:]):
        first = b.split()[0]
        assert first in a.split(), "the next chunk starts inside the previous one's tail"


def test_paragraphs_and_sentences_are_preferred_boundaries() -> None:
    paras = [f"Paragraph {i} says one thing. It says it twice." for i in range(6)]
    text = "\n\n".join(paras)
    chunks = Chunker(len(paras[0]) + 5, 0).split(text)
    assert chunks == paras
    sentences = Chunker(30, 0).split(paras[0])
    assert sentences == ["Paragraph 0 says one thing.", "It says it twice."]


def test_markdown_headings_start_chunks() -> None:
    text = "# A\n\nalpha alpha alpha\n## B\nbeta beta beta\n## C\ngamma gamma"
    assert Chunker(25, 0).split(text) == ["# A\n\nalpha alpha alpha", "## B\nbeta beta beta", "## C\ngamma gamma"]


def test_chinese_splits_after_sentence_marks() -> None:
    text = "今天天气很好。我们去公园散步！你想一起来吗？" * 5
    chunks = Chunker(25, 0).split(text)
    assert all(c[-1] in "。！？" for c in chunks)
    assert "".join(chunks) == text


def test_a_word_longer_than_a_chunk_is_the_only_cut_inside_a_word() -> None:
    text = "short " + "x" * 50 + " tail"
    chunks = Chunker(20, 0).split(text)
    assert chunks[0] == "short" and chunks[-1].endswith("tail")
    assert all(len(c) <= 20 for c in chunks)


def test_sections_keep_page_and_heading_and_small_documents_stay_whole() -> None:
    c = Chunker(60, 0)
    assert [x.text for x in c.chunks("fits in one", [{"text": "fits in one", "page": 1}])] == ["fits in one"]
    sections = [
        {"text": "First page text that is rather long and goes on for a while.", "page": 1, "heading": None},
        {"text": "Second page, also long enough to need its own chunk here.", "page": 2, "heading": "Intro"},
    ]
    out = c.chunks("\n\n".join(s["text"] for s in sections), sections)
    assert [(x.page, x.heading) for x in out] == [(1, None), (2, "Intro")]
    assert [x.text for x in out] == [s["text"] for s in sections]  # a chunk never spans two pages


def test_token_sizes_use_the_encoder_tokenizer() -> None:
    enc = HashEncoder(16)
    length = token_length(enc)
    text = " ".join(f"tok{i}" for i in range(500))
    chunks = Chunker(50, 5, "tokens").split(text, length)
    assert all(length(c) <= 50 for c in chunks) and max(length(c) for c in chunks) >= 45
    with pytest.raises(ConfigError):
        Chunker(50, 5, "tokens").split(text)  # no tokenizer given
    with pytest.raises(ConfigError):
        Chunker(10, 10)
    with pytest.raises(ConfigError):
        Chunker(10, 1, "pages")


def test_token_sizes_with_the_default_model_tokenizer() -> None:
    from permrag.embed import resolve_encoder

    enc = resolve_encoder(None)
    length = token_length(enc)
    text = "Unbelievably, tokenisation splits words into word pieces. " * 40
    chunks = Chunker(64, 8, "tokens").split(text, length)
    assert all(length(c) <= 64 for c in chunks) and len(chunks) > 5
    tok = enc._load().tokenizer
    assert length("Unbelievably") == len(tok.encode("Unbelievably", add_special_tokens=False).tokens) > 1
