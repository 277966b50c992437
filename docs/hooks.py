"""MkDocs hooks: pages include files kept elsewhere in the repository, so
nothing is copied by hand and nothing drifts.

``<!-- include: PATH -->`` in a page is replaced by the file at PATH
(relative to the repository root) — the benchmark tables of
``benchmarks/results/`` and ``CHANGELOG.md``; the plots there are added to
the site under ``results/``.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"<!-- include: ([\w./-]+) -->")


def on_files(files, config):
    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    def include(m: re.Match) -> str:
        text = (ROOT / m.group(1)).read_text(encoding="utf-8")
        return re.sub(r"^# .*\n", "", text, count=1) if m.group(1).endswith("CHANGELOG.md") else text

    return INCLUDE.sub(include, markdown)
