"""``permrag serve`` over real HTTP: a server subprocess on a free port, SCIM 2.0
requests with httpx, the third-party checker (``scim2 … test``), and every
write checked by a search in another process (this one, on the same home).

What each test compares with: the search results against a brute force over
the documents the user should see (from the group → role → rule chain the test
set up), the checker's own verdicts, filters and pages against the list
filtered and sliced in Python."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from permrag import PermRAG
from permrag.mcp import Tokens

PERMRAG = str(Path(sys.executable).parent / "permrag")
SCIM2 = str(Path(sys.executable).parent / "scim2")
SCIM = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
DOCS = [{"external_id": f"{dept}-{i}", "text": f"{dept} handbook part {i} on leave and travel", "attrs": {"dept": dept}} for dept in ("eng", "fin") for i in range(3)]
SECRET = "s" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with documents and roles, a SCIM server on it, and this process's own PermRAG."""
    base = tmp_path_factory.mktemp("serve")
    home = base / "home"
    rag = PermRAG.open(home, encoder="hash")
    rag.add_documents(DOCS)
    for dept in ("eng", "fin"):
        rag.policy.add_role(f"{dept}-reader")
        rag.policy.grant(f"{dept}-reader", f"dept:{dept}")
    rag.policy.add_role("no-fin")
    rag.policy.deny("no-fin", "dept:fin")
    tokens = Tokens(rag.catalog.engine)
    scim_token, _ = tokens.add("provisioner", "default", scopes=["scim"])
    search_token, _ = tokens.add("someone", "default")
    (base / "scim-token").write_text(SECRET + "\n")
    port = free_port()
    proc = subprocess.Popen(
        [PERMRAG, "serve", "--home", str(home), "--port", str(port), "--scim-token-file", str(base / "scim-token"), "--tokens", "--no-warm"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError(f"permrag serve did not start: {proc.communicate()[1][-2000:]}") from None
            time.sleep(0.2)
    client = httpx.Client(base_url=url + "/scim/v2", headers={"Authorization": f"Bearer {SECRET}"}, timeout=30)
    yield {"rag": rag, "url": url, "scim": client, "home": home, "scim_token": scim_token, "search_token": search_token}
    client.close()
    rag.close()
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]


def seen(world, user: str) -> list[str]:
    """What ``user`` finds by a search in this process (not the server's), checked
    against casbin enforcing the stored rules document by document."""
    rag = world["rag"]
    rag.refresh()
    found = sorted(h.document for h in rag.search("handbook leave travel", user=user, k=20, mode="dense"))
    enforcer = rag.enforcer()
    assert found == sorted(d["external_id"] for d in DOCS if enforcer.enforce(user, "default", rag.row(d["external_id"]), "read"))
    return found


def expected(*depts: str) -> list[str]:
    return sorted(d["external_id"] for d in DOCS if d["attrs"]["dept"] in depts)


def ok(res: httpx.Response, status: int = 200) -> dict:
    assert res.status_code == status, (res.status_code, res.text)
    if status != 204:
        assert res.headers["content-type"].startswith(SCIM)
        return res.json()
    return {}


def scim_error(res: httpx.Response, status: int, scim_type: str | None = None) -> dict:
    assert res.status_code == status, (res.status_code, res.text)
    assert res.headers["content-type"].startswith(SCIM)
    body = res.json()
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"] and body["status"] == str(status) and body["detail"]
    if scim_type is not None:
        assert body.get("scimType") == scim_type, body
    return body


def patch(world, path: str, *ops: dict, **headers: str) -> httpx.Response:
    return world["scim"].patch(path, json={"schemas": [PATCH], "Operations": list(ops)}, headers=headers)


def test_the_checker_reports_no_failing_check(world) -> None:
    res = subprocess.run([SCIM2, "--url", world["url"] + "/scim/v2", "-h", f"Authorization: Bearer {SECRET}", "test"], capture_output=True, text=True, timeout=180)
    verdicts = re.findall(r"^(SUCCESS|ERROR|CRITICAL|SKIPPED|UNKNOWN)\s+(\w+)", res.stdout, re.M)
    failed = [name for status, name in verdicts if status in ("ERROR", "CRITICAL", "UNKNOWN")]
    assert not failed, res.stdout[-4000:]
    assert sum(1 for status, _ in verdicts if status == "SUCCESS") >= 50, res.stdout[-4000:]
    assert {name for status, name in verdicts if status == "SKIPPED"} <= {"search_with_attributes"}


def test_provisioning_is_seen_by_the_next_search_in_another_process(world) -> None:
    scim = world["scim"]
    alice = ok(scim.post("/Users", json={"schemas": [USER], "userName": "alice@example.com", "externalId": "00u-alice", "active": True}), 201)
    assert alice["id"] == "00u-alice" and alice["meta"]["location"].endswith("/scim/v2/Users/00u-alice")
    assert seen(world, "00u-alice") == []
    eng = ok(scim.post("/Groups", json={"schemas": [GROUP], "displayName": "Engineering", "members": [{"value": "00u-alice"}]}), 201)
    world["rag"].identity.assign_group(eng["id"], "eng-reader")
    assert seen(world, "00u-alice") == expected("eng")
    # Entra ID: capitalised op, "False" as a string
    ok(patch(world, "/Users/00u-alice", {"op": "Replace", "path": "active", "value": "False"}))
    assert seen(world, "00u-alice") == []
    ok(patch(world, "/Users/00u-alice", {"op": "replace", "value": {"active": True}}))  # Okta: no path
    assert seen(world, "00u-alice") == expected("eng")
    renamed = ok(scim.put("/Users/00u-alice", json={"schemas": [USER], "userName": "alice.new@example.com", "externalId": "00u-alice"}))
    assert renamed["userName"] == "alice.new@example.com" and seen(world, "00u-alice") == expected("eng")
    assert world["rag"].identity.labels()["user:00u-alice"] == "alice.new@example.com"
    # Okta's member removal path
    ok(patch(world, f"/Groups/{eng['id']}", {"op": "remove", "path": 'members[value eq "00u-alice"]'}))
    assert seen(world, "00u-alice") == []
    ok(patch(world, f"/Groups/{eng['id']}", {"op": "Add", "path": "members", "value": [{"value": "00u-alice"}]}))
    assert seen(world, "00u-alice") == expected("eng")
    ok(scim.delete("/Users/00u-alice"), 204)
    scim_error(scim.get("/Users/00u-alice"), 404)
    assert seen(world, "00u-alice") == [] and "00u-alice" in world["rag"].identity.deactivated()
    assert ok(scim.get(f"/Groups/{eng['id']}")).get("members", []) == []


def test_a_failed_write_changes_nothing(world) -> None:
    scim, rag = world["scim"], world["rag"]
    bob = ok(scim.post("/Users", json={"schemas": [USER], "userName": "bob"}), 201)
    rag.refresh()
    version = rag.policy_version
    scim_error(scim.post("/Users", json={"schemas": [USER], "userName": "BOB"}), 409, "uniqueness")
    scim_error(scim.post("/Users", json={"schemas": [USER]}), 400, "invalidValue")
    scim_error(scim.post("/Groups", json={"schemas": [GROUP], "displayName": "x", "members": [{"value": "nobody-here"}]}), 400)
    scim_error(patch(world, f"/Users/{bob['id']}", {"op": "replace", "path": "active", "value": "maybe"}), 400, "invalidValue")
    scim_error(patch(world, f"/Users/{bob['id']}", {"op": "replace", "path": "displayName", "value": "ok"}, {"op": "jump"}), 400, "invalidSyntax")
    scim_error(scim.put(f"/Users/{bob['id']}", json={"schemas": [USER], "userName": "bobby"}, headers={"If-Match": 'W/"stale"'}), 412)
    scim_error(scim.post("/Users", content=b"{not json", headers={"content-type": SCIM}), 400, "invalidSyntax")
    scim_error(scim.post("/Users", content=b'{"userName": "' + b"x" * (1 << 21) + b'"}', headers={"content-type": SCIM}), 413)
    scim_error(patch(world, f"/Users/{bob['id']}", {"op": "replace", "value": {"id": "someone-else"}}), 400, "mutability")
    scim_error(patch(world, f"/Users/{bob['id']}", {"op": "remove", "path": "userName"}), 400, "mutability")
    scim_error(patch(world, "/Users/no-such-user", {"op": "replace", "path": "displayName", "value": "x"}), 404)
    rag.refresh()
    assert rag.policy_version == version
    current = ok(scim.get(f"/Users/{bob['id']}"))
    assert current["userName"] == "bob" and "displayName" not in current and current.get("active", True) is True
    # what permrag does not store is accepted and left alone (Entra sends emails, Okta name)
    same = ok(patch(world, f"/Users/{bob['id']}", {"op": "add", "path": 'emails[type eq "work"].value', "value": "b@x"}, {"op": "replace", "value": {"id": bob["id"], "name": {"givenName": "B"}}}))
    assert "emails" not in same and "name" not in same and same["meta"]["version"] == current["meta"]["version"]
    ext = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    same = ok(patch(world, f"/Users/{bob['id']}", {"op": "replace", "path": f"{ext}:active", "value": False}, {"op": "add", "value": {ext: {"userName": "z"}}}))
    assert same["meta"]["version"] == current["meta"]["version"] and same["userName"] == "bob"
    core = ok(patch(world, f"/Users/{bob['id']}", {"op": "replace", "path": f"{USER}:displayName", "value": "Bob"}))
    assert core["displayName"] == "Bob"
    current = core
    rag.refresh()
    version = rag.policy_version
    res = scim.put(f"/Users/{bob['id']}", json={"schemas": [USER], "userName": "bobby"}, headers={"If-Match": current["meta"]["version"]})
    assert ok(res)["userName"] == "bobby" and res.headers["ETag"] == res.json()["meta"]["version"] != current["meta"]["version"]


def test_filters_and_pages_match_the_list_filtered_by_hand(world) -> None:
    scim = world["scim"]
    for i in range(7):
        ok(scim.post("/Users", json={"schemas": [USER], "userName": f"page-{i}@corp", "displayName": f"Page {i % 3}", "active": i % 2 == 0}), 201)
    everyone = ok(scim.get("/Users", params={"count": 1000}))["Resources"]
    want = [u["id"] for u in everyone if u["userName"].startswith("page-") and u.get("active") is True]
    got = ok(scim.get("/Users", params={"filter": 'userName sw "PAGE-" and active eq true'}))
    assert [u["id"] for u in got["Resources"]] == want and got["totalResults"] == len(want) == 4
    page = ok(scim.get("/Users", params={"filter": 'userName co "page-"', "startIndex": 3, "count": 2, "attributes": "userName"}))
    names = [u["userName"] for u in everyone if "page-" in u["userName"]]
    assert [u["userName"] for u in page["Resources"]] == names[2:4] and page["totalResults"] == 7 and page["startIndex"] == 3
    assert all(set(u) == {"schemas", "id", "userName"} for u in page["Resources"])
    assert ok(scim.get("/Users", params={"filter": 'displayName eq "page 1"'}))["totalResults"] == 2  # caseExact false
    excluded = ok(scim.get("/Users", params={"filter": "displayName pr", "excludedAttributes": "displayName"}))
    assert excluded["totalResults"] >= 7 and all("displayName" not in u for u in excluded["Resources"])
    searched = ok(scim.post("/Users/.search", json={"filter": 'userName eq "page-3@corp"', "attributes": ["userName"]}))
    assert [u["userName"] for u in searched["Resources"]] == ["page-3@corp"]
    # an eq the store looks up directly (id, userName, externalId; a group's displayName) answers as the full scan does
    three = next(u for u in everyone if u["userName"] == "page-3@corp")
    for f in (f'id eq "{three["id"]}"', 'userName eq "PAGE-3@corp"', f'userName eq "page-3@corp" and id eq "{three["id"]}"', f'externalId eq "{three["id"]}"'):
        want = [three["id"]] if "externalId" not in f else []
        assert [u["id"] for u in ok(scim.get("/Users", params={"filter": f}))["Resources"]] == want, f
    either = ok(scim.get("/Users", params={"filter": 'userName eq "page-3@corp" or userName eq "page-4@corp"'}))
    assert sorted(u["userName"] for u in either["Resources"]) == ["page-3@corp", "page-4@corp"]
    team = ok(scim.post("/Groups", json={"schemas": [GROUP], "displayName": "Filter Team", "externalId": "ext-team"}), 201)
    for f in ('displayName eq "filter team"', 'externalId eq "ext-team"', 'displayName eq "filter team" and externalId eq "ext-team"'):
        assert [g["id"] for g in ok(scim.get("/Groups", params={"filter": f}))["Resources"]] == [team["id"]], f
    assert ok(scim.get("/Groups", params={"filter": 'externalId eq "EXT-TEAM"'}))["totalResults"] == 0  # caseExact
    for bad in ('userName gt "a"', "not (userName pr)", 'userName eq "a" and (active eq true)', 'emails[type eq "work"]', "userName", 'userName xx "a"'):
        scim_error(scim.get("/Users", params={"filter": bad}), 400, "invalidFilter")


def test_replacing_the_members_of_a_deny_group_wholesale_is_refused(world) -> None:
    scim, rag = world["scim"], world["rag"]
    users = [ok(scim.post("/Users", json={"schemas": [USER], "userName": f"contractor-{i}"}), 201)["id"] for i in range(4)]
    readers = ok(scim.post("/Groups", json={"schemas": [GROUP], "displayName": "all-readers", "members": [{"value": u, "type": "User"} for u in users]}), 201)
    rag.identity.assign_group(readers["id"], "fin-reader")
    members = [{"value": u, "type": "User"} for u in users]
    deny = ok(scim.post("/Groups", json={"schemas": [GROUP], "displayName": "contractors", "members": members}), 201)
    rag.identity.assign_group(deny["id"], "no-fin")
    assert all(seen(world, u) == [] for u in users)
    rag.refresh()
    version = rag.policy_version
    scim_error(scim.put(f"/Groups/{deny['id']}", json={"schemas": [GROUP], "displayName": "contractors", "members": members[:1]}), 409)
    scim_error(patch(world, f"/Groups/{deny['id']}", {"op": "replace", "path": "members", "value": []}), 409)
    scim_error(scim.delete(f"/Groups/{deny['id']}"), 409)
    rag.refresh()
    assert rag.policy_version == version and all(seen(world, u) == [] for u in users)
    # naming the members to remove is an ordinary change, not a wholesale one
    ok(patch(world, f"/Groups/{deny['id']}", {"op": "Remove", "path": "members", "value": [{"value": users[0]}]}))
    assert seen(world, users[0]) == expected("fin") and seen(world, users[1]) == []


def test_tokens_never_cross_between_scim_and_search(world) -> None:
    scim_url, mcp_url = world["url"] + "/scim/v2/Users", world["url"] + "/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    for token in (None, "wrong", world["search_token"]):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        assert scim_error(httpx.get(scim_url, headers=headers), 401) and httpx.get(scim_url, headers=headers).headers["WWW-Authenticate"].startswith("Bearer")
        scim_error(httpx.post(scim_url, json={"schemas": [USER], "userName": "intruder"}, headers=headers), 401)
    ok(world["scim"].post("/Users", json={"schemas": [USER], "userName": "carol"}), 201)
    via_secret = ok(world["scim"].get("/Users", params={"count": 1000}))["Resources"]
    via_token = ok(httpx.get(scim_url, params={"count": 1000}, headers={"Authorization": f"Bearer {world['scim_token']}"}))["Resources"]
    assert [u["id"] for u in via_token] == [u["id"] for u in via_secret] and "carol" in [u["userName"] for u in via_token]
    for token in (SECRET, world["scim_token"]):
        res = httpx.post(mcp_url, json=init, headers={**accept, "Authorization": f"Bearer {token}"})
        assert res.status_code == 401, res.text
    res = httpx.post(mcp_url, json=init, headers={**accept, "Authorization": f"Bearer {world['search_token']}"})
    assert res.status_code == 200, res.text
    assert "intruder" not in [u["userName"] for u in ok(world["scim"].get("/Users", params={"count": 1000}))["Resources"]]
    # a store token provisions its own tenant, and only it
    acme, _ = Tokens(world["rag"].catalog.engine).add("acme-provisioner", "acme", scopes=["scim"])
    made = ok(httpx.post(scim_url, json={"schemas": [USER], "userName": "acme-only"}, headers={"Authorization": f"Bearer {acme}"}), 201)
    assert [u["id"] for u in ok(httpx.get(scim_url, headers={"Authorization": f"Bearer {acme}"}))["Resources"]] == [made["id"]]
    assert "acme-only" not in [u["userName"] for u in ok(world["scim"].get("/Users", params={"count": 1000}))["Resources"]]
    scim_error(world["scim"].get(f"/Users/{made['id']}"), 404)
    world["rag"].refresh()
    assert world["rag"].identity.labels("acme") == {f"user:{made['id']}": "acme-only"}


def test_health_readiness_and_a_search_through_the_mounted_mcp_server(world) -> None:
    import asyncio

    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    rag = world["rag"]
    ok(world["scim"].post("/Users", json={"schemas": [USER], "userName": "mcp-user", "externalId": "mcp-user"}), 201)
    group = ok(world["scim"].post("/Groups", json={"schemas": [GROUP], "displayName": "mcp-readers", "members": [{"value": "mcp-user"}]}), 201)
    rag.identity.assign_group(group["id"], "eng-reader")
    token, _ = Tokens(rag.catalog.engine).add("mcp-user", "default")
    assert httpx.get(world["url"] + "/healthz").json() == {"status": "ok"}
    rag.close()  # Milvus Lite serves its file to one process at a time: the server's turn
    ready = httpx.get(world["url"] + "/readyz", timeout=60)
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text

    async def search() -> list[str]:
        session = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with session, Client(streamable_http_client(world["url"] + "/mcp", http_client=session)) as client:
            got = await client.call_tool("search", {"query": "handbook leave travel", "k": 20, "mode": "dense"})
            assert not got.is_error, got.content
            return sorted({p["document"] for p in got.structured_content["passages"]})

    assert asyncio.run(search()) == expected("eng")


def test_on_postgresql_concurrent_member_patches_all_land_one_version_each(tmp_path, pg_url) -> None:
    """A server on a PostgreSQL catalog, 16 PATCHes of one group from 8 threads at
    once: every member lands, each write is one policy version, and another
    process sees exactly the members and groups the requests made."""
    from concurrent.futures import ThreadPoolExecutor

    home = tmp_path / "home"
    subprocess.run([PERMRAG, "init", "--home", str(home), "--database-url", pg_url, "--encoder", "hash"], check=True, capture_output=True, timeout=120)
    (tmp_path / "tok").write_text(SECRET)
    port = free_port()
    proc = subprocess.Popen([PERMRAG, "serve", "--home", str(home), "--port", str(port), "--scim-token-file", str(tmp_path / "tok")], stderr=subprocess.PIPE, text=True)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}/scim/v2", headers={"Authorization": f"Bearer {SECRET}"}, timeout=60)
        deadline = time.time() + 60
        while True:
            try:
                client.get("/ServiceProviderConfig").raise_for_status()
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
                time.sleep(0.2)
        users = [ok(client.post("/Users", json={"schemas": [USER], "userName": f"pg-{i}", "externalId": f"pg-{i}"}), 201)["id"] for i in range(16)]
        group = ok(client.post("/Groups", json={"schemas": [GROUP], "displayName": "pg-team"}), 201)["id"]
        other = PermRAG.open(home, catalog_only=True)
        before = other.policy_version

        def add(u: str) -> int:
            return patch({"scim": client}, f"/Groups/{group}", {"op": "add", "path": "members", "value": [{"value": u, "type": "User"}]}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(add, users)) == [200] * 16
        other.refresh()
        assert sorted(str(m) for m in other.identity.members(group)) == sorted(f"user:{u}" for u in users)
        assert other.policy_version == before + 16
        assert all([str(g) for g in other.identity.groups_of(u)] == [group] for u in users)
        ok(patch({"scim": client}, "/Users/pg-3", {"op": "replace", "path": "active", "value": False}))
        other.refresh()
        assert other.identity.groups_of("pg-3") == [] and other.identity.deactivated() == ["pg-3"]
        other.close()
        client.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]


def test_serve_refuses_to_start_without_usable_credentials(tmp_path) -> None:
    from permrag.errors import ConfigError
    from permrag.serve import read_secret

    home = tmp_path / "home"
    PermRAG.open(home, catalog_only=True).close()
    res = subprocess.run([PERMRAG, "serve", "--home", str(home), "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "nothing could call this server" in res.stderr and "Traceback" not in res.stderr, res.stderr
    (tmp_path / "short").write_text("too-short\n")
    (tmp_path / "spaced").write_text("a" * 20 + " " + "b" * 20)
    for name, message in (("short", "at least 32 characters"), ("spaced", "one word"), ("missing", "cannot read the SCIM token file")):
        with pytest.raises(ConfigError, match=message):
            read_secret(tmp_path / name)
    (tmp_path / "good").write_text(SECRET + "\n")
    assert read_secret(tmp_path / "good") == SECRET
