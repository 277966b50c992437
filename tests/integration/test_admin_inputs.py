"""What an administrator types can never widen access by mistake: malformed
principals are errors everywhere; unknown users, groups and roles in admin
calls are errors naming the closest known one (unless allow_unknown);
ACLs from source documents may name principals not synced yet, and
``policy check`` lists every one that names nobody; folder ACLs are added to
and removed from, replaced only on request; an expiry in the past is refused
and listings show each expiring entry with its end, never an expired one as
held. Library on SQLite and PostgreSQL, and every admin command through the CLI."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from permrag import PermRAG
from permrag.cli import main
from permrag.errors import ArgumentError, CatalogError, IdentityFileError, PolicyCSVError, PolicyError, UnknownPrincipalError, UnknownRoleError, UnknownSubjectError
from permrag.storage import db

MALFORMED = ["bogus:x", "usr:dave", "group:", "", "user:", "Group:eng", "gr\u03bfup:eng", "group\uff1aeng", "group :eng", "1group:eng", "role:user:x", "role:Group:eng", "user:group:eng"]
FUTURE = "2999-01-01T00:00:00Z"


class Clock:
    def __init__(self, t: float = 2_000_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def org(home, db_url, clock):
    """A tenant with users, groups (contractors holds a deny role), roles and a finance folder."""
    rag = PermRAG.open(home, database_url=db_url, catalog_only=True, clock=clock)
    p = rag.policy
    for role in ("analyst", "staff", "no-secrets"):
        p.add_role(role)
    p.grant("staff", "*")
    p.deny("no-secrets", "level:secret")
    p.assign_user("alice", "staff")
    p.assign_user("dave", "staff")
    p.assign_user("bob", "analyst")
    rag.identity.add_member("contractors", "user:dave", allow_unknown=True)
    rag.identity.add_member("eng", "user:alice", allow_unknown=True)
    rag.identity.set_folder_acl("/finance", allow=["group:eng"], deny=["group:contractors"])
    rag.add_documents([{"external_id": "ledger", "acl": {"folder": "/finance/2026"}}, {"external_id": "plan", "attrs": {"level": "secret"}}])
    yield rag
    rag.close()


def acl_of(rag, folder: str) -> tuple[dict, dict, bool]:
    a = rag.identity.folder_acl(folder)
    return {e.principal: e.expires_at for e in a.allow}, {e.principal: e.expires_at for e in a.deny}, a.inherit


# ---------------------------------------------------------------------- 6. principals
@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_principal_is_an_error_everywhere(org, bad) -> None:
    before = (org.policy_version, org.catalog_version, acl_of(org, "/finance"))
    with pytest.raises(PolicyError):
        org.identity.set_folder_acl("/finance", deny=[bad], allow_unknown=True)
    with pytest.raises(PolicyError):
        org.identity.set_folder_acl("/finance", remove=[bad])
    with pytest.raises(CatalogError):
        org.add_documents([{"external_id": "x", "acl": {"allow": [bad]}}])
    with pytest.raises(CatalogError):
        org.update_metadata("ledger", acl={"deny": [bad]})
    assert (org.policy_version, org.catalog_version, acl_of(org, "/finance")) == before


PHANTOMS = ["group:contractors", "user:bob", "usr:dave", "Group:eng", "group\uff1aeng", "AGENT:x", "gr\u03bfup:eng"]


def test_a_user_id_is_never_a_principal(org) -> None:
    p, before = org.policy, (org.policy_version, org.policy.users())
    for bad in PHANTOMS:
        for call in (p.assign_user, p.assign, p.unassign_user):
            with pytest.raises(PolicyError, match="not a user id") as err:
                call(bad, "no-secrets")
            assert "assign_group" in str(err.value) and "permrag group assign" in err.value.for_cli()
    assert (org.policy_version, p.users()) == before
    with db.transaction(p.engine, "a store made before the check") as conn:  # a phantom stored by an older version
        db.bump(conn, "policy_version")
        conn.execute(db.casbin_rule.insert().values(ptype="g", v0="user:group:contractors", v1="no-secrets", v2="default"))
    found = [f for f in org.lint() if f["kind"] == "principal-like-user"]
    assert [f["principal"] for f in found] == ["user:group:contractors"] and "named like a principal" in found[0]["message"]
    p.unassign_user("group:contractors", "no-secrets")  # the cleanup of a stored phantom is allowed
    assert not [f for f in org.lint() if f["kind"] == "principal-like-user"]


def test_identity_csv_refuses_principal_like_ids(org, tmp_path) -> None:
    before = (org.policy_version, org.policy.export_csv())
    for line in ("eng,Group:ops", "eng,usr:dave", "eng,role:admin", "group:eng,bob", "eng,user:group:x", "eng,grp\uff1ax"):
        path = tmp_path / "dir.csv"
        path.write_text(f"group,member\neng,user:alice\n{line}\n", encoding="utf-8")
        with pytest.raises(IdentityFileError, match="line 3"):
            org.identity.sync(path)
    assert (org.policy_version, org.policy.export_csv()) == before


def test_policy_import_checks_what_an_administrator_types(org, clock) -> None:
    p = org.policy
    before = (org.policy_version, p.export_csv())
    head = "# role, staff, default\n"
    bad = {
        "p, staff, default, level:public, read, allow, 2020-01-01T00:00:00Z": "in the past",
        "g, user:bob, staff, default, 2020-01-01T00:00:00Z": "in the past",
        "acl, /x, default, user:bob, allow, 2020-01-01T00:00:00Z": "in the past",
        "g, usr:dave, staff, default": "no kind",
        "g, user:group:eng, staff, default": "starts like a principal",
        "g, user:carol, Group:eng, default": "misspelt kind",
        "g, user:carol, role:user:x, default": "must not start with",
        "g, user:carol, group:contractor, default": "did you mean group:contractors?",
        "acl, /finance, default, group:contractor, deny": "did you mean group:contractors?",
        "acl, /finance, default, role:no-secret, deny": "did you mean role:no-secrets?",
    }
    for line, why in bad.items():
        with pytest.raises(PolicyCSVError, match="line 2") as err:
            p.import_text(head + line + "\n")
        assert why in str(err.value), (line, str(err.value))
    assert (org.policy_version, p.export_csv()) == before  # nothing applied
    assert p.import_text(head + "g, user:carol, group:contractor, default\n", allow_unknown=True) == 1
    assert p.import_text(head + "g, user:erin, group:contractor, default\n") == 1  # now the store knows it
    assert p.import_text("g, user:bob, staff, default, 2020-01-01T00:00:00Z\n", allow_expired=True) == 1
    assert p.import_text("g, user:fay, group:new, default\ng, group:new, staff, default\n") == 2  # declared by the file


def test_policy_export_leaves_out_what_has_expired_and_imports_back(org, clock, tmp_path) -> None:
    p = org.policy
    p.assign_user("carol", "analyst", expires_at=clock.t + 60)
    org.identity.add_member("eng", "user:carol", expires_at=clock.t + 60)
    p.grant("analyst", "level:public", expires_at=clock.t + 60)
    assert "user:carol" in p.export_csv()
    clock.t += 120
    text = p.export_csv()
    assert "user:carol" not in text and "level:public" not in text and "ident, group:contractors, default" in text
    fresh = PermRAG.open(tmp_path / "fresh", catalog_only=True, clock=clock)  # SQLite, empty
    try:
        assert fresh.policy.import_text(text) > 0
        assert fresh.policy.export_csv().splitlines()[1:] == text.splitlines()[1:]
    finally:
        fresh.close()


def test_unknown_principals_in_admin_calls_name_the_closest_one(org) -> None:
    before = (org.policy_version, acl_of(org, "/finance"))
    cases = [
        (lambda **kw: org.identity.set_folder_acl("/finance", deny=["group:contractor"], **kw), "group:contractors"),
        (lambda **kw: org.identity.set_folder_acl("/finance", allow=["user:alcie"], **kw), "user:alice"),
        (lambda **kw: org.identity.set_folder_acl("/finance", allow=["analyts"], **kw), "role:analyst"),
        (lambda **kw: org.identity.add_member("contractor", "user:bob", **kw), "group:contractors"),
        (lambda **kw: org.identity.add_member("contractors", "user:bbo", **kw), "user:bob"),
        (lambda **kw: org.identity.add_member("contractors", "group:engg", **kw), "group:eng"),
        (lambda **kw: org.identity.assign_group("contractor", "no-secrets", **kw), "group:contractors"),
    ]
    for call, near in cases:
        with pytest.raises(UnknownPrincipalError, match=f"did you mean {near}"):
            call()
        assert (org.policy_version, acl_of(org, "/finance")) == before  # nothing applied
    with pytest.raises(UnknownRoleError, match="did you mean 'analyst'"):
        org.policy.grant("analsyt", "*")
    with pytest.raises(UnknownRoleError, match="did you mean 'no-secrets'"):
        org.policy.assign_user("dave", "no-secret")
    with pytest.raises(UnknownRoleError, match="did you mean 'no-secrets'"):
        org.identity.assign_group("contractors", "no-secret")
    assert org.policy_version == before[0]
    # allow_unknown names it anyway: a group the provider has not synced yet
    assert org.identity.set_folder_acl("/finance", deny=["group:interns"], allow_unknown=True)
    assert "group:interns" in acl_of(org, "/finance")[1]
    assert org.identity.add_member("interns", "user:zoe", allow_unknown=True)
    assert org.identity.assign_group("interns", "no-secrets")  # it exists now


def test_the_typo_that_failed_open_is_refused(org) -> None:
    """The issue's case: a deny naming a misspelt group would have let dave (a contractor) read /finance."""
    org.identity.set_folder_acl("/finance", remove=["group:contractors"])
    assert org.can_read("dave", "ledger")  # no deny now: staff reads everything
    with pytest.raises(UnknownPrincipalError):
        org.identity.set_folder_acl("/finance", deny=["group:contractor"])
    org.identity.set_folder_acl("/finance", deny=["group:contractors"])
    assert not org.can_read("dave", "ledger") and org.can_read("alice", "ledger")


def test_document_acls_may_name_unknown_principals_and_policy_check_lists_them(org) -> None:
    org.add_documents([{"external_id": "memo", "acl": {"allow": ["group:not-synced", "user:alice"], "deny": ["user:ghost", "role:gone"]}}])
    org.identity.set_folder_acl("/hr", allow=["group:hr-team"], allow_unknown=True)
    found = {f["principal"]: f for f in org.lint() if f["kind"] == "unknown-principal"}
    assert set(found) == {"group:not-synced", "user:ghost", "role:gone", "group:hr-team"}
    assert "folder /hr" in found["group:hr-team"]["message"] and "names no group" in found["group:hr-team"]["message"]
    org.identity.add_member("not-synced", "user:bob", allow_unknown=True)
    assert "group:not-synced" not in {f.get("principal") for f in org.lint()}


def test_folder_acl_adds_removes_and_replaces_only_on_request(org) -> None:
    org.identity.set_folder_acl("/finance", allow=["user:bob"])  # added; eng and the contractors' deny stay
    assert acl_of(org, "/finance") == ({"group:eng": None, "user:bob": None}, {"group:contractors": None}, True)
    org.identity.set_folder_acl("/finance", remove=["group:eng"], inherit=False)
    assert acl_of(org, "/finance") == ({"user:bob": None}, {"group:contractors": None}, False)
    with pytest.raises(UnknownSubjectError):
        org.identity.set_folder_acl("/finance", remove=["group:eng"])  # no such entry
    with pytest.raises(ArgumentError):
        org.identity.set_folder_acl("/finance")  # nothing asked
    with pytest.raises(ArgumentError):
        org.identity.set_folder_acl("/finance", allow="user:bob")  # a lone string is not a list
    org.identity.set_folder_acl("/finance", allow=["analyst"], replace=True)
    assert acl_of(org, "/finance") == ({"role:analyst": None}, {}, True)
    # who may read follows: bob (analyst) reads the ledger below /finance; dave (staff) too, no deny left
    assert org.can_read("bob", "ledger") and org.can_read("dave", "ledger")


# ---------------------------------------------------------------------- 7. expiry
def test_an_expiry_in_the_past_is_refused_and_changes_nothing(org, clock) -> None:
    past = clock.t - 1
    before = (org.policy_version, acl_of(org, "/finance"))
    calls = [
        lambda: org.policy.grant("analyst", "level:public", expires_at=past),
        lambda: org.policy.deny("analyst", "level:secret", expires_at=past),
        lambda: org.policy.assign_user("bob", "staff", expires_at=past),
        lambda: org.identity.add_member("eng", "user:bob", expires_at=past),
        lambda: org.identity.assign_group("eng", "analyst", expires_at=past),
        lambda: org.identity.set_folder_acl("/finance", allow=[{"principal": "user:bob", "expires_at": past}]),
        lambda: org.policy.grant("analyst", "*", expires_at=clock.t),  # now is already past
    ]
    for call in calls:
        with pytest.raises(PolicyError, match="in the past"):
            call()
    assert (org.policy_version, acl_of(org, "/finance")) == before


def test_listings_show_each_end_and_never_an_expired_entry(org, clock) -> None:
    end = clock.t + 100
    org.policy.assign_user("bob", "staff", expires_at=end)
    org.identity.add_member("eng", "user:bob", expires_at=end)
    org.identity.assign_group("eng", "analyst", expires_at=end)
    assert [(m, m.expires_at) for m in org.policy.members("staff")] == [("alice", None), ("bob", end), ("dave", None)]
    assert [(r, r.expires_at) for r in org.policy.roles_of("bob")] == [("analyst", None), ("staff", end)]
    assert [(m, m.expires_at) for m in org.identity.members("eng")] == [("user:alice", None), ("user:bob", end)]
    assert [(g, g.expires_at) for g in org.identity.groups_of("bob")] == [("eng", end)]
    assert {r: h.expires_at for r, h in org.identity.group_roles("eng").items()} == {"analyst": end}
    clock.t = end  # expired: no listing shows it as held
    assert org.policy.members("staff") == ["alice", "dave"]
    assert org.policy.roles_of("bob") == ["analyst"]
    assert org.identity.members("eng") == ["user:alice"]
    assert org.identity.groups_of("bob") == [] and org.identity.group_roles("eng") == {}
    assert "bob" not in org.who_can_see("plan")["users"]  # staff held bob's read of the secret plan; it ended


def test_who_can_see_shows_when_each_reading_ends(org, clock) -> None:
    """Each end is checked against the compiled answer at that moment (a reference: the bitmaps then)."""
    t1, t2 = clock.t + 100, clock.t + 200
    org.policy.assign_user("bob", "staff", expires_at=t1)  # bob reads the ledger through staff until t1
    org.identity.add_member("eng", "user:carl", expires_at=t2, allow_unknown=True)  # carl through the folder's allow of eng until t2
    org.identity.add_member("eng", "user:dora", allow_unknown=True)
    seen = org.who_can_see("ledger")
    ends = {kind: {str(h): h.expires_at for h in names} for kind, names in seen.items()}
    assert ends["users"] == {"alice": None, "bob": t1, "carl": t2, "dora": None}  # dave: a contractor, denied
    assert ends["groups"]["eng"] is None and ends["roles"]["staff"] is None
    for moment in (t1 - 1, t1, t2 - 1, t2):
        clock.t = moment
        users = {str(u) for u in org.who_can_see("ledger")["users"]}
        assert users == {u for u, end in ends["users"].items() if end is None or end > moment}
        assert users == {u for u in ("alice", "bob", "carl", "dora", "dave") if org.access.readable(u, "ledger", "default", quiet=True)}


# ---------------------------------------------------------------------- the CLI
@pytest.fixture
def cli(tmp_path):
    home = tmp_path / "home"
    runner = CliRunner()

    def run(*args, code=0, findings=False):
        res = runner.invoke(main, ["--home", str(home), *args])
        assert res.exit_code == code, res.output
        if code == 1 and not findings:  # an error: one line, no traceback
            assert res.output.startswith("error: ") and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
        return res.output

    run("init")
    for args in (("role", "add", "staff"), ("role", "add", "analyst"), ("grant", "staff", "*"), ("user", "assign", "dave", "staff"), ("user", "assign", "alice", "staff")):
        run(*args)
    run("group", "add-member", "contractors", "user:dave", "--allow-unknown")
    run("group", "add-member", "eng", "user:alice", "--allow-unknown")
    return run


def test_cli_folder_acl_validates_adds_removes_and_replaces(cli) -> None:
    run = cli
    out = run("folder", "acl", "/finance", "--allow", "group:eng", "--deny", "group:contractors")
    assert "allow group:eng; deny group:contractors; inherits" in out
    for bad in ("bogus:thing", "usr:dave", "group:"):
        err = run("folder", "acl", "/finance", "--allow", bad, code=1)
        assert "unknown kind" in err or "names no group" in err
    err = run("folder", "acl", "/finance", "--deny", "group:contractor", code=1)
    assert "did you mean group:contractors?" in err and "--allow-unknown" in err
    out = run("folder", "acl", "/finance", "--allow", "user:alice")  # adds: nothing else is dropped
    assert "allow group:eng, user:alice; deny group:contractors" in out
    out = run("folder", "acl", "/finance", "--remove", "group:eng")
    assert "allow user:alice; deny group:contractors" in out
    out = run("folder", "acl", "/finance", "--allow", "staff", "--replace", "--no-inherit")
    assert "allow role:staff; deny -; does not inherit" in out
    data = json.loads(run("folder", "acl", "/finance", "--show", "--json"))
    assert data == {"folder": "/finance", "allow": ["role:staff"], "deny": [], "inherit": False}
    run("folder", "acl", "/finance", code=2)  # nothing asked: a usage error
    run("folder", "acl", "/x", "--deny", "group:interns", "--allow-unknown")
    out = run("folder", "acl", "/x", "--allow", "user:alice", "--expires", FUTURE)
    assert "allow user:alice until 2999-01-01T00:00:00Z" in out
    assert "in the past" in run("folder", "acl", "/x", "--allow", "user:dave", "--expires", "2020-01-01T00:00:00Z", code=1)


def test_cli_policy_check_lists_unknown_principals(cli, tmp_path) -> None:
    run = cli
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"external_id": "memo", "text": "memo", "acl": {"deny": ["group:not-synced"]}}) + "\n")
    run("ingest", str(docs), "--encoder", "hash")
    out = run("policy", "check", code=1, findings=True)
    assert "unknown-principal: group:not-synced names no group" in out
    found = [f for f in json.loads(run("policy", "check", "--json", code=1, findings=True)) if f["kind"] == "unknown-principal"]
    assert [f["principal"] for f in found] == ["group:not-synced"]


def test_cli_group_and_rule_commands_validate_and_echo_expiry(cli) -> None:
    run = cli
    assert "did you mean group:contractors?" in run("group", "add-member", "contractor", "user:alice", code=1)
    assert "did you mean user:dave?" in run("group", "add-member", "contractors", "user:dvae", code=1)
    assert "did you mean group:eng?" in run("group", "assign", "engg", "analyst", code=1)
    assert "did you mean 'analyst'" in run("grant", "analsyt", "*", code=1)
    assert "did you mean 'staff'" in run("user", "assign", "bob", "staf", code=1)
    for args in (("grant", "analyst", "*"), ("deny", "analyst", "*"), ("user", "assign", "bob", "analyst"), ("group", "add-member", "eng", "user:dave"), ("group", "assign", "eng", "analyst")):
        assert "in the past" in run(*args, "--expires", "2020-01-01T00:00:00Z", code=1)
    assert "until 2999-01-01T00:00:00Z" in run("grant", "analyst", "level:public", "--expires", FUTURE)
    assert "until 2999-01-01T00:00:00Z" in run("user", "assign", "bob", "analyst", "--expires", FUTURE)
    assert "until 2999-01-01T00:00:00Z" in run("group", "add-member", "eng", "user:dave", "--expires", FUTURE)
    assert "until 2999-01-01T00:00:00Z" in run("group", "assign", "eng", "analyst", "--expires", FUTURE)


def test_cli_listings_show_ends_and_hide_expired(cli, tmp_path) -> None:
    run = cli
    ends = int(time.time()) + 3
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ends))
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"external_id": "memo", "text": "memo", "acl": {"allow": ["role:analyst", "user:alice"]}}) + "\n")
    run("ingest", str(docs), "--encoder", "hash")
    run("user", "assign", "bob", "analyst", "--expires", FUTURE)
    run("user", "assign", "carol", "analyst", "--expires", soon)
    run("group", "add-member", "eng", "user:bob", "--expires", FUTURE)
    run("group", "assign", "eng", "analyst", "--expires", FUTURE)
    roles = {d["role"]: d for d in json.loads(run("role", "list", "--json"))}
    assert {"name": "bob", "expires_at": "2999-01-01T00:00:00Z"} in roles["analyst"]["members"]
    assert "bob (until 2999-01-01T00:00:00Z)" in run("role", "list")
    groups = {d["group"]: d for d in json.loads(run("group", "list", "--json"))}
    assert groups["eng"]["members"] == ["user:alice", {"name": "user:bob", "expires_at": "2999-01-01T00:00:00Z"}]
    assert groups["eng"]["roles"] == [{"name": "analyst", "expires_at": "2999-01-01T00:00:00Z"}]
    shown = json.loads(run("user", "show", "bob", "--json"))
    assert shown["roles"] == [{"name": "analyst", "expires_at": "2999-01-01T00:00:00Z"}]
    assert shown["groups"] == [{"name": "eng", "expires_at": "2999-01-01T00:00:00Z"}]
    assert "groups eng (until 2999-01-01T00:00:00Z)" in run("user", "show", "bob")
    users = {d["user"]: d["roles"] for d in json.loads(run("user", "list", "--json"))}
    assert users["bob"] == [{"name": "analyst", "expires_at": "2999-01-01T00:00:00Z"}] and users["alice"] == ["staff"]
    assert "bob: analyst (until 2999-01-01T00:00:00Z)" in run("user", "list")
    seen = json.loads(run("who-can-see", "memo", "--json"))
    assert {"name": "bob", "expires_at": "2999-01-01T00:00:00Z"} in seen["users"] and "alice" in seen["users"]
    assert "bob (until 2999-01-01T00:00:00Z)" in run("who-can-see", "memo")
    assert {"name": "carol", "expires_at": soon} in json.loads(run("role", "list", "--json"))[0]["members"]
    time.sleep(max(0.0, ends - time.time() + 0.2))
    roles = {d["role"]: d for d in json.loads(run("role", "list", "--json"))}
    assert "carol" not in json.dumps(roles["analyst"]["members"])  # expired: not shown as held
    assert "carol" not in run("role", "list")


def test_cli_refuses_principal_user_ids_and_checks_imports(cli, tmp_path) -> None:
    run = cli
    err = run("user", "assign", "group:contractors", "analyst", code=1)
    assert "not a user id" in err and "permrag group assign" in err
    path = tmp_path / "p.csv"
    path.write_text("# role, staff, default\ng, user:carol, group:contractor, default\n")
    err = run("policy", "import", str(path), code=1)
    assert "line 2" in err and "did you mean group:contractors?" in err and "--allow-unknown" in err
    assert "imported 1 lines" in run("policy", "import", str(path), "--allow-unknown")
    path.write_text("g, user:bob, staff, default, 2020-01-01T00:00:00Z\n")
    assert "in the past" in run("policy", "import", str(path), code=1)
    assert "imported 1 lines" in run("policy", "import", str(path), "--allow-expired")
