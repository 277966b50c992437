"""Every serve is audited: the LangChain and LlamaIndex ``permissioned()``
wrappers, ``can_read`` (a ``check``) and refused ``fetch`` calls (library and
MCP) — each shown by reading the audit log after the call."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from permrag.errors import NotReadableError

DOCS = [
    {"external_id": "pub-1", "text": "public budget guide", "attrs": {"level": "public"}},
    {"external_id": "pub-2", "text": "public travel rules", "attrs": {"level": "public"}},
    {"external_id": "sec-1", "text": "secret merger plan", "attrs": {"level": "secret"}},
]


@pytest.fixture
def store(rag):
    rag.add_documents(DOCS)
    rag.policy.add_role("staff")
    rag.policy.grant("staff", "level:public")
    rag.policy.assign_user("dave", "staff")
    return rag


def events(rag, kind: str) -> list[dict]:
    return [e for e in rag.audit_log(limit=1000) if e["event"] == kind]


class ListRetriever(BaseRetriever):
    docs: list[Document]
    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.docs[: self.k]


def test_langchain_wrapper_records_what_it_served(store) -> None:
    from permrag.integrations.langchain import permissioned

    order = ["sec-1", "pub-1", "pub-2"]
    inner = ListRetriever(docs=[Document(page_content=x, metadata={"external_id": x, "tenant": "default"}) for x in order], k=3)
    got = [d.metadata["external_id"] for d in permissioned(inner, store, user="dave", k=3).invoke("budget")]
    assert got == ["pub-1", "pub-2"]
    (e,) = events(store, "wrapped-search")
    assert (e["user"], e["tenant"], e["policy_version"]) == ("dave", "default", store.policy_version)
    assert e["external_ids"] == got and e["wrapper"] == "langchain" and e["retriever"] == "ListRetriever" and e["queries"] == ["budget"]
    assert permissioned(inner, store, user="nobody", k=3).invoke("budget") == []
    assert [(e["user"], e["external_ids"]) for e in events(store, "wrapped-search")][0] == ("nobody", [])  # newest first


def test_llamaindex_wrapper_records_what_it_served(store) -> None:
    from llama_index.core.retrievers import BaseRetriever as LIRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from permrag.integrations.llamaindex import permissioned

    class Fixed(LIRetriever):
        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return [NodeWithScore(node=TextNode(id_=x, text=x, metadata={"external_id": x, "tenant": "default"}), score=1.0) for x in ("sec-1", "pub-2")]

    safe = permissioned(Fixed(), store, user="dave", k=2)
    assert [n.node.node_id for n in safe.retrieve("travel")] == ["pub-2"]
    assert [n.node.node_id for n in asyncio.run(safe.aretrieve("travel again"))] == ["pub-2"]
    got = events(store, "wrapped-search")
    assert [(e["wrapper"], e["queries"], e["external_ids"], e["user"]) for e in got] == [
        ("llamaindex", ["travel again"], ["pub-2"], "dave"),
        ("llamaindex", ["travel"], ["pub-2"], "dave"),
    ]


def test_can_read_is_audited_as_a_check(store) -> None:
    assert store.can_read("dave", "pub-1") is True
    assert store.can_read("dave", "sec-1") is False
    assert store.can_read("dave", "no-such") is False
    got = [(e["user"], e["external_id"], e["readable"], e["policy_version"]) for e in reversed(events(store, "check"))]
    v = store.policy_version
    assert got == [("dave", "pub-1", True, v), ("dave", "sec-1", False, v), ("dave", "no-such", False, v)]


def test_a_refused_fetch_or_similar_is_audited(store) -> None:
    for ext in ("sec-1", "no-such"):
        with pytest.raises(NotReadableError):
            store.fetch(ext, user="dave")
        with pytest.raises(NotReadableError):
            store.similar(ext, user="dave")
    for kind in ("fetch", "similar"):
        got = [(e["user"], e["external_id"], e["refused"], e["rows"]) for e in reversed(events(store, kind))]
        assert got == [("dave", "sec-1", True, []), ("dave", "no-such", True, [])], kind


def test_mcp_refused_fetch_and_can_read_are_audited(store) -> None:
    from mcp import Client

    from permrag.mcp.auth import Principal
    from permrag.mcp.server import build_server

    server = build_server(store, principal=Principal("dave"))

    async def main() -> tuple:
        async with Client(server) as client:
            f = await client.call_tool("fetch", {"document_id": "sec-1"})
            c = await client.call_tool("can_read", {"document_id": "sec-1"})
            return f, c

    f, c = asyncio.run(main())
    assert f.is_error and c.structured_content["readable"] is False
    (fe,) = events(store, "fetch")
    assert (fe["user"], fe["external_id"], fe["refused"]) == ("dave", "sec-1", True)
    (ce,) = events(store, "check")
    assert (ce["user"], ce["external_id"], ce["readable"], ce["via"]) == ("dave", "sec-1", False, "mcp")
