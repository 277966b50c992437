"""LDAP directory sync (issue 37, point 3) against a real OpenLDAP ``slapd``.

Every test gets a server of its own (tests/helpers/ldap_server.py: generated
configuration, the seed loaded with slapadd, a free port; about 0.1 s), so
the tests that rename, lock, delete or kill do not meet. Results are checked
against references the code under test does not make: ids from OpenLDAP's own
``ldapsearch``, memberships from the seed below, readable rows by brute force
over the store's rows and by casbin's ``enforce``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from permrag import PermRAG
from permrag.errors import BackendError, ConfigError, IdentityFileError, MassRemovalError
from permrag.policy.ldap import LdapSource, dn_key
from tests.helpers import ldap_server as srv
from tests.integration.test_identity import run_cli

S = srv.SUFFIX
PEOPLE, GROUPS = f"ou=people,{S}", f"ou=groups,{S}"
GUID = bytes.fromhex("00112233445566778899aabbccddeeff")
GUID_TEXT = "33221100-5544-7766-8899-aabbccddeeff"  # how Active Directory shows those bytes (first three fields little-endian)

USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] + [f"u{i:02}" for i in range(8)]
LOCKED = {"frank", "grace"}  # pwdAccountLockedTime; userAccountControl 514 (ACCOUNTDISABLE)
# group → (object class, members by uid or group cn); "auditors" lists nobody: erin names it in memberOf
GROUPS_SEED = {
    "eng": ("groupOfNames", ["alice", "dave", "frank", "group:platform"]),
    "platform": ("groupOfNames", ["bob", "u00", "u01", "u02", "u03"]),
    "finance": ("groupOfUniqueNames", ["carol", "heidi", "u04"]),
    "contractors": ("groupOfNames", ["dave", "u05"]),
    "auditors": ("group", []),
    "staff": ("posixGroup", ["u06", "u07", "grace"]),
}
MEMBER_OF = {"erin": ["auditors"], "heidi": ["auditors"]}
ROLES = {"eng-reader": ("dept:eng", "eng"), "fin-reader": ("dept:fin", "finance"), "audit-reader": ("dept:audit", "auditors"), "staff": ("level:public", "staff")}
DOCS = [
    {"external_id": "plan", "attrs": {"dept": "eng"}},
    {"external_id": "secret-plan", "attrs": {"dept": "eng", "level": "secret"}},
    {"external_id": "ledger", "attrs": {"dept": "fin"}},
    {"external_id": "audit-log", "attrs": {"dept": "audit"}},
    {"external_id": "handbook", "attrs": {"level": "public"}},
]


def user_dn(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS}"


def seed() -> str:
    import base64

    out = [f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n", f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n"]
    for u in USERS:
        lines = [f"dn: {user_dn(u)}", "objectClass: inetOrgPerson", f"uid: {u}", f"cn: {u.title()} Example", "sn: Example"]
        if u in ("grace", "heidi") or u in MEMBER_OF:
            lines[1:1] = ["objectClass: adAccount"]  # AD's attributes: sAMAccountName, userAccountControl, objectGUID, memberOf
        if u in ("grace", "heidi"):  # shaped like Active Directory accounts
            lines += [f"sAMAccountName: {u}.ad", f"userAccountControl: {514 if u == 'grace' else 512}"]
            lines += [f"objectGUID:: {base64.b64encode(GUID).decode()}"] if u == "heidi" else []
        if u == "frank":
            lines.append("pwdAccountLockedTime: 000001010000Z")
        lines += [f"memberOf: {group_dn(g)}" for g in MEMBER_OF.get(u, [])]
        out.append("\n".join(lines) + "\n")
    for i, (cn, (cls, members)) in enumerate(GROUPS_SEED.items()):
        lines = [f"dn: {group_dn(cn)}", f"objectClass: {cls}", f"cn: {cn}"]
        for m in members:
            dn = group_dn(m[6:]) if m.startswith("group:") else user_dn(m)
            lines.append({"groupOfNames": f"member: {dn}", "group": f"member: {dn}", "groupOfUniqueNames": f"uniqueMember: {dn}#'0101'B"}.get(cls, f"memberUid: {m}"))
        if cls == "posixGroup":
            lines.append(f"gidNumber: {5000 + i}")
        if cn == "contractors":
            lines.append(f"member: uid=ghost,ou=elsewhere,{S}")  # names no entry: left out, reported
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def need_slapd() -> None:
    """Skip without slapd, unless PERMRAG_REQUIRE_LDAP=1 (CI), where that fails."""
    if srv.find_slapd() is None or shutil.which("ldapmodify") is None:
        reason = "slapd or ldap-utils is not installed (Debian packages slapd and ldap-utils; make test installs them)"
        if os.environ.get("PERMRAG_REQUIRE_LDAP") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def slapd(tmp_path):
    need_slapd()
    server = srv.Slapd(tmp_path / "slapd", seed())
    server.start()
    yield server
    server.stop()


def reader(server: srv.Slapd, **kw) -> LdapSource:
    return LdapSource(server.url, S, bind_dn=srv.READER_DN, password=srv.READER_PW, **kw)


def ids(server: srv.Slapd) -> dict[str, str]:
    """uid / group cn → entryUUID, as OpenLDAP's ldapsearch reports them."""
    out = {}
    for e in server.search(S, "(|(objectClass=inetOrgPerson)(cn=*))", "entryUUID", "uid", "cn"):
        if "entryuuid" in e and ("uid" in e or e["dn"][0].endswith(GROUPS)):
            out[(e.get("uid") or e["cn"])[0]] = e["entryuuid"][0]
    return out


def expected_groups(members: dict[str, list[str]]) -> dict[str, set[str]]:
    """uid → every group it is in, through nesting (a plain walk over the seed)."""
    up: dict[str, set[str]] = {}
    for g, ms in members.items():
        for m in ms:
            up.setdefault(m, set()).add(g)
    out = {}
    for u in USERS:
        seen, todo = set(), list(up.get(u, ()))
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                todo += up.get("group:" + g, ())
        out[u] = seen
    return out


def seed_members() -> dict[str, list[str]]:
    members = {g: list(ms) for g, (_, ms) in GROUPS_SEED.items()}
    for u, gs in MEMBER_OF.items():
        for g in gs:
            members[g].append(u)
    return members


def brute_force(groups: dict[str, set[str]], locked: set[str]) -> dict[str, set[str]]:
    """The rows each user may read: a role's allow through a group, minus the contractors' secret deny."""
    out = {}
    for u in USERS:
        if u in locked:
            out[u] = set()
            continue
        allowed = {sel for sel, g in ROLES.values() if g in groups[u]}
        rows = {d["external_id"] for d in DOCS if any(f"{k}:{v}" in allowed for k, v in d["attrs"].items())}
        if "contractors" in groups[u]:
            rows = {r for r in rows if next(d for d in DOCS if d["external_id"] == r)["attrs"].get("level") != "secret"}
        out[u] = rows
    return out


def make_store(path: Path, database_url: str | None = None) -> PermRAG:
    rag = PermRAG.open(path, database_url=database_url, catalog_only=True)
    for role, (sel, _) in ROLES.items():
        rag.policy.add_role(role)
        rag.policy.grant(role, sel)
    rag.policy.add_role("no-secrets")
    rag.policy.deny("no-secrets", "level:secret")
    rag.add_documents(DOCS)
    return rag


def assign_roles(rag: PermRAG) -> None:
    for role, (_, group) in ROLES.items():
        rag.identity.assign_group(group, role)  # by label, as an administrator types it
    rag.identity.assign_group("contractors", "no-secrets")


def readable(rag: PermRAG, uid: dict[str, str]) -> dict[str, set[str]]:
    return {u: {r.external_id for r in rag.rows(rag.visible(uid[u]))} for u in USERS}


def enforced(rag: PermRAG, uid: dict[str, str], locked: set[str]) -> dict[str, set[str]]:
    """casbin's answer over the stored rules (it knows no deactivation: locked users are left empty)."""
    e = rag.enforcer()
    rows = list(rag.rows(rag.catalog.tenant("default").rows))
    return {u: set() if u in locked else {r.external_id for r in rows if e.enforce(uid[u], "default", r, "read")} for u in USERS}


def state(rag: PermRAG) -> tuple:
    tp = rag.policy.tenant("default")
    return rag.policy_version, {k: set(v) for k, v in tp.members.items()}, dict(tp.labels), set(tp.inactive)


# ---------------------------------------------------------------------- reading
def test_paged_read_gives_every_user_group_and_membership(slapd) -> None:
    pages: list[tuple[str, int, int]] = []
    rag = PermRAG.open(slapd.root / "home", catalog_only=True)
    got = rag.identity.read_ldap(reader(slapd, page_size=3), progress=lambda *p: pages.append(p))
    rag.close()
    uid = ids(slapd)
    d = got.directory
    assert d.users == {uid[u] for u in USERS}
    assert set(d.groups) == {uid[g] for g in GROUPS_SEED}
    key = {u: "user:" + uid[u] for u in USERS} | {"group:" + g: "group:" + uid[g] for g in GROUPS_SEED}
    assert d.groups == {uid[g]: {key[m] for m in ms} for g, ms in seed_members().items()}  # nested, uniqueMember, memberOf, memberUid
    assert d.inactive == {uid[u] for u in LOCKED}
    assert d.labels["user:" + uid["heidi"]] == "heidi" and d.labels["group:" + uid["finance"]] == "finance"
    assert got.skipped == (f"{group_dn('contractors')}: member uid=ghost,ou=elsewhere,{S}",)
    user_pages = [p for p in pages if p[0] == "users"]
    assert len(user_pages) == -(-len(USERS) // 3) and user_pages[-1][2] == len(USERS)  # pages of 3: the server paged
    assert got.pages == len(pages) and got.entries == len(USERS) + len(GROUPS_SEED)


def test_active_directory_ids_labels_and_disabled_accounts(slapd) -> None:
    got = PermRAG.open(slapd.root / "home", catalog_only=True).identity.read_ldap(
        reader(slapd, id_attributes=("objectGUID", "entryUUID"), user_labels=("sAMAccountName", "uid"), users_base=PEOPLE, groups_base=GROUPS)
    )
    d = got.directory
    assert GUID_TEXT in d.users and d.labels["user:" + GUID_TEXT] == "heidi.ad"
    uid = ids(slapd)
    assert uid["grace"] in d.inactive and d.labels["user:" + uid["grace"]] == "grace.ad"  # userAccountControl 514
    assert "user:" + GUID_TEXT in d.groups[uid["finance"]] and "user:" + GUID_TEXT in d.groups[uid["auditors"]]


# ---------------------------------------------------------------------- sync → what each user reads
def test_sync_gives_each_user_what_brute_force_and_casbin_say(slapd, tmp_path, db_url) -> None:
    rag = make_store(tmp_path / "home", db_url)  # SQLite, then PostgreSQL
    v0 = rag.policy_version
    report = rag.identity.sync_ldap(slapd.url, base=S, bind_dn=srv.READER_DN, password=srv.READER_PW)
    assert report.applied and rag.policy_version == v0 + 1 and not report.removed
    assign_roles(rag)
    uid = ids(slapd)
    want = brute_force(expected_groups(seed_members()), LOCKED)
    assert want["dave"] == {"plan"} and want["bob"] == {"plan", "secret-plan"} and want["erin"] == {"audit-log"}  # the reference is not vacuous
    assert readable(rag, uid) == want
    assert enforced(rag, uid, LOCKED) == want
    assert rag.identity.sync_ldap(reader(slapd)).applied is False  # nothing changed: no new policy version
    rag.close()


def test_a_rename_keeps_rules(slapd, tmp_path) -> None:
    rag = make_store(tmp_path / "home")
    rag.identity.sync_ldap(reader(slapd))
    assign_roles(rag)
    uid = ids(slapd)
    before = readable(rag, uid)
    slapd.modify(f"dn: {user_dn('bob')}\nchangetype: modrdn\nnewrdn: uid=robert\ndeleteoldrdn: 1\n")  # refint rewrites member DNs
    slapd.modify(f"dn: {group_dn('eng')}\nchangetype: modrdn\nnewrdn: cn=engineering\ndeleteoldrdn: 1\n")
    assert ids(slapd)["robert"] == uid["bob"] and ids(slapd)["engineering"] == uid["eng"]  # same entryUUIDs
    report = rag.identity.sync_ldap(reader(slapd))
    assert report.applied and not report.added and not report.removed
    assert {(k, a, b) for k, a, b in report.relabelled} == {("user:" + uid["bob"], "bob", "robert"), ("group:" + uid["eng"], "eng", "engineering")}
    assert readable(rag, uid) == before
    assert rag.identity.group_roles("engineering") == {"eng-reader": "eng-reader"}
    rag.close()


def test_a_locked_account_sees_nothing_until_unlocked(slapd, tmp_path) -> None:
    rag = make_store(tmp_path / "home")
    rag.identity.sync_ldap(reader(slapd))
    assign_roles(rag)
    uid = ids(slapd)
    assert readable(rag, uid)["alice"] == {"plan", "secret-plan"}
    slapd.modify(f"dn: {user_dn('alice')}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n")
    report = rag.identity.sync_ldap(reader(slapd))
    assert report.deactivated == (uid["alice"],) and not report.removed
    assert readable(rag, uid) == brute_force(expected_groups(seed_members()), LOCKED | {"alice"})
    assert rag.identity.groups_of(uid["alice"]) == []
    slapd.modify(f"dn: {user_dn('alice')}\nchangetype: modify\ndelete: pwdAccountLockedTime\n")
    assert rag.identity.sync_ldap(reader(slapd)).reactivated == (uid["alice"],)
    assert readable(rag, uid)["alice"] == {"plan", "secret-plan"}
    rag.close()


def test_a_sync_by_another_process_is_seen_at_the_next_query(slapd, tmp_path) -> None:
    """`permrag identity sync ldap://…` in a process of its own (a real one, no test
    runner around it): this process, its store already open, sees the lock at its next query."""
    home = tmp_path / "home"
    rag = make_store(home)
    rag.identity.sync_ldap(reader(slapd))
    assign_roles(rag)
    uid = ids(slapd)
    assert readable(rag, uid)["bob"] == {"plan", "secret-plan"}
    slapd.modify(f"dn: {user_dn('bob')}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n")
    pw = tmp_path / "pw"
    pw.write_text(srv.READER_PW)
    cmd = [sys.executable, "-m", "permrag", "--home", str(home), "identity", "sync", slapd.url, "--base", S, "--bind-dn", srv.READER_DN, "--password-file", str(pw)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and "1 deactivated" in out.stdout, out.stdout + out.stderr
    assert readable(rag, uid) == brute_force(expected_groups(seed_members()), LOCKED | {"bob"})
    slapd.stop()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1 and out.stderr.startswith("error: cannot reach the LDAP server") and "Traceback" not in out.stderr, out.stderr
    rag.close()


# ---------------------------------------------------------------------- guards
def test_a_deleted_deny_group_is_refused_dry_run_changes_nothing(slapd, tmp_path) -> None:
    home = tmp_path / "home"
    rag = make_store(home)
    rag.identity.sync_ldap(reader(slapd))
    assign_roles(rag)
    uid = ids(slapd)
    rag.close()
    slapd.modify(f"dn: {group_dn('contractors')}\nchangetype: delete\n")
    pw = tmp_path / "pw"
    pw.write_text(srv.READER_PW + "\n")
    args = ["identity", "sync", slapd.url, "--base", S, "--bind-dn", srv.READER_DN, "--password-file", str(pw)]
    rag = PermRAG.open(home, catalog_only=True)
    before = state(rag)
    dry = rag.identity.sync_ldap(reader(slapd), dry_run=True)
    assert not dry.applied and dry.emptied_deny_groups == (uid["contractors"],) and dry.mass_removal
    with pytest.raises(MassRemovalError, match="contractors"):
        rag.identity.sync_ldap(reader(slapd))
    assert state(rag) == before
    rag.close()
    r = run_cli(home, *args, "--dry-run")
    assert r.exit_code == 0 and "would change" in r.output and "mass removal" in r.output, r.output
    r = run_cli(home, *args)
    assert r.exit_code == 1 and "refused" in r.output and "Traceback" not in r.output, r.output
    rag = PermRAG.open(home, catalog_only=True)
    assert state(rag) == before
    assert readable(rag, uid)["dave"] == {"plan"}  # still under the deny
    rag.close()
    r = run_cli(home, *args, "--allow-mass-removal")
    assert r.exit_code == 0 and "changed" in r.output, r.output
    rag = PermRAG.open(home, catalog_only=True)
    assert readable(rag, uid)["dave"] == {"plan", "secret-plan"} and rag.policy_version == before[0] + 1
    rag.close()


def test_a_connection_killed_mid_read_applies_nothing(slapd, tmp_path) -> None:
    rag = make_store(tmp_path / "home")
    rag.identity.sync_ldap(reader(slapd))
    slapd.modify(f"dn: {group_dn('contractors')}\nchangetype: modify\ndelete: member\nmember: {user_dn('u05')}\n")
    before = state(rag)

    def kill_after_first_page(kind: str, pages: int, entries: int) -> None:
        if pages == 1:
            slapd.kill()

    with pytest.raises(BackendError, match="lost after 3 entries"):
        rag.identity.read_ldap(reader(slapd, page_size=3), progress=kill_after_first_page)
    with pytest.raises(BackendError, match="cannot reach"):
        rag.identity.sync_ldap(reader(slapd))
    assert state(rag) == before
    slapd.start()
    assert rag.identity.sync_ldap(reader(slapd, page_size=3)).removed == (("user:" + ids(slapd)["u05"], ids(slapd)["contractors"]),)
    rag.close()


def test_a_listing_cut_by_a_server_limit_applies_nothing(slapd, tmp_path) -> None:
    rag = make_store(tmp_path / "home")
    rag.identity.sync_ldap(reader(slapd))
    before = state(rag)
    capped = LdapSource(slapd.url, S, bind_dn=srv.CAPPED_DN, password=srv.CAPPED_PW, page_size=2)
    with pytest.raises(BackendError, match="sizeLimitExceeded") as err:
        rag.identity.sync_ldap(capped)
    assert f"after {srv.CAPPED_TOTAL} entries" in str(err.value)
    assert state(rag) == before
    rag.close()


def test_a_group_cycle_is_refused(slapd, tmp_path) -> None:
    rag = make_store(tmp_path / "home")
    slapd.modify(f"dn: {group_dn('platform')}\nchangetype: modify\nadd: member\nmember: {group_dn('eng')}\n")
    with pytest.raises(IdentityFileError, match="group cycle"):
        rag.identity.sync_ldap(reader(slapd))
    assert rag.policy.tenant("default").members == {}
    rag.close()


# ---------------------------------------------------------------------- CLI errors
def test_cli_errors_are_one_line_and_change_nothing(slapd, tmp_path) -> None:
    home = tmp_path / "home"
    make_store(home).close()
    pw, bad = tmp_path / "pw", tmp_path / "bad"
    pw.write_text(srv.READER_PW)
    bad.write_text("wrong")
    free = srv.free_port()
    base = ["identity", "sync", "--bind-dn", srv.READER_DN]
    cases = [
        ([f"ldap://127.0.0.1:{free}", "--base", S, "--password-file", str(pw)], "cannot reach the LDAP server"),
        ([slapd.url, "--base", S, "--password-file", str(bad)], "refused the bind as 'cn=reader,dc=example,dc=org': invalidCredentials"),
        ([slapd.url, "--base", "dc=nowhere,dc=org", "--password-file", str(pw)], "base DN 'dc=nowhere,dc=org' failed: noSuchObject"),
        ([slapd.url, "--base", S, "--password-file", str(tmp_path / "missing")], "cannot read password file"),
        ([slapd.url, "--base", S, "--password-file", str(tmp_path)], "cannot read password file"),
        ([slapd.url, "--base", "not a dn", "--password-file", str(pw)], "base 'not a dn' is not a DN"),
        ([slapd.url, "--password-file", str(pw)], "--base"),
        ([slapd.url, str(pw), "--base", S, "--password-file", str(pw)], "one LDAP URL"),
        (["ldap://user:secret@127.0.0.1", "--base", S, "--password-file", str(pw)], "carries credentials"),
        ([slapd.url, "--base", S, "--starttls", "--password-file", str(pw)], "StartTLS"),
        ([slapd.url, "--base", S, "--user-filter", "(nonsense)", "--password-file", str(pw)], "LDAP filter refused"),
    ]
    for args, message in cases:
        r = run_cli(home, *base, *args)
        assert r.exit_code in (1, 2) and message in r.output and "Traceback" not in r.output, (args, r.output)
        assert "secret" not in r.output.replace("reader-secret", "")
    rag = PermRAG.open(home, catalog_only=True)
    assert rag.policy.tenant("default").members == {} and rag.identity.labels() == {}
    rag.close()


def test_cli_sync_reports_what_it_read(slapd, tmp_path) -> None:
    home = tmp_path / "home"
    make_store(home).close()
    pw = tmp_path / "pw"
    pw.write_text(srv.READER_PW + "\n")
    r = run_cli(home, "identity", "sync", slapd.url, "--base", S, "--bind-dn", srv.READER_DN, "--password-file", str(pw), "--page-size", "4")
    assert r.exit_code == 0, r.output
    assert f"read {len(USERS) + len(GROUPS_SEED)} entries" in r.output and "1 reference(s)" in r.output and "ghost" in r.output
    assert f"{len(USERS)} users, {len(GROUPS_SEED)} groups" in r.output
    r = run_cli(home, "explain", "--as", ids(slapd)["bob"], "plan")
    assert r.exit_code == 0


# ---------------------------------------------------------------------- values checked without a server
@pytest.mark.parametrize(
    "a, b",
    [
        ("uid=Bob,ou=People,dc=Example,dc=org", "uid=bob, ou=people , DC=example,dc=ORG"),
        ("cn=Smith\\, John,ou=people,dc=example,dc=org", 'cn="Smith, John",ou=people,dc=example,dc=org'),
        ("cn=caf\\C3\\A9,dc=example,dc=org", "cn=café,dc=example,dc=org"),
        ("cn=a+uid=b,dc=example,dc=org", "uid=b+cn=a,dc=example,dc=org"),
    ],
)
def test_dn_spellings_of_one_entry_are_one_key(a: str, b: str) -> None:
    assert dn_key(a) == dn_key(b)


def test_dn_keys_of_different_entries_differ() -> None:
    assert dn_key("cn=a\\,b=c,dc=x") != dn_key("cn=a,b=c,dc=x")
    assert dn_key("cn=a\\+b,dc=x") != dn_key("cn=a+b=x,dc=x")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"url": "http://h", "base": S}, "ldap://HOST"),
        ({"url": "ldap://h:99999", "base": S}, "not valid"),
        ({"url": "ldap://h/dc=x??sub", "base": S}, "path or query"),
        ({"url": "ldaps://h", "base": S, "starttls": True}, "already TLS"),
        ({"url": "ldap://h", "base": ""}, "must be a DN"),
        ({"url": "ldap://h", "base": S, "bind_dn": "cn=x"}, "without a password"),
        ({"url": "ldap://h", "base": S, "page_size": 0}, "page_size"),
        ({"url": "ldap://h", "base": S, "user_filter": "(objectClass=person"}, "user_filter"),
        ({"url": "ldap://h", "base": S, "group_filter": "(|(a=b)))("}, "unbalanced"),
        ({"url": "ldap://h", "base": S, "id_attributes": "entryUUID"}, "id_attributes"),
        ({"url": "ldap://admin:hunter2@h:99999", "base": S}, "'h:99999' carries credentials"),
    ],
)
def test_bad_settings_are_refused_before_any_connection(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        LdapSource(**kw)


def test_a_password_never_shows_in_a_source() -> None:
    source = LdapSource("ldap://h", S, bind_dn="cn=x," + S, password="hunter2")
    assert "hunter2" not in repr(source) and "hunter2" not in str(source)


# ---------------------------------------------------------------------- TLS
@pytest.mark.server  # servers of its own (certificates), not the slapd fixture
def test_starttls_and_ldaps_check_the_certificate(tmp_path) -> None:
    need_slapd()
    ca, cert, key = srv.make_tls(tmp_path / "tls")
    server = srv.Slapd(tmp_path / "slapd", seed(), tls=(ca, cert, key)).start()
    try:
        rag = make_store(tmp_path / "home")
        for url, starttls in ((server.url, True), (f"ldaps://127.0.0.1:{server.tls_port}", False)):
            source = LdapSource(url, S, bind_dn=srv.READER_DN, password=srv.READER_PW, starttls=starttls, ca_file=str(ca))
            assert rag.identity.read_ldap(source).directory.users == {ids(server)[u] for u in USERS}
        with pytest.raises(ConfigError, match="certificate verify failed"):  # the system's CAs do not know this one
            rag.identity.read_ldap(LdapSource(server.url, S, bind_dn=srv.READER_DN, password=srv.READER_PW, starttls=True))
        with pytest.raises(ConfigError, match=r"TLS with ldaps://127.0.0.1:\d+ failed: socket ssl wrapping error: \[SSL: CERTIFICATE_VERIFY_FAILED\]"):
            rag.identity.read_ldap(LdapSource(f"ldaps://127.0.0.1:{server.tls_port}", S))
        assert rag.policy.tenant("default").members == {}
        rag.close()
        pw = tmp_path / "pw"
        pw.write_text(srv.READER_PW)
        r = run_cli(tmp_path / "home", "identity", "sync", server.url, "--base", S, "--bind-dn", srv.READER_DN, "--password-file", str(pw), "--starttls", "--ca-file", str(ca))
        assert r.exit_code == 0 and f"{len(USERS)} users" in r.output, r.output
    finally:
        server.stop()
    ca, cert, key = srv.make_tls(tmp_path / "tls-other", host="ldap.other.example", ip=None)
    other = srv.Slapd(tmp_path / "slapd-other", tls=(ca, cert, key)).start()
    rag = PermRAG.open(tmp_path / "home", catalog_only=True)
    try:
        for url, starttls in ((other.url, True), (f"ldaps://127.0.0.1:{other.tls_port}", False)):
            with pytest.raises(ConfigError, match="certificate is not for '127.0.0.1'"):  # a trusted CA, the wrong name
                rag.identity.read_ldap(LdapSource(url, S, starttls=starttls, ca_file=str(ca)))
    finally:
        rag.close()
        other.stop()


def test_ranged_values_are_merged_until_the_last_range() -> None:
    from permrag.policy.ldap_client import _merge

    attrs: dict[str, list[bytes]] = {}
    assert _merge(attrs, "member;range=0-1499", [b"a", b"b"]) == ("member", 1500)
    assert _merge(attrs, "Member;range=1500-*", [b"c"]) is None
    assert _merge(attrs, "memberOf", [b"g"]) is None
    assert attrs == {"member": [b"a", b"b", b"c"], "memberof": [b"g"]}


def test_without_ldap3_a_sync_says_how_to_install_it(tmp_path) -> None:
    code = (
        "import sys; sys.modules['ldap3'] = None\n"  # as where the optional extra is not installed
        "from permrag import PermRAG\n"
        f"rag = PermRAG.open({str(tmp_path / 'home')!r}, catalog_only=True)\n"
        "try:\n    rag.identity.sync_ldap('ldap://127.0.0.1', base='dc=example,dc=org')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == "ConfigError LDAP sync needs the ldap3 package; pip install 'permrag[ldap]'", out.stdout + out.stderr
