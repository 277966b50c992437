"""Chinese text: BM25 with the jieba analyzer, dense with the packaged
multilingual static model, both under permissions."""

from __future__ import annotations

import pytest

from permrag import ConfigError, PermRAG

DOCS = [
    ("chem", "混合化学品的科学", "sci"),
    ("wave", "波长是频率的倒数", "sci"),
    ("crys", "这是处理晶体研究的科学", "sci"),
    ("heat", "物理学分支处理的热量和其他形式的能量转换", "eng"),
    ("fish", "我们研究鱼类时会谈到这个", "bio"),
    ("money", "银行利率上升了", "fin"),
]


def _store(tmp_path, analyzer):
    rag = PermRAG.open(tmp_path / analyzer, encoder="static", analyzer=analyzer)
    rag.add_documents([{"external_id": e, "text": t, "attrs": {"dept": d}} for e, t, d in DOCS])
    rag.policy.add_role("sci")
    rag.policy.grant("sci", "dept:sci")
    rag.policy.assign("li", "sci")
    rag.policy.add_role("all")
    rag.policy.grant("all", "*")
    rag.policy.assign("wang", "all")
    return rag


def test_jieba_analyzer_makes_chinese_keyword_search_work(tmp_path):
    rag = _store(tmp_path, "jieba")
    for query, want in [("晶体", "crys"), ("频率", "wave"), ("化学品", "chem"), ("能量", "heat")]:
        hits = rag.search(query, user="wang", k=3, mode="keyword")
        assert hits and hits[0].external_id == want, (query, [h.external_id for h in hits])
    # under permissions: li sees only dept sci
    assert [h.external_id for h in rag.search("能量", user="li", k=3, mode="keyword")] == []
    assert {h.external_id for h in rag.search("科学", user="li", k=10, mode="hybrid")} <= {"chem", "wave", "crys"}
    rag.close()


def test_standard_analyzer_keeps_a_chinese_run_as_one_token(tmp_path):
    """The reason for jieba: without it a word inside a sentence is not found."""
    rag = _store(tmp_path, "standard")
    assert rag.search("晶体", user="wang", k=3, mode="keyword") == []
    rag.close()


def test_static_encoder_ranks_the_matching_chinese_text_first(tmp_path):
    rag = _store(tmp_path, "jieba")
    assert rag.encoder.dim == 64
    hits = rag.search("银行利率", user="wang", k=3, mode="dense")
    assert hits[0].external_id == "money"
    assert all(h.external_id in {"chem", "wave", "crys"} for h in rag.search("银行利率", user="li", k=3, mode="dense"))
    rag.close()


def test_unknown_analyzer_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="analyzer"):
        PermRAG.open(tmp_path / "x", analyzer="klingon")
