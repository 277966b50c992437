"""The examples run offline on the embedded default and say what they should."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quickstart(tmp_path) -> None:
    out = load("quickstart").main(str(tmp_path / "home"))
    assert set(out["alice"]) == {"hr-leave", "eng-oncall"}
    assert set(out["bob"]) == {"hr-leave", "hr-pay"}
    assert out["carol"] == ["hr-leave"]
    assert out["mallory"] == []
