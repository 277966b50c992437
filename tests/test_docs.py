"""The README is followed literally: its set-up snippets marked
``<!-- readme-test: … -->`` run as written, in a fresh HOME (with the hash
encoder where the model is not the subject)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\n```(?:sh|python)\n(.*?)```", re.S)


def blocks(kind: str) -> list[str]:
    return [body for k, body in BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8")) if k == kind]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMRAG_")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", **extra)
    return env


def test_the_readme_has_its_tested_snippets():
    assert len(blocks("shell")) >= 1 and len(blocks("python")) >= 1


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
    assert "hr-leave" in res.stdout and "hr-pay" not in res.stdout.split("alice CANNOT")[1].split("\n", 1)[1]
