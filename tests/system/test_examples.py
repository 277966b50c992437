"""The examples run offline on the embedded default and say what they should."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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


def test_langchain_agent_example(tmp_path) -> None:
    from permrag import PermRAG

    cited = load("langchain_agent").main(str(tmp_path / "home"))
    assert cited
    with PermRAG.open(tmp_path / "home", catalog_only=True) as rag:
        dave = {r.external_id for r in rag.rows(rag.visible("dave"))}
    assert set(cited) <= dave and "fin-forecast" not in cited and "hr-salaries" not in cited


def test_recommendation_example(tmp_path) -> None:
    out = load("recommendation").main(str(tmp_path / "home"))
    assert out["searches"] == 4  # five users, alice and li share a bitmap
    assert out["refused"] is True
    assert all(len(v) == 3 for v in out["recs"].values())


def test_feedback_loop_example(tmp_path) -> None:
    out = load("feedback_loop").main(str(tmp_path / "home"))
    # readable only by those who read both fin-q3 (finance, internal) and hr-vacation (HR, public)
    assert out["readers"] == ["carol"]  # erin (auditor) may not read HR; bob not finance
    assert out["refused"] is True
