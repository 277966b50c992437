"""Delegated MCP calls (issue 39) through the SDK's own client: a store token
bound to an agent, RFC 8693 delegation JWTs (``act``, nested chains), forged
and partial tokens, scope escalation, and ``permrag mcp --as USER --agent
AGENT`` on stdio. Every answer is compared with the library's delegated
answers, computed in the process that built the store; the audit records the
server wrote name the user and the agent."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from mcp import Client

from permrag import PermRAG
from permrag.mcp import Tokens

from ..system.test_mcp import PERMRAG, ROOT, call_as, free_port, run, stdio

SECRET = "a-delegation-test-hmac-secret-of-32-bytes+"
DOCS = (
    [{"external_id": f"kb-{i}", "text": f"How to reset a password, step {i}.", "attrs": {"space": "kb"}} for i in range(4)]
    + [{"external_id": f"hr-{i}", "text": f"Salary review {i}; password rules for HR.", "attrs": {"space": "hr"}} for i in range(3)]
    + [{"external_id": f"eng-{i}", "text": f"Password hashing design note {i}.", "attrs": {"space": "eng"}} for i in range(2)]
)
QUERIES = ["password", "salary review", "reset step"]
PRINCIPALS = {"erin": (), "erin+bot": ("bot",), "sam+bot": ("bot",), "erin+bot+helper": ("bot", "helper")}


def build(home: str, out: str) -> None:
    """The store, its tokens and the library's delegated answers (in a process of its own)."""
    rag = PermRAG.open(home, encoder="hash", chunk_size=200, chunk_overlap=0)
    rag.add_documents(DOCS)
    p = rag.policy
    for role, sel in (("employee", "space:kb"), ("hr", "space:hr"), ("kb-reader", "space:kb"), ("eng", "space:eng"), ("one", "doc:kb-0")):
        p.add_role(role)
        p.grant(role, sel)
    p.assign_user("erin", "employee")
    p.assign_user("erin", "hr")
    p.assign_user("sam", "eng")
    p.assign_user("sam", "employee")
    p.assign_agent("bot", "kb-reader")
    p.assign_agent("helper", "one")
    expected = {}
    for key, agents in PRINCIPALS.items():
        user = key.split("+")[0]
        for q in QUERIES:
            hits = rag.search(q, user=user, k=5, mode="dense", agent=list(agents) or None)
            expected[f"{key}|{q}"] = [[h.external_id, h.text] for h in hits]
    tokens = Tokens(rag.catalog.engine)
    world = {
        "expected": expected,
        "bot": tokens.add("erin", "default", agent="bot")[0],
        "bot_search_only": tokens.add("erin", "default", agent="bot", scopes=["search"])[0],
        "scim_only": tokens.add("erin", "default", scopes=["scim"])[0],
    }
    Path(out).write_text(json.dumps(world))
    rag.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("deleg")
    home, out = base / "home", base / "world.json"
    res = subprocess.run([sys.executable, "-c", f"from tests.system.test_mcp_delegation import build; build({str(home)!r}, {str(out)!r})"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    w = json.loads(out.read_text())
    w["home"] = home
    assert w["expected"]["erin|password"] != w["expected"]["erin+bot|password"]  # the agent narrows erin's view
    return w


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    key = tmp_path_factory.mktemp("jwt") / "secret"
    key.write_text(SECRET)
    port = free_port()
    args = [PERMRAG, "mcp", "--home", str(world["home"]), "--transport", "http", "--port", str(port), "--tokens", "--jwt-key", str(key), "--jwt-audience", "permrag-test"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError(f"the MCP server did not start: {proc.communicate()[1][-2000:]}") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]


def delegation(sub: str | None, act: object = None, *, key: str = SECRET, scope: object = None) -> str:
    claims: dict = {"aud": "permrag-test", "exp": int(time.time() + 600)}
    if sub is not None:
        claims["sub"] = sub
    if act is not None:
        claims["act"] = act
    if scope is not None:
        claims["scope"] = scope
    return jwt.encode(claims, key, algorithm="HS256")


async def answers(client: Client, key: str, world: dict) -> dict[str, list[str]]:
    """Every search equals the library's delegated search for ``key`` (user+agents); the ids, by query."""
    out = {}
    for q in QUERIES:
        got = await client.call_tool("search", {"query": q, "k": 5, "mode": "dense"})
        assert not got.is_error, got.content
        assert [[p["external_id"], p["text"]] for p in got.structured_content["passages"]] == world["expected"][f"{key}|{q}"]
        assert got.structured_content["user"] == key.split("+")[0]
        assert got.structured_content["agent"] == (key.split("+")[1] if "+" in key else None)
        out[q] = [p["external_id"] for p in got.structured_content["passages"]]
    return out


# stdio first: the HTTP server below holds the Milvus Lite folder until the module ends
def test_stdio_as_a_user_through_an_agent(world) -> None:
    async def main() -> None:
        async with stdio(world["home"], "--as", "erin", "--agent", "bot") as client:
            await answers(client, "erin+bot", world)
            assert (await client.call_tool("fetch", {"document_id": "hr-0"})).is_error

    run(main())
    for args, message in ((["--agent", "bot"], "give --as USER"), (["--as", "erin", "--agent", "bto"], "unknown agent 'bto'")):
        res = subprocess.run([PERMRAG, "mcp", "--home", str(world["home"]), *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert res.returncode == 1 and message in res.stderr and "Traceback" not in res.stderr


def test_a_store_token_bound_to_an_agent_sees_only_the_intersection(world, server) -> None:
    async def body(client: Client) -> None:
        assert {t.name for t in (await client.list_tools()).tools} == {"search", "can_read", "fetch", "explain"}
        await answers(client, "erin+bot", world)
        assert not (await client.call_tool("fetch", {"document_id": "kb-1"})).is_error
        for hidden in ("hr-0", "eng-0", "no-such"):  # hr: erin yes, bot no; eng: neither
            f = await client.call_tool("fetch", {"document_id": hidden})
            c = await client.call_tool("can_read", {"document_id": hidden})
            e = await client.call_tool("explain", {"document_id": hidden})
            assert f.is_error and "Salary" not in f.content[0].text and c.structured_content["readable"] is False and e.structured_content["why"] is None
        e = await client.call_tool("explain", {"document_id": "kb-2"})
        assert "erin → employee" in e.structured_content["why"] and "bot → kb-reader" in e.structured_content["why"]
        # the token cannot be replayed for another user or agent through the arguments
        for extra in ({"user": "sam"}, {"agent": "helper"}, {"act": {"sub": "x"}}, {"scope": "fetch"}):
            r = await client.call_tool("search", {"query": "salary review", "mode": "dense", **extra})
            assert r.is_error and "refused" in r.content[0].text and "Salary" not in r.content[0].text

    run(call_as(server, world["bot"], body))


def test_delegation_jwts_act_and_nested_chains(world, server) -> None:
    got = {}

    def as_key(key: str):
        async def body(client: Client) -> None:
            got[key] = await answers(client, key, world)  # each equal to the library's delegated search

        return body

    run(call_as(server, delegation("erin", {"sub": "bot"}), as_key("erin+bot")))
    run(call_as(server, delegation("sam", {"sub": "bot"}), as_key("sam+bot")))
    run(call_as(server, delegation("erin", {"sub": "bot", "act": {"sub": "helper"}}), as_key("erin+bot+helper")))
    run(call_as(server, delegation("erin"), as_key("erin")))
    assert set(got) == {"erin+bot", "sam+bot", "erin+bot+helper", "erin"}
    assert got["erin+bot"] != got["erin"]  # the agent narrows what the user alone is served
    assert got["erin+bot+helper"] != got["erin+bot"]  # and every actor of the chain narrows it again


def tampered(token: str, **changes: object) -> str:
    """``token`` with its payload changed and its signature kept (a replay for someone else)."""
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return ".".join([head, base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode(), sig])


@pytest.mark.parametrize(
    "name",
    [
        "act-without-sub", "act-empty-sub", "act-not-an-object", "nested-act-without-sub", "act-sub-not-a-string", "no-sub-only-act", "wrong-key",
        "replayed-for-sam", "agent-swapped", "scim-store-token", "scim-jwt", "scim-beside-search-jwt", "scope-not-a-string",
    ],
)  # fmt: skip
def test_forged_and_partial_delegation_tokens_get_nothing(world, server, name) -> None:
    good = delegation("erin", {"sub": "bot"})
    token = {
        "act-without-sub": delegation("erin", {"client_id": "bot"}),
        "act-empty-sub": delegation("erin", {"sub": ""}),
        "act-not-an-object": delegation("erin", "bot"),
        "nested-act-without-sub": delegation("erin", {"sub": "bot", "act": {"iss": "x"}}),
        "act-sub-not-a-string": delegation("erin", {"sub": ["bot"]}),
        "no-sub-only-act": delegation(None, {"sub": "bot"}),
        "wrong-key": delegation("erin", {"sub": "bot"}, key="another-secret-that-is-also-long-enough!!"),
        "replayed-for-sam": tampered(good, sub="sam"),
        "agent-swapped": tampered(good, act={"sub": "helper"}),
        "scim-store-token": world["scim_only"],  # a SCIM token never searches, on `permrag mcp` too
        "scim-jwt": delegation("erin", scope="scim"),
        "scim-beside-search-jwt": delegation("erin", {"sub": "bot"}, scope="search scim"),
        "scope-not-a-string": delegation("erin", {"sub": "bot"}, scope={"search": True}),
    }[name]
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    assert httpx.post(server, json=init, headers=headers, timeout=30).status_code == 401
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "salary review"}}}
    res = httpx.post(server, json=call, headers=headers, timeout=30)
    assert res.status_code == 401 and "Salary" not in res.text


def test_a_call_outside_the_tokens_scopes_is_refused(world, server) -> None:
    async def search_only(client: Client) -> None:
        await answers(client, "erin+bot", world)
        for tool in ("fetch", "can_read", "explain"):
            r = await client.call_tool(tool, {"document_id": "kb-0"})
            assert r.is_error and f"do not include {tool!r}" in r.content[0].text and "reset" not in r.content[0].text

    async def nothing(client: Client) -> None:
        for tool, args in (("search", {"query": "password"}), ("fetch", {"document_id": "kb-0"})):
            r = await client.call_tool(tool, args)
            assert r.is_error and "do not include" in r.content[0].text and "reset" not in r.content[0].text

    async def fetch_too(client: Client) -> None:
        assert not (await client.call_tool("fetch", {"document_id": "kb-0"})).is_error
        assert (await client.call_tool("can_read", {"document_id": "kb-0"})).is_error

    run(call_as(server, world["bot_search_only"], search_only))
    run(call_as(server, delegation("erin", {"sub": "bot"}, scope="openid search"), search_only))
    run(call_as(server, delegation("erin", {"sub": "bot"}, scope=["search"]), search_only))  # a list limits like the string
    run(call_as(server, delegation("erin", scope="can_read explain"), nothing))
    run(call_as(server, delegation("erin", {"sub": "bot"}, scope="search fetch"), fetch_too))


def test_the_servers_audit_records_name_user_and_agent(world, server) -> None:
    run(call_as(server, delegation("erin", {"sub": "bot", "act": {"sub": "helper"}}), lambda c: c.call_tool("search", {"query": "password", "mode": "dense"})))
    run(call_as(server, world["bot"], lambda c: c.call_tool("can_read", {"document_id": "hr-1"})))
    with PermRAG.open(world["home"], catalog_only=True) as rag:
        recs = rag.audit_log(limit=2)
        by_bot = rag.audit_log(agent="bot", limit=500)
    assert [(r["event"], r["user"], r["agent"]) for r in recs] == [("check", "erin", "bot"), ("search", "erin", "bot")]
    assert recs[0]["readable"] is False and recs[1]["agents"] == ["bot", "helper"]
    assert by_bot and all(r["agent"] == "bot" and r["user"] in ("erin", "sam") for r in by_bot)


def test_an_agents_revoke_in_another_process_holds_for_the_next_call(world, server) -> None:
    async def search(client: Client) -> list[str]:
        got = await client.call_tool("search", {"query": "reset step", "k": 5, "mode": "dense"})
        return [p["external_id"] for p in got.structured_content["passages"]]

    before = run(call_as(server, world["bot"], search))
    assert before and all(x.startswith("kb-") for x in before)
    with PermRAG.open(world["home"], catalog_only=True) as rag:
        rag.policy.unassign_agent("bot", "kb-reader")
    try:
        assert run(call_as(server, world["bot"], search)) == []  # the server process sees the revoke at its next call
        assert run(call_as(server, delegation("erin"), search))  # erin alone still reads
    finally:
        with PermRAG.open(world["home"], catalog_only=True) as rag:
            rag.policy.assign_agent("bot", "kb-reader")
    assert run(call_as(server, world["bot"], search)) == before


def test_token_add_with_agent_and_scopes(world) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PERMRAG, "token", *args, "--home", str(world["home"])], capture_output=True, text=True, timeout=120)

    made = cli("add", "erin", "--agent", "bot", "--scope", "search", "--scope", "fetch", "--json")
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["agent"] == "bot" and info["scopes"] == ["fetch", "search"]
    assert "agent=bot" in cli("list").stdout
    for args, message in ((("add", "erin", "--agent", "bto"), "unknown agent 'bto'"), (("add", "erin", "--scope", "admin"), "Invalid value")):
        res = cli(*args)
        assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr
