"""Fused results as LangChain documents: typed metadata in and out of a store."""

from __future__ import annotations

from langchain_core.documents import Document

from permrag import PermRAG
from permrag.embed import HashEncoder
from permrag.integrations.langchain import to_document


def test_langchain_documents_with_typed_metadata_in_and_out(tmp_path) -> None:
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(16))
    try:
        rag.add_documents(
            [
                Document(page_content="quarterly budget review", metadata={"level": 3, "public": True, "score": 0.5, "tags": ["a", 2, False]}, id="lc1"),
                Document(page_content="hotel policy", metadata={"level": 1, "public": False}, id="lc2"),
            ]
        )
        rec = rag.row("lc1")
        assert rec.attrs == {"level": "3", "public": "true", "score": "0.5", "tags": ["2", "a", "false"]}
        p = rag.policy
        p.add_role("r")
        p.grant("r", "level:3")
        p.assign_user("u", "r")
        p.add_role("pub")
        p.grant("pub", "public:true")
        p.assign_user("v", "pub")
        p.add_role("t")
        p.grant("t", "tags:2")
        p.assign_user("w", "t")
        for user in ("u", "v", "w"):
            hits = rag.search("budget hotel", user=user, k=5)
            assert [h.external_id for h in hits] == ["lc1"]
            doc = to_document(hits[0])
            assert doc.page_content == "quarterly budget review" and doc.id == "lc1" and doc.metadata["attrs"]["level"] == "3"
    finally:
        rag.close()
