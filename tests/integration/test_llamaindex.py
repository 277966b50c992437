"""LlamaIndex: the permissioned retriever (in the style of LlamaIndex's own
retriever tests: build, retrieve by string and by QueryBundle, check the
NodeWithScore list) and permissioned() around a real VectorStoreIndex
retriever, both held to a reference — rag.search, and a brute-force ranking
of the whole index restricted to what the caller may read."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from permrag import PermRAG
from permrag.embed import HashEncoder
from permrag.errors import ArgumentError
from permrag.integrations.llamaindex import PermissionedRetriever, permissioned, retriever

LEVELS = ["public", "secret", "confidential", "secret", "internal", "secret"]
DOCS = [{"external_id": f"doc-{i}", "text": f"note {i} on budget, leave and travel {'plans ' * (i % 5)}", "attrs": {"level": LEVELS[i % 6], "team": f"t{i % 5}"}} for i in range(90)]
QUERIES = ["budget leave", "travel plans", "note 17", "leave"]
USERS = ["alice", "bob", "carol", "nobody"]


@pytest.fixture(scope="module")
def rag(tmp_path_factory):
    r = PermRAG.open(tmp_path_factory.mktemp("li") / "h", encoder="hash")
    r.add_documents(DOCS)
    r.add_documents([{"external_id": "other-0", "text": "note on budget leave", "attrs": {"level": "public"}}], tenant="other")
    p = r.policy
    p.add_role("staff")
    p.grant("staff", "level:public")
    p.add_role("lead")
    p.grant("lead", "team:t1")
    p.deny("lead", "level:secret")
    p.add_role("boss")
    p.grant("boss", "*")
    p.assign_user("alice", "staff")
    p.assign_user("bob", "lead")
    p.assign_user("carol", "boss")
    yield r
    r.close()


class HashEmbedding(BaseEmbedding):
    """A LlamaIndex embedding over the hash encoder (no model)."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return HashEncoder(32).encode([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return HashEncoder(32).encode([text])[0].tolist()


@pytest.fixture(scope="module")
def index():
    """A LlamaIndex vector index over the same documents, one node each, with their external id and tenant."""
    nodes = [TextNode(id_=d["external_id"], text=d["text"], metadata={"external_id": d["external_id"], "tenant": "default"}) for d in DOCS]
    return VectorStoreIndex(nodes, embed_model=HashEmbedding())


def readable_ids(rag, user: str) -> set[str]:
    return {r.external_id for r in rag.rows(rag.visible(user))}


# ---------------------------------------------------------------------- the permissioned retriever
def test_retrieve_returns_node_with_scores_equal_to_search(rag) -> None:
    for user in USERS:
        r = retriever(rag, user=user, k=5, mode="dense")
        for q in QUERIES:
            nodes = r.retrieve(q)
            hits = rag.search(q, user=user, k=5, mode="dense")
            assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
            assert [(n.node.node_id, n.node.get_content(), n.score) for n in nodes] == [(h.external_id, h.text, h.score) for h in hits]
            assert all(n.node.metadata["policy_version"] == hits.policy_version and n.node.metadata["tenant"] == "default" for n in nodes)
            assert {n.node.node_id for n in nodes} <= readable_ids(rag, user)


def test_retrieve_by_query_bundle_and_async(rag) -> None:
    r = retriever(rag, user="bob", k=3)
    nodes = r.retrieve(QueryBundle("budget leave"))
    assert len(nodes) == 3
    assert [n.node.node_id for n in nodes] == [n.node.node_id for n in r.retrieve("budget leave")]
    assert [n.node.node_id for n in asyncio.run(r.aretrieve("budget leave"))] == [n.node.node_id for n in nodes]


def test_the_class_is_the_same_retriever(rag) -> None:
    r = PermissionedRetriever(rag, user="alice", k=2, mode="keyword")
    assert [n.node.node_id for n in r.retrieve("travel")] == [h.external_id for h in rag.search("travel", user="alice", k=2, mode="keyword")]


@pytest.mark.parametrize("options", [{"k": 0}, {"mode": "fuzzy"}, {"weights": (1.0, float("nan"))}, {"search_kwargs": {"k": 3}}, {"user_override": "carol"}])
def test_bad_options_fail_at_construction(rag, options) -> None:
    with pytest.raises(ArgumentError):
        retriever(rag, user="alice", **options)


# ---------------------------------------------------------------------- permissioned() around a vector index
def brute_force(index, rag, user: str, query: str, k: int) -> list[float]:
    """Scores of the top k readable nodes of a ranking of the whole index."""
    every = index.as_retriever(similarity_top_k=len(DOCS)).retrieve(query)
    mine = readable_ids(rag, user)
    return [round(n.score, 6) for n in every if n.node.node_id in mine][:k]


@pytest.mark.parametrize("k", [1, 4, 10])
def test_wrapped_vector_index_returns_only_readable_nodes_and_always_k(rag, index, k) -> None:
    for user in USERS:
        mine = readable_ids(rag, user)
        inner = index.as_retriever(similarity_top_k=k)
        safe = permissioned(inner, rag, user=user)
        for q in QUERIES:
            nodes = safe.retrieve(q)
            assert {n.node.node_id for n in nodes} <= mine
            assert len(nodes) == min(k, len(mine))  # over-fetch: k whenever k are readable
            assert [round(n.score, 6) for n in nodes] == brute_force(index, rag, user, q, k)
            assert [n.node.node_id for n in asyncio.run(safe.aretrieve(q))] == [n.node.node_id for n in nodes]
        assert inner.similarity_top_k == k  # the caller's retriever is left as it was


def test_wrapped_nodes_of_another_tenant_or_without_ids_are_dropped(rag) -> None:
    nodes = [
        TextNode(id_="a", text="budget leave", metadata={"external_id": "doc-0", "tenant": "default"}),
        TextNode(id_="b", text="budget leave", metadata={"external_id": "doc-0", "tenant": "other"}),
        TextNode(id_="c", text="budget leave", metadata={"external_id": "doc-0"}),
        TextNode(id_="d", text="budget leave", metadata={"tenant": "default"}),
        TextNode(id_="e", text="budget leave", metadata={"external_id": "doc-0", "tenant": "default", "row_id": -5}),
        TextNode(id_="f", text="budget leave", metadata={"external_id": "doc-1", "tenant": "default"}),
    ]
    inner = VectorStoreIndex(nodes, embed_model=HashEmbedding()).as_retriever(similarity_top_k=6)
    assert [n.node.node_id for n in permissioned(inner, rag, user="alice").retrieve("budget leave")] == ["a"]
    assert {n.node.node_id for n in permissioned(inner, rag, user="carol").retrieve("budget leave")} == {"a", "f"}
    assert [n.node.node_id for n in permissioned(inner, rag, user="nobody").retrieve("budget leave")] == []


def test_wrapping_something_else_is_an_error(rag) -> None:
    with pytest.raises(ArgumentError):
        permissioned(object(), rag, user="alice")


def test_the_module_imports_without_llama_index() -> None:
    code = (
        "import sys; sys.modules['llama_index'] = None; sys.modules['llama_index.core'] = None\n"
        "import permrag.integrations.llamaindex as li\n"
        "from permrag.errors import ConfigError\n"
        "try:\n    li.retriever(None, user='alice')\nexcept ConfigError as e:\n    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert 'pip install "permrag[llamaindex]"' in res.stdout


@pytest.mark.slow  # a subprocess, a stress run or a timed wait: left out by make test-fast
def test_the_readme_llamaindex_snippet_runs_as_written(tmp_path) -> None:
    from ..system.test_docs import blocks, env_for

    (code,) = blocks("llamaindex")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_for(tmp_path, PERMRAG_ENCODER="hash"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("hr-leave ") and "policy version 3" in res.stdout
    assert res.stdout.strip().endswith("['hr-leave']") and "hr-pay" not in res.stdout
