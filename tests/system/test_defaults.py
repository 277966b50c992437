"""Defaults that work on every backend: with no ``mode`` given, the library,
the CLI, the MCP server and the LangChain tool search in ``auto`` mode —
hybrid on Milvus Lite (BM25), dense on the Milvus 2.3.5 server (none) — and
answer exactly what the resolved mode answers when named."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from permrag import PermRAG

PERMRAG = str(Path(sys.executable).parent / "permrag")
DOCS = [
    {"external_id": "leave", "text": "Parental leave is 20 weeks for every employee.", "attrs": {"level": "public"}},
    {"external_id": "travel", "text": "Travel budget rules and leave days abroad.", "attrs": {"level": "public"}},
    {"external_id": "pay", "text": "Salary bands and leave payouts for 2026.", "attrs": {"level": "confidential"}},
]


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMRAG_")}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([PERMRAG, "--home", str(home), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(params=["lite", "server"])
def store(request, tmp_path):
    """A home made from the shell: three documents, alice reads the public two."""
    home = tmp_path / "home"
    init = ["init", "--encoder", "hash"]
    if request.param == "server":
        uri = request.getfixturevalue("milvus_server")
        init += ["--milvus-uri", uri, "--collection", f"c_{uuid.uuid4().hex[:12]}"]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    for args in (init, ["ingest", str(tmp_path / "docs.jsonl")], ["role", "add", "staff"], ["grant", "staff", "level:public"], ["user", "assign", "alice", "staff"]):
        res = cli(home, *args)
        assert res.returncode == 0, res.stdout + res.stderr
    return home, request.param, ("hybrid" if request.param == "lite" else "dense")


def test_auto_runs_what_the_backend_has_on_every_face(store) -> None:
    home, backend, expected = store
    # CLI: no --mode
    res = cli(home, "search", "leave", "--as", "alice", "--json", "--k", "3")
    assert res.returncode == 0, res.stdout + res.stderr
    cli_ids = [h["external_id"] for h in json.loads(res.stdout)]
    assert cli_ids and set(cli_ids) <= {"leave", "travel"}
    shown = cli(home, "search", "leave", "--as", "alice", "--k", "3")
    assert shown.returncode == 0 and expected in shown.stdout, shown.stdout + shown.stderr

    # MCP over stdio: the search tool without a mode
    async def mcp_search() -> dict:
        env = {"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "")}
        async with Client(StdioServerParameters(command=PERMRAG, args=["mcp", "--home", str(home), "--as", "alice"], env=env)) as client:
            return (await client.call_tool("search", {"query": "leave", "k": 3})).structured_content

    answer = asyncio.run(mcp_search())
    assert answer["mode"] == expected
    assert [p["external_id"] for p in answer["passages"]] == cli_ids

    # the library and the LangChain tool, in this process (after the others exited)
    from permrag.integrations.langchain import knowledge_tool

    with PermRAG.open(home, consistency="Strong") if backend == "server" else PermRAG.open(home) as rag:
        hits = rag.search("leave", user="alice", k=3)
        named = rag.search("leave", user="alice", k=3, mode=expected)
        assert hits.mode == named.mode == expected
        assert [h.external_id for h in hits] == [h.external_id for h in named] == cli_ids
        assert rag.retrieve("leave", user="alice", k=3).mode == expected
        text = knowledge_tool(rag, k=3).invoke({"query": "leave"}, config={"configurable": {"user": "alice"}})
        assert f"[{cli_ids[0]}]" in text and "[pay]" not in text
        dense = knowledge_tool(rag, k=3, mode="dense").invoke({"query": "leave"}, config={"configurable": {"user": "alice"}})
        assert "[pay]" not in dense and "[leave]" in dense


def test_a_mode_the_backend_lacks_is_still_refused_when_named(store) -> None:
    home, backend, expected = store
    res = cli(home, "search", "leave", "--as", "alice", "--mode", "hybrid")
    if backend == "server":
        assert res.returncode == 1 and "BM25" in res.stderr and "Traceback" not in res.stderr
    else:
        assert res.returncode == 0, res.stderr


def test_the_langchain_tool_checks_its_options_when_made(tmp_path) -> None:
    from permrag import ArgumentError
    from permrag.integrations.langchain import knowledge_tool

    with PermRAG.open(tmp_path / "h", catalog_only=True) as rag:
        with pytest.raises(ArgumentError):
            knowledge_tool(rag, mode="fuzzy")
