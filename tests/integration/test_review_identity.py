"""Adversarial checks of identity input and delegation: each test is one class of
defect a hostile or careless identity provider, token or application could
exploit, held to an independent answer.

* a token carrying the ``scim`` scope never searches, on ``permrag mcp`` as on
  ``permrag serve``, whatever other scopes ride with it, and a JWT's scope claim
  in any shape limits it or refuses it, never lifts its limits;
* deleting a provisioned group leaves the same memberships in this process, in
  a process that catches up and in a fresh load (agents' included);
* one SCIM write cannot empty a deny-holding group by naming every member;
* ``active`` takes booleans (and Entra's strings) only: an odd value changes nothing;
* an agent chain given to the LangChain tools is kept whole (every agent must
  be allowed), never cut to its first agent.

The expected answers come from the documents' departments and the rules the
test wrote (every answer here is small enough to state by hand) and from the
library's own delegated ``can_read``, whose bitmaps test_agents holds to casbin.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import jwt
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from permrag import PermRAG
from permrag.cli import main
from permrag.errors import ArgumentError, IdentityFileError
from permrag.mcp import JWTVerifier, TableVerifier, Tokens
from permrag.mcp.auth import tool_scopes
from permrag.policy.directory import Directory
from permrag.serve.app import build_app

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SECRET = "r" * 40
JWT_KEY = "a-review-test-hmac-secret-of-32-bytes-or-more"
DOCS = [{"external_id": f"{dept}-{i}", "text": f"{dept} note {i}", "attrs": {"dept": dept}} for dept in ("kb", "fin") for i in range(2)]


def by_dept(*depts: str) -> set[str]:
    return {d["external_id"] for d in DOCS if d["attrs"]["dept"] in depts}


def readable(rag: PermRAG, user: str, agent: object = None) -> set[str]:
    return {d["external_id"] for d in DOCS if rag.can_read(user, d["external_id"], agent=agent)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("review") / "home"
    rag = PermRAG.open(home, catalog_only=True)
    rag.add_documents(DOCS)
    for dept in ("kb", "fin"):
        rag.policy.add_role(f"{dept}-reader")
        rag.policy.grant(f"{dept}-reader", f"dept:{dept}")
    rag.policy.add_role("no-fin")
    rag.policy.deny("no-fin", "dept:fin")
    rag.policy.add_role("no-kb")
    rag.policy.deny("no-kb", "dept:kb")
    yield {"rag": rag, "home": home}
    rag.close()


def scim(rag: PermRAG, **options) -> TestClient:
    """The ``permrag serve`` application on ``rag``, called over HTTP (in process)."""
    return TestClient(build_app(rag, scim_secret=SECRET, **options), headers={"Authorization": f"Bearer {SECRET}"})


def ok(res, status: int = 200) -> dict:
    assert res.status_code == status, (res.status_code, res.text)
    return res.json() if status != 204 else {}


# ---------------------------------------------------------------------- tokens
def test_a_scim_token_never_searches_on_any_mcp_server(store) -> None:
    rag = store["rag"]
    tokens = Tokens(rag.catalog.engine)
    before = len(tokens.list())
    for scopes in (["scim", "search"], ["fetch", "scim"], "scim can_read"):
        with pytest.raises(ArgumentError, match="scim scope stands alone"):
            tokens.add("prov", "default", scopes=scopes)
    with pytest.raises(ArgumentError, match="no agent"):
        tokens.add("prov", "default", scopes=["scim"], agent="bot")
    assert len(tokens.list()) == before  # nothing was made
    res = CliRunner().invoke(main, ["--home", str(store["home"]), "token", "add", "prov", "--scope", "scim", "--scope", "search"])
    assert res.exit_code != 0 and "stands alone" in res.output and "Traceback" not in res.output and len(tokens.list()) == before
    # the documented `permrag token add NAME --scope scim` needs no user and no existing tenant: SCIM populates it
    res = CliRunner().invoke(main, ["--home", str(store["home"]), "token", "add", "provisioner", "--scope", "scim", "--tenant", "fresh", "--json"])
    assert res.exit_code == 0, res.output
    made = json.loads(res.output)
    assert made["scopes"] == ["scim"] and made["tenant"] == "fresh"
    client = TestClient(build_app(rag, token_lookup=tokens.lookup), headers={"Authorization": f"Bearer {made['token']}"})
    uid = ok(client.post("/scim/v2/Users", json={"schemas": [USER], "userName": "first-of-fresh"}), 201)["id"]
    rag.refresh()
    assert rag.identity.labels("fresh") == {f"user:{uid}": "first-of-fresh"} and f"user:{uid}" not in rag.identity.labels()
    res = CliRunner().invoke(main, ["--home", str(store["home"]), "token", "add", "nobody-known", "--scope", "search"])
    assert res.exit_code != 0 and "unknown user" in res.output  # a search token still names a user the store knows
    scim_token, _ = tokens.add("prov", "default", scopes=["scim"])
    search_token, _ = tokens.add("prov", "default", scopes=["search"])
    verifier = TableVerifier(tokens, rag.aio)
    assert asyncio.run(verifier.verify_token(scim_token)) is None  # the plain `permrag mcp` verifier, not only serve's wrapper
    assert asyncio.run(verifier.verify_token(search_token)).scopes == ["search"]


def _jwt(**claims) -> str:
    return jwt.encode({"sub": "erin", "exp": int(time.time() + 600), **claims}, JWT_KEY, algorithm="HS256")


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({}, None),  # no scope: every search tool (the documented default)
        ({"scope": "openid search"}, {"search"}),
        ({"scope": ["fetch"]}, {"fetch"}),  # a list limits as the string does
        ({"scp": ["can_read", "profile"]}, {"can_read"}),  # Okta's scp list
        ({"scp": "explain"}, {"explain"}),
        ({"scope": "search", "scp": ["fetch"]}, {"search", "fetch"}),
        ({"scope": "scim"}, "refused"),
        ({"scope": "search scim"}, "refused"),
        ({"scp": ["scim"]}, "refused"),
        ({"scope": {"search": True}}, "refused"),  # an unreadable claim never lifts the limits
        ({"scope": ["fetch", 3]}, "refused"),
        ({"scp": 7}, "refused"),
    ],
)
def test_a_jwt_scope_claim_limits_or_refuses_never_lifts(claims: dict, expected: object) -> None:
    found = asyncio.run(JWTVerifier(JWT_KEY).verify_token(_jwt(**claims)))
    if expected == "refused":
        assert found is None
    else:
        assert found is not None and tool_scopes(found.scopes) == (None if expected is None else frozenset(expected))


# ---------------------------------------------------------------------- SCIM writes
def _world(home, db_url=None) -> PermRAG:
    rag = PermRAG.open(home, database_url=db_url, catalog_only=True)
    rag.add_documents(DOCS)
    for dept in ("kb", "fin"):
        rag.policy.add_role(f"{dept}-reader")
        rag.policy.grant(f"{dept}-reader", f"dept:{dept}")
    rag.policy.add_role("no-kb")
    rag.policy.deny("no-kb", "dept:kb")
    return rag


def test_deleting_a_group_leaves_the_same_memberships_in_every_process(home, db_url) -> None:
    rag = _world(home, db_url)
    other = PermRAG.open(home, database_url=db_url, catalog_only=True)  # another reader, loaded before the change: it catches up
    try:
        client = scim(rag, allow_mass_removal=True)
        u = ok(client.post("/scim/v2/Users", json={"schemas": [USER], "userName": "del-u", "externalId": "del-u"}), 201)["id"]
        g = ok(client.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "del-g", "members": [{"value": u}]}), 201)["id"]
        rag.policy.assign_agent("del-bot", "kb-reader")
        rag.policy.assign_user(u, "kb-reader")
        rag.identity.add_member(g, "agent:del-bot")
        rag.identity.assign_group(g, "no-kb")  # the group denies what its members' roles allow
        other.refresh()
        assert readable(rag, u, "del-bot") == readable(other, u, "del-bot") == set()
        ok(client.delete(f"/scim/v2/Groups/{g}"), 204)
        fresh = PermRAG.open(home, database_url=db_url, catalog_only=True)
        try:
            other.refresh()
            views = [r.policy.tenant("default").members.get(g, set()) for r in (rag, other, fresh)]
            assert views == [set(), set(), set()]
            assert [r.policy.tenant("default").member_of.get("agent:del-bot", set()) for r in (rag, other, fresh)] == [set()] * 3
            # the agent is out of the deny group everywhere: user and agent both read kb again, alike in every process
            assert readable(rag, u, "del-bot") == readable(other, u, "del-bot") == readable(fresh, u, "del-bot") == by_dept("kb")
            for r in (rag, fresh):
                with pytest.raises(Exception, match="no group with id"):
                    r.identity.provisioning().group(g)
        finally:
            fresh.close()
        assert client.get(f"/scim/v2/Groups/{g}").status_code == 404
        # and in another OS process, opened after the change
        code = (
            "import sys; from permrag import PermRAG\n"
            "with PermRAG.open(sys.argv[1], database_url=sys.argv[2] or None, catalog_only=True) as r:\n"
            "    print(sorted(d for d in ('kb-0', 'kb-1', 'fin-0', 'fin-1') if r.can_read(sys.argv[3], d, agent='del-bot')),"
            " sorted(r.policy.tenant('default').member_of.get('agent:del-bot', ())))"
        )
        res = subprocess.run([sys.executable, "-c", code, str(home), db_url or "", u], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.strip() == f"{sorted(by_dept('kb'))} []"
    finally:
        other.close()
        rag.close()


def test_one_write_cannot_empty_a_deny_group_by_naming_every_member(store) -> None:
    rag = store["rag"]
    client = scim(rag)
    users = [ok(client.post("/scim/v2/Users", json={"schemas": [USER], "userName": f"named-{i}"}), 201)["id"] for i in range(4)]
    readers = ok(client.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "named-readers", "members": [{"value": x} for x in users]}), 201)
    rag.identity.assign_group(readers["id"], "fin-reader")
    deny = ok(client.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "named-deny", "members": [{"value": x} for x in users]}), 201)
    rag.identity.assign_group(deny["id"], "no-fin")
    assert all(readable(rag, x) == set() for x in users)
    rag.refresh()
    version = rag.policy_version
    every = " or ".join(f'value eq "{x}"' for x in users)
    for op in (
        {"op": "remove", "path": "members", "value": [{"value": x} for x in users]},  # Entra's value list, every member
        {"op": "remove", "path": f"members[{every}]"},  # one filter naming every member
        {"op": "remove", "path": "members", "value": [{"value": x} for x in users[:3]]},  # three of four: more than half
    ):
        res = client.patch(f"/scim/v2/Groups/{deny['id']}", json={"schemas": [PATCH], "Operations": [op]})
        assert res.status_code == 409 and "holds a deny" in res.json()["detail"], res.text
    two_ops = [{"op": "remove", "path": f'members[value eq "{x}"]'} for x in users]
    assert client.patch(f"/scim/v2/Groups/{deny['id']}", json={"schemas": [PATCH], "Operations": two_ops}).status_code == 409
    rag.refresh()
    assert rag.policy_version == version and all(readable(rag, x) == set() for x in users)
    # one member by name (Okta's removal) is an ordinary change, and so are two of four (not more than half)
    ok(client.patch(f"/scim/v2/Groups/{deny['id']}", json={"schemas": [PATCH], "Operations": [{"op": "remove", "path": f'members[value eq "{users[0]}"]'}]}))
    ok(client.patch(f"/scim/v2/Groups/{deny['id']}", json={"schemas": [PATCH], "Operations": [{"op": "remove", "path": "members", "value": [{"value": users[1]}]}]}))
    assert [readable(rag, x) for x in users] == [by_dept("fin"), by_dept("fin"), set(), set()]
    # one named member that is a group carries its users: removing it is held to the guard too
    inner = ok(client.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "named-inner", "members": [{"value": x} for x in users[2:]]}), 201)["id"]
    outer = ok(client.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "named-outer", "members": [{"value": inner, "type": "Group"}]}), 201)["id"]
    rag.identity.assign_group(outer, "no-fin")
    ok(client.patch(f"/scim/v2/Groups/{deny['id']}", json={"schemas": [PATCH], "Operations": [{"op": "remove", "path": f'members[value eq "{users[2]}"]'}]}))
    assert readable(rag, users[2]) == set()  # still denied through the outer group
    res = client.patch(f"/scim/v2/Groups/{outer}", json={"schemas": [PATCH], "Operations": [{"op": "remove", "path": f'members[value eq "{inner}"]'}]})
    assert res.status_code == 409 and "holds a deny" in res.json()["detail"], res.text
    assert client.delete(f"/scim/v2/Groups/{inner}").status_code == 409  # nor by deleting the inner group
    assert readable(rag, users[2]) == set()
    # a server started to allow mass removal applies it
    ok(scim(rag, allow_mass_removal=True).patch(f"/scim/v2/Groups/{deny['id']}", json={"schemas": [PATCH], "Operations": [{"op": "remove", "path": f"members[{every}]"}]}))
    assert [readable(rag, x) for x in users] == [by_dept("fin")] * 2 + [set()] * 2  # users 2 and 3 are still in the outer deny group
    ok(scim(rag, allow_mass_removal=True).delete(f"/scim/v2/Groups/{outer}"), 204)
    assert all(readable(rag, x) == by_dept("fin") for x in users)


def test_active_takes_only_booleans_and_an_odd_value_changes_nothing(store) -> None:
    rag = store["rag"]
    client = scim(rag)
    uid = ok(client.post("/scim/v2/Users", json={"schemas": [USER], "userName": "off-user", "active": False}), 201)["id"]
    rag.policy.assign_user(uid, "kb-reader")
    assert readable(rag, uid) == set() and uid in rag.identity.deactivated()
    rag.refresh()
    version = rag.policy_version
    for odd in ("0", "no", None, 1, "yes", [], {"value": True}):
        res = client.patch(f"/scim/v2/Users/{uid}", json={"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": odd}]})
        assert res.status_code == 400 and res.json()["scimType"] == "invalidValue", (odd, res.text)
        if odd is not None:  # a null attribute in a body is unassigned (RFC 7643 2.5), as if left out
            assert client.post("/scim/v2/Users", json={"schemas": [USER], "userName": f"odd-{odd!s}", "active": odd}).status_code == 400
    rag.refresh()
    assert rag.policy_version == version and readable(rag, uid) == set()
    kept = ok(client.patch(f"/scim/v2/Users/{uid}", json={"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"displayName": "Still off"}}]}))
    assert kept["active"] is False and readable(rag, uid) == set()  # a patch of another attribute leaves the deactivation alone
    assert ok(client.patch(f"/scim/v2/Users/{uid}", json={"schemas": [PATCH], "Operations": [{"op": "Replace", "path": "active", "value": "True"}]}))["active"] is True
    assert readable(rag, uid) == by_dept("kb") and uid not in rag.identity.deactivated()


# ---------------------------------------------------------------------- agents in LangChain
def test_an_agent_chain_given_to_the_langchain_tools_is_kept_whole(store) -> None:
    from permrag.integrations.langchain import delegation, permission_tool

    rag = store["rag"]
    rag.policy.assign_user("chain-user", "kb-reader")
    rag.policy.assign_user("chain-user", "fin-reader")
    rag.policy.assign_agent("chain-bot", "kb-reader")
    rag.policy.assign_agent("chain-bot", "fin-reader")
    rag.policy.assign_agent("chain-helper", "kb-reader")  # the earlier actor may read kb only
    chain = ["chain-bot", "chain-helper"]
    assert readable(rag, "chain-user", chain) == by_dept("kb") and readable(rag, "chain-user", "chain-bot") == by_dept("kb", "fin")
    conf = {"configurable": {"user": "chain-user", "agent": chain}}
    assert delegation(conf) == ("chain-user", "default", ("chain-bot", "chain-helper"))
    tool = permission_tool(rag)
    for doc in DOCS:
        answer = tool.invoke({"document_id": doc["external_id"]}, config=conf)
        assert answer.startswith("yes") == rag.can_read("chain-user", doc["external_id"], agent=chain) == (doc["attrs"]["dept"] == "kb"), (doc, answer)


# ---------------------------------------------------------------------- directory ids
LDIF = (
    "dn: uid=ann,ou=people,dc=e\nobjectClass: person\nuid: ann\nentryUUID: {user}\n\n"
    "dn: cn=staff,ou=groups,dc=e\nobjectClass: groupOfNames\ncn: staff\nentryUUID: {group}\nmember: uid=ann,ou=people,dc=e\n"
)


@pytest.mark.parametrize(
    ("user", "group"),
    [("agent:x", "g-1"), ("ann-1", "user:bob"), ("ＲＯＬＥ：admin", "g-1"), ("Group：eng", "g-1"), ("ann-1", " agent : y")],
)
def test_a_directory_id_shaped_like_a_principal_applies_nothing(store, tmp_path, user: str, group: str) -> None:
    rag = store["rag"]
    rag.refresh()
    version, before = rag.policy_version, rag.policy.export_csv(tenant="dir")
    path = tmp_path / "export.ldif"
    path.write_text(LDIF.format(user=user, group=group))
    made = Directory(users={user}, groups={group: {f"user:{user}"}}, labels={f"user:{user}": "ann"})
    for source in (path, made):
        with pytest.raises(IdentityFileError, match="principal|leading or trailing"):
            rag.identity.sync(source, tenant="dir")
    rag.refresh()
    assert rag.policy_version == version and rag.policy.export_csv(tenant="dir") == before
    with pytest.raises(IdentityFileError, match="neither user"):
        rag.identity.sync(Directory(users={"ann-1"}, groups={"g-1": {"agent:ann-1"}}), tenant="dir")
    assert rag.policy_version == version


def test_what_a_directory_sync_stores_restores_from_the_policy_export(store, tmp_path) -> None:
    rag = store["rag"]
    path = tmp_path / "export.ldif"
    path.write_text(LDIF.format(user="5f0c-11ee", group="6a1d-22ff").replace("uid: ann", "uid: group:admins"))  # a label may look like anything
    assert rag.identity.sync(path, tenant="dir2").applied
    with pytest.raises(IdentityFileError, match="starts like a principal"):
        rag.identity.sync(Directory(users={"f:3c1e:ann"}), tenant="dir2")  # Keycloak's federated id: refused, not stored unrestorable
    rag.policy.add_role("kb-reader", tenant="dir2")
    rag.identity.assign_group("6a1d-22ff", "kb-reader", tenant="dir2")
    text = rag.policy.export_csv(tenant="dir2")
    assert "g, user:5f0c-11ee, group:6a1d-22ff, dir2" in text and "group:admins" in text
    other = PermRAG.open(tmp_path / "restored", catalog_only=True)
    try:
        other.policy.import_text(text)
        assert other.policy.export_csv(tenant="dir2").splitlines()[1:] == text.splitlines()[1:]
        assert other.identity.labels("dir2")["user:5f0c-11ee"] == "group:admins"
    finally:
        other.close()


# ---------------------------------------------------------------------- locked accounts
ACCOUNTS = {  # uid → (extra LDIF lines, locked?)
    "open": ("", False),
    "pp-locked": ("pwdAccountLockedTime: 000001010000Z\n", True),
    "ad-disabled": ("userAccountControl: 514\n", True),
    "ad-normal": ("userAccountControl: 512\n", False),
    "ad-garbled": ("userAccountControl: 0x202\n", True),  # unreadable: fail closed
    "ipa-locked": ("nsAccountLock: TRUE\n", True),
    "ipa-open": ("nsAccountLock: false\n", False),
    "ipa-odd": ("nsAccountLock: maybe\n", True),
}


def test_a_locked_or_disabled_account_is_deactivated_from_ldif_and_ldap_alike(store, tmp_path) -> None:
    from permrag.policy.ldap import LdapSource, build

    rag = store["rag"]
    text = "".join(f"dn: uid={u},ou=people,dc=e\nobjectClass: person\nuid: {u}\nentryUUID: id-{u}\n{extra}\n" for u, (extra, _) in ACCOUNTS.items())
    (tmp_path / "people.ldif").write_text(text)
    rag.policy.add_role("kb-reader", tenant="locks")
    rag.policy.grant("kb-reader", "dept:kb", tenant="locks")
    report = rag.identity.sync(tmp_path / "people.ldif", tenant="locks")
    want = {f"id-{u}" for u, (_, locked) in ACCOUNTS.items() if locked}
    assert set(rag.identity.deactivated("locks")) == want and set(report.deactivated) == want
    # the live LDAP read of the same entries (the attributes as the server sends them) decides the same
    entries = []
    for u, (extra, _) in ACCOUNTS.items():
        attrs = {"objectclass": [b"person"], "uid": [u.encode()], "entryuuid": [f"id-{u}".encode()]}
        for line in extra.splitlines():
            name, _, value = line.partition(": ")
            attrs[name.lower()] = [value.encode()]
        entries.append((f"uid={u},ou=people,dc=e", attrs))
    live, _ = build(LdapSource("ldap://127.0.0.1:1", "dc=e"), entries, [])
    assert live.inactive == want
    for u in ACCOUNTS:
        rag.policy.assign_user(f"id-{u}", "kb-reader", tenant="locks")
    assert {u for u in ACCOUNTS if rag.policy.roles_of(f"id-{u}", "locks")} == {u for u, (_, locked) in ACCOUNTS.items() if not locked}


# ---------------------------------------------------------------------- error bodies
def test_a_failing_store_is_reported_without_its_internals(tmp_path, caplog) -> None:
    home = tmp_path / "home"
    rag = PermRAG.open(home, catalog_only=True)
    try:
        client = scim(rag)
        assert ok(client.get("/scim/v2/Users"))["totalResults"] == 0
        for name in ("permrag.db", "permrag.db-shm", "permrag.db-wal"):  # the database goes away under the server
            if (home / name).exists():
                (home / name).rename(home / f"{name}.away")
        (home / "permrag.db").mkdir()
        rag.catalog.engine.dispose()
        with caplog.at_level("WARNING", logger="permrag.serve"):
            ready = client.get("/readyz")  # unauthenticated
            write = client.post("/scim/v2/Users", json={"schemas": [USER], "userName": "during-outage"})
        assert ready.status_code == 503 and ready.json() == {"status": "unavailable", "detail": "BackendError; the reason is in the server's log"}
        body = write.json()
        assert write.status_code == 503 and body["detail"].startswith("the store is unavailable (BackendError); nothing was changed")
        for text in (ready.text, write.text):
            assert "sqlite" not in text.lower() and "open database" not in text and "failed" not in text
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert "unable to open database file" in logged  # the operator still sees why
    finally:
        if (home / "permrag.db").is_dir():
            (home / "permrag.db").rmdir()
        for name in ("permrag.db", "permrag.db-shm", "permrag.db-wal"):
            if (home / f"{name}.away").exists():
                (home / f"{name}.away").rename(home / name)
        rag.close()


def _ldif(entries: list[tuple[str, dict]]) -> str:
    return "".join(f"dn: {dn}\n" + "".join(f"{k}: {v.decode()}\n" for k, vs in attrs.items() for v in vs) + "\n" for dn, attrs in entries)


def test_a_member_uid_several_users_share_refuses_the_read(store, tmp_path) -> None:
    from permrag.policy.ldap import LdapSource, build

    source = LdapSource("ldap://127.0.0.1:1", "dc=e")

    def person(ou: str, uid: str) -> tuple[str, dict]:
        return f"uid={uid},ou={ou},dc=e", {"objectclass": [b"posixAccount"], "uid": [uid.encode()], "entryuuid": [f"{ou}-{uid}".encode()]}

    people = [person("staff", "bob"), person("contractors", "BOB"), person("staff", "ann")]
    deny = ("cn=no-payroll,dc=e", {"objectclass": [b"posixGroup"], "cn": [b"no-payroll"], "entryuuid": [b"g-deny"], "memberuid": [b"ann", b"bob"]})
    with pytest.raises(IdentityFileError, match="memberUid 'bob' names several users"):
        build(source, people, [deny])  # leaving both out would lift the group's deny; adding both would widen an allow
    d, skipped = build(source, people[::2], [deny])
    assert d.groups == {"g-deny": {"user:staff-ann", "user:staff-bob"}} and skipped == []
    d, skipped = build(source, people[:1], [deny])  # a uid no user entry has: left out and reported, as before
    assert d.groups == {"g-deny": {"user:staff-bob"}} and skipped == ["cn=no-payroll,dc=e: memberUid ann"]
    # an LDIF export of the same entries gives the same members (it used to drop every memberUid) and the same refusal
    (tmp_path / "ok.ldif").write_text(_ldif([*people[::2], deny]))
    live, _ = build(source, people[::2], [deny])
    assert store["rag"].identity.read([tmp_path / "ok.ldif"]).groups == live.groups
    (tmp_path / "twice.ldif").write_text(_ldif([*people, deny]))
    rag = store["rag"]
    rag.refresh()
    version = rag.policy_version
    with pytest.raises(IdentityFileError, match="memberUid 'bob' names several users"):
        rag.identity.sync(tmp_path / "twice.ldif", tenant="uids")
    rag.refresh()
    assert rag.policy_version == version
