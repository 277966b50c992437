"""The README and the docs are followed literally.

Snippets marked ``<!-- readme-test: NAME -->`` (in README.md or any page of
docs/) run as written, in a fresh HOME (with the hash encoder where the
model is not the subject); other tests run the named ones. The docs site
builds with ``mkdocs build --strict``, every relative link resolves, the CLI
reference is generated from ``--help``, and no page reads like a run log.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from permrag.cli.doc import commands, page_path, render

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\n```(?:sh|python)\n(.*?)```", re.S)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
RUN_LOG = re.compile(r"this stop|last stop|previous stop|stop \d+|this session|earlier session|previous run|the last run", re.I)


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(kind: str) -> list[str]:
    return [body for p in pages() for k, body in BLOCK.findall(p.read_text(encoding="utf-8")) if k == kind]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMRAG_")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", **extra)
    return env


def test_the_readme_is_a_short_front_door() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "permrag demo" in text and "pytest" in text
    marked = [k for k, _ in BLOCK.findall(text)]
    assert marked.count("shell") == 1 and marked.count("python") == 1


def test_no_page_reads_like_a_run_log_or_cites_outside_the_repository() -> None:
    for p in pages():
        text = p.read_text(encoding="utf-8")
        assert not RUN_LOG.search(text), f"{p.name}: {RUN_LOG.search(text).group(0)!r}"
        assert "../shared" not in text, p.name
    for p in (ROOT / "permrag").rglob("*.py"):
        assert "../shared" not in p.read_text(encoding="utf-8"), p


def test_every_relative_link_resolves() -> None:
    for p in pages():
        for target in LINK.findall(p.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            base = ROOT / "benchmarks" if p.parent.name == "docs" and target.startswith("results/") else p.parent  # plots: docs/hooks.py
            assert (base / target).resolve().exists(), f"{p.relative_to(ROOT)} links to missing {target}"


def test_the_cli_reference_is_generated_and_complete() -> None:
    page = page_path().read_text(encoding="utf-8")
    assert page == render(), "docs/cli.md is stale: run python -m permrag.cli.doc --write"
    for full, _ in commands():
        assert f"## `{full}`" in page, f"{full} is missing from docs/cli.md"


def test_the_docs_site_builds_strictly(tmp_path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs, "mkdocs is a dev dependency"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists() and (tmp_path / "site" / "cli" / "index.html").exists()


@pytest.mark.parametrize("script", blocks("shell"))
def test_shell_snippets_run_as_written(tmp_path, script):
    res = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert "leave" in res.stdout and "CANNOT read 'pay'" in res.stdout


@pytest.mark.parametrize("code", blocks("python"))
def test_python_snippets_run_as_written(tmp_path, code):
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_for(tmp_path, PERMRAG_ENCODER="hash"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "alice CANNOT read 'hr-pay'" in res.stdout and "deny level:confidential (role hr)" in res.stdout
    after = res.stdout.split("alice CANNOT")[1].split("\n", 1)[1]
    assert "hr-leave" in after and "hr-pay" not in after
    assert after.startswith("hybrid ")  # mode "auto" on Milvus Lite (BM25) ran hybrid, and says so
