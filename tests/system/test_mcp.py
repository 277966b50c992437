"""The MCP server through the SDK's own client: stdio (``permrag mcp --as``, a
subprocess) and streamable HTTP (a server on a free port, bearer tokens from
the token table and JWTs). Every answer is compared with ``rag.search`` /
``can_read`` / the document texts for the principal the server binds; a
model-supplied user is refused; a request without valid credentials gets
nothing."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import sqlalchemy as sa
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from permrag import PermRAG
from permrag.mcp import Tokens

ROOT = Path(__file__).resolve().parents[2]
PERMRAG = str(Path(sys.executable).parent / "permrag")
DOCS = [
    {"external_id": "leave", "text": "Parental leave is 20 weeks for every employee.", "attrs": {"level": "public"}},
    {"external_id": "travel", "text": "Travel budget rules and leave days abroad.", "attrs": {"level": "public"}},
    {"external_id": "pay", "text": "Salary bands and leave payouts for 2026.", "attrs": {"level": "confidential"}},
    {"external_id": "merger", "text": "Merger plan: leave the old office by June.", "attrs": {"level": "secret"}},
    {"external_id": "handbook", "text": " ".join(f"Handbook part {i} on leave and holidays." for i in range(30)), "attrs": {"level": "public"}},
]
ACME = [{"external_id": "acme-leave", "text": "Acme leave policy: 25 days.", "attrs": {"level": "public"}}]
QUERIES = ["leave", "salary bands", "merger office", "holidays handbook"]
SECRET = "a-test-hmac-secret-of-more-than-32-bytes!"


def build(home: str, out: str) -> None:
    """Make the store and write the answers the library gives (run in a process of
    its own: Milvus Lite serves a file to one process at a time)."""
    rag = PermRAG.open(home, encoder="hash", chunk_size=200, chunk_overlap=0)
    rag.add_documents(DOCS)
    rag.add_documents(ACME, tenant="acme")
    p = rag.policy
    p.add_role("staff")
    p.grant("staff", "level:public")
    p.add_role("boss")
    p.grant("boss", "*")
    p.assign_user("alice", "staff")
    p.assign_user("bob", "boss")
    p.add_role("staff", tenant="acme")
    p.grant("staff", "level:public", tenant="acme")
    p.assign_user("carol", "staff", tenant="acme")
    expected = [
        [user, tenant, q, [(h.external_id, h.text, h.policy_version) for h in rag.search(q, user=user, tenant=tenant, k=5, mode="dense")]]
        for user, tenant in (("alice", "default"), ("bob", "default"), ("carol", "acme"))
        for q in QUERIES
    ]
    texts = {d["external_id"]: "\n".join(h.text for h in rag.fetch(d["external_id"], user="bob")) for d in DOCS}
    texts["acme-leave"] = rag.fetch("acme-leave", user="carol", tenant="acme")[0].text
    tokens = Tokens(rag.catalog.engine)
    alice_token, _ = tokens.add("alice", "default", name="alice laptop")
    revoked_token, info = tokens.add("bob", "default")
    tokens.revoke(info.id)
    world = {"expected": expected, "texts": texts, "alice_token": alice_token, "revoked_token": revoked_token, "version": rag.policy_version}
    Path(out).write_text(json.dumps(world))
    rag.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The store (the server subprocesses open it) and the library's answers on it."""
    base = tmp_path_factory.mktemp("mcp")
    home, out = base / "home", base / "world.json"
    code = f"from tests.system.test_mcp import build; build({str(home)!r}, {str(out)!r})"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    world = json.loads(out.read_text())
    world["home"] = home
    world["expected"] = {(u, t, q): [tuple(h) for h in hits] for u, t, q, hits in world["expected"]}
    assert world["expected"][("bob", "default", "merger office")] != world["expected"][("alice", "default", "merger office")]
    return world


def run(coro, timeout: float = 180.0):
    """Run a client session to its end; a server that stops answering fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def passages(result) -> list[tuple[str, str, int]]:
    assert not result.is_error, result.content
    return [(p["external_id"], p["text"], p["policy_version"]) for p in result.structured_content["passages"]]


async def exercise(client: Client, user: str, tenant: str, world: dict) -> int:
    """Every tool, compared with the library's answers for ``user``; returns how
    many documents the server fetched as ``user``."""
    tools = (await client.list_tools()).tools
    assert {t.name for t in tools} == {"search", "can_read", "fetch", "explain"}
    for t in tools:
        assert not {"user", "tenant", "user_id"} & set(t.input_schema["properties"]), t.name
        assert "external id" in t.description or "by external id" in t.description
    for q in QUERIES:
        got = await client.call_tool("search", {"query": q, "k": 5, "mode": "dense"})
        assert passages(got) == world["expected"][(user, tenant, q)]
        assert got.structured_content["user"] == user and got.structured_content["tenant"] == tenant
        assert f"policy version {world['version']}" in got.content[0].text
    readable = {ext for (u, t, _), hits in world["expected"].items() if (u, t) == (user, tenant) for ext, _, _ in hits}
    for ext in readable & set(world["texts"]):
        r = await client.call_tool("fetch", {"document_id": ext})
        assert not r.is_error and r.structured_content["text"] == world["texts"][ext]
        c = await client.call_tool("can_read", {"document_id": ext})
        assert c.structured_content["readable"] is True and user in c.structured_content["why"]
    return len(readable & set(world["texts"]))


async def refusals(client: Client, hidden: str, world: dict) -> None:
    """A model-supplied identity is refused; hidden and missing documents get one answer."""
    for extra in ({"user": "bob"}, {"tenant": "acme"}, {"user_id": "bob"}):
        r = await client.call_tool("search", {"query": "merger office", "mode": "dense", **extra})
        assert r.is_error and "refused" in r.content[0].text and "Merger" not in r.content[0].text
        r = await client.call_tool("fetch", {"document_id": hidden, **extra})
        assert r.is_error and world["texts"][hidden] not in r.content[0].text
    r = await client.call_tool("search", {"query": "leave", "mode": "dense", "filter": "level == 'secret'"})
    assert r.is_error and "unknown argument" in r.content[0].text
    answers = []
    for doc in (hidden, "no-such-document"):
        c = await client.call_tool("can_read", {"document_id": doc})
        f = await client.call_tool("fetch", {"document_id": doc})
        assert c.structured_content["readable"] is False and c.structured_content["why"] is None and f.is_error
        answers.append((c.content[0].text.replace(doc, "X"), f.content[0].text.replace(doc, "X"), c.structured_content["policy_version"]))
    assert answers[0] == answers[1]


# ---------------------------------------------------------------------- stdio
def stdio(home: Path, *args: str) -> Client:
    env = {"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "")}
    return Client(StdioServerParameters(command=PERMRAG, args=["mcp", "--home", str(home), *args], env=env))


def test_stdio_server_acts_as_the_bound_user(world) -> None:
    async def main() -> int:
        async with stdio(world["home"], "--as", "alice") as client:
            fetched = await exercise(client, "alice", "default", world)
            await refusals(client, "merger", world)
            return fetched

    assert run(main()) >= 1  # the server fetched alice's documents as alice


def test_stdio_server_in_another_tenant(world) -> None:
    async def main() -> None:
        async with stdio(world["home"], "--as", "carol", "--tenant", "acme") as client:
            await exercise(client, "carol", "acme", world)
            r = await client.call_tool("fetch", {"document_id": "leave"})  # the default tenant's document
            assert r.is_error and "Parental" not in r.content[0].text

    run(main())


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give --as USER"),
        (["--as", "mallory"], "unknown user 'mallory'"),
        (["--transport", "http"], "give --tokens and/or --jwt-key"),
        (["--transport", "http", "--as", "alice", "--tokens"], "not --as"),
    ],
)
def test_mcp_command_refuses_a_server_without_a_principal(world, args, message) -> None:
    res = subprocess.run([PERMRAG, "mcp", "--home", str(world["home"]), *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 1 and message in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------------- HTTP
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def http_server(world, tmp_path_factory):
    key = tmp_path_factory.mktemp("jwt") / "secret"
    key.write_text(SECRET)
    port = free_port()
    proc = subprocess.Popen(
        [PERMRAG, "mcp", "--home", str(world["home"]), "--transport", "http", "--port", str(port), "--tokens", "--jwt-key", str(key), "--jwt-audience", "permrag-test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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


def token_for(user: str, tenant: str | None = None, *, key: str = SECRET, exp: float | None = None, aud: str = "permrag-test") -> str:
    claims = {"sub": user, "aud": aud, "exp": int(exp if exp is not None else time.time() + 600)}
    if tenant is not None:
        claims["tenant"] = tenant
    return jwt.encode(claims, key, algorithm="HS256")


def http(url: str, token: str | None) -> tuple[object, Client]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    session = create_mcp_http_client(headers=headers)
    return session, Client(streamable_http_client(url, http_client=session))


async def call_as(url: str, token: str | None, body):
    session, client = http(url, token)
    async with session, client:
        return await body(client)


def test_http_table_token_acts_as_its_owner(world, http_server) -> None:
    async def body(client: Client) -> int:
        fetched = await exercise(client, "alice", "default", world)
        await refusals(client, "pay", world)
        return fetched

    assert run(call_as(http_server, world["alice_token"], body)) >= 1


def test_http_jwt_acts_as_its_subject_in_its_tenant(world, http_server) -> None:
    assert run(call_as(http_server, token_for("bob"), lambda c: exercise(c, "bob", "default", world))) >= 1
    assert run(call_as(http_server, token_for("carol", "acme"), lambda c: exercise(c, "carol", "acme", world))) >= 1


@pytest.mark.parametrize(
    "token",
    [
        None,
        "not-a-token",
        "prt_made-up-token-that-was-never-issued",
        "revoked",
        "expired",
        "wrong-key",
        "wrong-audience",
        "no-subject",
    ],
)
def test_http_without_valid_credentials_gets_nothing(world, http_server, token) -> None:
    forged = {
        "revoked": world["revoked_token"],
        "expired": token_for("bob", exp=time.time() - 60),
        "wrong-key": token_for("bob", key="another-secret-that-is-also-long-enough!!"),
        "wrong-audience": token_for("bob", aud="someone-else"),
        "no-subject": jwt.encode({"aud": "permrag-test", "exp": int(time.time() + 600)}, SECRET, algorithm="HS256"),
    }.get(token, token)
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if forged is not None:
        headers["Authorization"] = f"Bearer {forged}"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    res = httpx.post(http_server, json=init, headers=headers, timeout=30)
    assert res.status_code == 401 and "Parental" not in res.text
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "leave", "user": "bob"}}}
    res = httpx.post(http_server, json=call, headers=headers, timeout=30)
    assert res.status_code == 401 and "leave" not in res.text.lower().replace("invalid_token", "")

    async def connect() -> None:
        await call_as(http_server, forged, lambda c: c.list_tools())

    with pytest.raises(BaseException):  # noqa: B017 (the SDK client cannot even initialise; it fails with its own error or an ExceptionGroup)
        run(connect())


def test_the_token_table_stores_only_hashes(world) -> None:
    engine = sa.create_engine(f"sqlite:///{world['home'] / 'permrag.db'}")
    with engine.connect() as conn:
        rows = [tuple(str(v) for v in r) for r in conn.execute(sa.text("SELECT * FROM permrag_tokens"))]
    engine.dispose()
    assert len(rows) == 2
    assert not any(world["alice_token"] in v or world["revoked_token"] in v for r in rows for v in r)


def test_token_commands(tmp_path) -> None:
    home = str(tmp_path / "h")
    rag = PermRAG.open(home, catalog_only=True)
    rag.policy.add_role("staff")
    rag.policy.assign_user("alice", "staff")
    rag.close()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PERMRAG, "token", *args, "--home", home], capture_output=True, text=True, timeout=120)

    made = cli("add", "alice", "--name", "ci")
    token = made.stdout.splitlines()[0]
    assert made.returncode == 0 and token.startswith("prt_")
    listed = cli("list")
    assert "alice" in listed.stdout and "active" in listed.stdout and token not in listed.stdout
    token_id = listed.stdout.split()[0]
    assert cli("revoke", token_id).returncode == 0
    assert "revoked" in cli("list").stdout
    again = cli("revoke", token_id)
    assert again.returncode == 1 and "already revoked" in again.stderr
    typo = cli("add", "alcie")
    assert typo.returncode == 1 and "unknown user 'alcie'" in typo.stderr and "Traceback" not in typo.stderr
    rag = PermRAG.open(home, catalog_only=True)
    assert Tokens(rag.catalog.engine).lookup(token) is None
    rag.close()


def test_the_readme_mcp_snippet_runs_as_written(tmp_path) -> None:
    from ..system.test_docs import blocks, env_for

    (script,) = blocks("mcp")
    res = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = res.stdout
    assert "[leave] Parental leave is 20 weeks." in out and "Salary" not in out
    assert "no: there is no document 'pay' that you may read" in out and "refused: user is not an argument" in out
