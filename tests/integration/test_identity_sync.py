"""Identity sync can never widen access by accident (issue 33, points 1–5).

Users and groups are keyed by the provider's immutable id (a rename keeps
every rule, ACL entry and deny); a deactivated user holds nothing in every
process; a partial SCIM export is refused; a mass removal needs an explicit
flag; and an incremental sync leaves exactly the state a fresh import of the
same export does (hypothesis, SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from permrag import PermRAG
from permrag.errors import AmbiguousNameError, IdentityFileError, MassRemovalError
from tests.integration.test_identity import run_cli
from tests.system.test_multiprocess import Other

from ..conftest import examples

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def user(ident: str, name: str, active: bool = True) -> dict:
    return {"schemas": [USER], "id": ident, "userName": name, "active": active}


def group(ident: str, name: str, *members: str) -> dict:
    return {"schemas": [GROUP], "id": ident, "displayName": name, "members": [{"value": m} for m in members]}


def listing(resources: list[dict], total: int | None = None, start: int = 1) -> dict:
    total = len(resources) if total is None else total
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": total, "startIndex": start,
            "itemsPerPage": len(resources), "Resources": resources}  # fmt: skip


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """(home, database URL) of a fresh store on SQLite or PostgreSQL."""
    if request.param == "sqlite":
        return tmp_path / "home", f"sqlite:///{tmp_path / 'store.db'}"
    return tmp_path / "home", request.getfixturevalue("pg_url")


def open_store(store, **kw) -> PermRAG:
    home, url = store
    return PermRAG.open(home, database_url=url, catalog_only=True, **kw)


def readable(rag: PermRAG, users, tenant: str = "default") -> dict[str, set[str]]:
    return {u: {r.external_id for r in rag.rows(rag.visible(u, tenant))} for u in users}


def enforced(rag: PermRAG, users, tenant: str = "default") -> dict[str, set[str]]:
    """casbin's answer for role rules (it knows no ACLs): the rows each user may read."""
    e = rag.enforcer()
    rows = [r for r in rag.rows(rag.catalog.tenant(tenant).rows)]
    return {u: {r.external_id for r in rows if e.enforce(u, tenant, r, "read")} for u in users}


# ---------------------------------------------------------------------- 1. immutable ids
def test_a_rename_keeps_rules_acls_denies_and_expiry(store, tmp_path) -> None:
    rag = open_store(store)
    until = time.time() + 3600
    for role in ("fin-reader", "no-secrets"):
        rag.policy.add_role(role)
    rag.policy.grant("fin-reader", "dept:fin")
    rag.policy.deny("no-secrets", "level:secret")
    v1 = [user("u1", "alice"), user("u2", "bob"), group("g-fin", "finance", "u1", "u2"), group("g-ext", "contractors", "u2")]
    rag.identity.sync(write(tmp_path / "v1.json", listing(v1)))
    rag.identity.assign_group("finance", "fin-reader", expires_at=until)  # labels, as an administrator types them
    rag.identity.assign_group("contractors", "no-secrets")
    rag.add_documents([
        {"external_id": "ledger", "attrs": {"dept": "fin"}},
        {"external_id": "salaries", "attrs": {"dept": "fin", "level": "secret"}},
        {"external_id": "board", "attrs": {"dept": "fin"}, "acl": {"allow": ["group:g-fin"], "deny": ["group:g-ext"]}},
    ])  # fmt: skip
    before = readable(rag, ["u1", "u2"])
    assert before == {"u1": {"ledger", "salaries", "board"}, "u2": {"ledger"}}
    v2 = [user("u1", "alice.ng"), user("u2", "bob"), group("g-fin", "Finance Team", "u1", "u2"), group("g-ext", "external contractors", "u2")]
    report = rag.identity.sync(write(tmp_path / "v2.json", listing(v2)))
    assert report.applied and not report.added and not report.removed
    assert {(k, a, b) for k, a, b in report.relabelled} == {("user:u1", "alice", "alice.ng"), ("group:g-fin", "finance", "Finance Team"), ("group:g-ext", "contractors", "external contractors")}
    assert readable(rag, ["u1", "u2"]) == before
    ruled = {"ledger", "salaries"}  # casbin knows the role rules (not ACLs): it agrees on the rows they decide
    assert {u: rows & ruled for u, rows in enforced(rag, ["u1", "u2"]).items()} == {u: rows & ruled for u, rows in before.items()}
    tp = rag.policy.tenant("default")
    assert tp.group_roles["g-ext"] == {"no-secrets"} and tp.expires[("g", "group:g-fin", "fin-reader")] == until
    assert "u2 (bob) → group:g-ext (external contractors) → no-secrets" in str(rag.explain("u2", "salaries"))
    assert str(rag.explain("u1", "board")).count("u1 (alice.ng) → group:g-fin (Finance Team)") == 1
    assert rag.identity.members("Finance Team") == ["user:u1", "user:u2"]  # the new label names the same group
    rag.close()


def test_admin_calls_take_an_id_or_an_unambiguous_label(tmp_path) -> None:
    rag = PermRAG.open(tmp_path, catalog_only=True)
    rag.policy.add_role("reader")
    export = [user("u1", "sam"), user("u2", "sam"), user("u3", "kim"), group("g1", "eng", "u1"), group("g2", "eng", "u2"), group("g3", "ops", "u3")]
    rag.identity.sync(write(tmp_path / "d.json", listing(export)))
    v = rag.policy_version
    for call in (lambda: rag.identity.assign_group("eng", "reader"), lambda: rag.policy.assign_user("sam", "reader"),
                 lambda: rag.identity.add_member("ops", "user:sam"), lambda: rag.identity.members("eng")):  # fmt: skip
        with pytest.raises(AmbiguousNameError) as err:
            call()
        assert "'g1', 'g2'" in str(err.value) or "'u1', 'u2'" in str(err.value)
    assert rag.policy_version == v  # nothing applied
    rag.identity.assign_group("g2", "reader")  # the id
    rag.policy.assign_user("kim", "reader")  # an unambiguous label
    rag.identity.add_member("ops", "user:u1")
    tp = rag.policy.tenant("default")
    assert tp.group_roles["g2"] == {"reader"} and tp.user_roles["u3"] == {"reader"} and tp.members["g3"] == {"user:u1", "user:u3"}
    # users, groups and roles stay separate namespaces: a user labelled like a role holds nothing by that
    rag.identity.sync(write(tmp_path / "d2.json", listing(export + [user("u9", "reader")])))
    assert rag.policy.roles_of("u9") == [] and rag.policy.roles_of("u3") == ["reader"]
    rag.close()


def test_a_store_made_before_ids_keeps_its_group_names_as_ids(tmp_path) -> None:
    from permrag.storage import db

    rag = PermRAG.open(tmp_path, catalog_only=True)
    rag.add_documents([{"external_id": "ledger", "acl": {"deny": ["group:finance"], "allow": ["user:dave", "user:erin"]}}])
    with db.transaction(rag._engine, "a membership as stores before ids kept it") as conn:
        db.bump(conn, "policy_version")
        conn.execute(db.casbin_rule.insert().values(ptype="g", v0="user:dave", v1="group:finance", v2="default"))
    rag.close()
    rag = PermRAG.open(tmp_path, catalog_only=True)
    assert rag.identity.labels() == {} and rag.identity.members("finance") == ["user:dave"]
    assert not rag.can_read("dave", "ledger") and rag.can_read("erin", "ledger")
    rag.identity.sync(write(tmp_path / "d.json", listing([user("dave", "Dave"), group("finance", "Finance", "dave")])))
    assert rag.identity.labels() == {"user:dave": "Dave", "group:finance": "Finance"} and not rag.can_read("dave", "ledger")
    rag.close()


# ---------------------------------------------------------------------- 2. deactivation
def test_a_deactivated_user_holds_nothing_in_every_process(store, tmp_path) -> None:
    rag = open_store(store)
    rag.policy.add_role("reader")
    rag.policy.grant("reader", "dept:eng")
    rag.add_documents([{"external_id": f"e{i}", "attrs": {"dept": "eng"}} for i in range(3)]
                      + [{"external_id": "mine", "acl": {"allow": ["user:u1"]}}, {"external_id": "team", "acl": {"allow": ["group:g1"]}}])  # fmt: skip
    rag.policy.assign_user("u1", "reader")  # a direct assignment
    active = [user("u1", "ann"), user("u2", "bo"), group("g1", "eng", "u1", "u2")]
    rag.identity.sync(write(tmp_path / "a.json", listing(active)))
    full = {"e0", "e1", "e2", "mine", "team"}
    url = store[1]
    other = Other(tmp_path / "other", url)
    try:
        assert len(other("visible", "u1")["ok"]) == 5
        off = [user("u1", "ann", active=False)] + active[1:]
        report = rag.identity.sync(write(tmp_path / "b.json", listing(off)))
        assert report.deactivated == ("u1",) and not report.removed  # the memberships stay, masked
        assert other("visible", "u1")["ok"] == []  # at the next query of another process
        assert readable(rag, ["u1", "u2"]) == {"u1": set(), "u2": {"team"}}
        assert enforced(rag, ["u1"]) == {"u1": set()}  # casbin over the stored rules agrees
        ex = rag.explain("u1", "mine")
        assert ex.decision == "deactivated" and not ex.visible and "deactivated" in str(ex)
        assert other("explain", "u1", "e0")["ok"]["decision"] == "deactivated"
        assert rag.who_can_see("team")["users"] == ["u2"]
        assert rag.identity.deactivated() == ["u1"] and rag.identity.members("g1") == ["user:u1", "user:u2"]
        report = rag.identity.sync(write(tmp_path / "a.json", listing(active)))
        assert report.reactivated == ("u1",)
        assert len(other("visible", "u1")["ok"]) == 5 and readable(rag, ["u1"]) == {"u1": full}
    finally:
        other.close()
        rag.close()


# ---------------------------------------------------------------------- 3. partial exports, pages, separate files
def test_a_partial_export_is_refused_and_its_pages_merge(tmp_path) -> None:
    rag = PermRAG.open(tmp_path, catalog_only=True)
    people = [user(f"u{i}", f"p{i}") for i in range(12)]
    groups = [group("g-all", "all", *(f"u{i}" for i in range(12))), group("g-ext", "contractors", "u3")]
    rag.identity.sync(write(tmp_path / "full.json", listing(people + groups)))
    v, before = rag.policy_version, rag.identity.members("g-ext")
    page1 = write(tmp_path / "p1.json", listing(people[:4], total=12))
    grp = write(tmp_path / "groups.json", listing([group("g-all", "all", "u0", "u1", "u2", "u3"), group("g-ext", "contractors")]))
    with pytest.raises(IdentityFileError) as err:
        rag.identity.sync([page1, grp], allow_mass_removal=True)  # the flag does not make a partial export whole
    assert "lists 12 Users but its pages give 4" in str(err.value) and "8 missing" in str(err.value) and "p1.json" in str(err.value)
    assert rag.policy_version == v and rag.identity.members("g-ext") == before  # nothing applied
    # the pages given as several files (overlapping) are merged, de-duplicated by id
    pages = [write(tmp_path / f"page{n}.json", listing(people[a:b], total=12, start=a + 1)) for n, (a, b) in enumerate([(0, 5), (4, 9), (9, 12)])]
    report = rag.identity.sync([*pages, write(tmp_path / "g.json", listing(groups))])
    assert not report.changed and report.users == 12
    # one id twice with different content: two exports mixed up, refused
    clash = write(tmp_path / "clash.json", listing([user("u0", "someone-else")] + people[1:5], total=12))
    with pytest.raises(IdentityFileError, match="other content"):
        rag.identity.sync([clash, *pages, tmp_path / "g.json"])
    rag.close()


def test_users_and_groups_in_separate_files_resolve_across_files(tmp_path) -> None:
    home = tmp_path / "home"
    rag = PermRAG.open(home, catalog_only=True)
    rag.add_documents([{"external_id": "plan", "acl": {"allow": ["group:g1"]}}])
    rag.close()
    users = write(tmp_path / "users.scim.json", listing([user("u1", "alice@example.com"), user("u2", "bob@example.com")]))
    groups = write(tmp_path / "groups.scim.json", listing([group("g1", "engineering", "u1", "g2"), group("g2", "platform", "u2")]))
    r = run_cli(home, "identity", "sync", str(users), str(groups), "--dry-run")
    assert r.exit_code == 0 and "+ user:u2 in group:g2" in r.output and "would change" in r.output, r.output
    r = run_cli(home, "identity", "sync", str(users), str(groups))
    assert r.exit_code == 0 and "3 memberships added" in r.output, r.output
    rag = PermRAG.open(home, catalog_only=True)
    assert rag.can_read("u2", "plan") and rag.identity.labels()["group:g2"] == "platform"
    rag.close()
    r = run_cli(home, "group", "list")
    assert r.exit_code == 0 and "g1 (engineering): 2 members" in r.output and "g2 (platform): 1 members" in r.output, r.output
    r = run_cli(home, "group", "list", "--json")
    assert {d["group"]: d["label"] for d in json.loads(r.output)} == {"g1": "engineering", "g2": "platform"}
    r = run_cli(home, "identity", "sync", str(groups))  # alone, the groups file references users it does not hold
    assert r.exit_code == 1 and "Traceback" not in r.output and "references 'u1'" in r.output, r.output


# ---------------------------------------------------------------------- 4. mass removal
def test_mass_removal_is_refused_unless_allowed(store, tmp_path) -> None:
    rag = open_store(store)
    people = [user(f"u{i}", f"p{i}") for i in range(10)]
    full = listing(people + [group("g-all", "all", *(f"u{i}" for i in range(10)))])
    rag.identity.sync(write(tmp_path / "full.json", full))
    v = rag.policy_version
    five = write(tmp_path / "five.json", listing(people + [group("g-all", "all", *(f"u{i}" for i in range(5)))]))
    four = write(tmp_path / "four.json", listing(people + [group("g-all", "all", *(f"u{i}" for i in range(4)))]))
    empty = write(tmp_path / "empty.json", listing([]))
    for src, needle in ((four, "removes 6 of the tenant's 10 memberships"), (empty, "removes all 10 memberships")):
        with pytest.raises(MassRemovalError, match=needle):
            rag.identity.sync(src)
        assert rag.policy_version == v and len(rag.identity.members("g-all")) == 10
        dry = rag.identity.sync(src, dry_run=True)
        assert dry.mass_removal and not dry.applied and dry.memberships_before == 10
    assert rag.identity.sync(five).applied  # exactly half is not "more than half"
    assert rag.identity.sync(empty, allow_mass_removal=True).applied and rag.identity.members("g-all") == []
    rag.close()


@pytest.mark.parametrize("deny", ["rule", "document", "folder", "role-acl", "nested"])
def test_emptying_a_deny_group_is_refused(store, tmp_path, deny) -> None:
    rag = open_store(store)
    rag.policy.add_role("base")
    rag.policy.grant("base", "*")
    people = [user(f"u{i}", f"p{i}") for i in range(10)]
    staff = group("g-staff", "staff", *(f"u{i}" for i in range(10)))
    rag.identity.sync(write(tmp_path / "v1.json", listing(people + [staff, group("g-ext", "contractors", "u8", "u9")])))
    rag.identity.assign_group("g-staff", "base")
    rag.add_documents([{"external_id": "books", "attrs": {"dept": "fin"}, "acl": {"folder": "/fin"}}])
    if deny == "rule":
        rag.policy.add_role("no-fin")
        rag.policy.deny("no-fin", "dept:fin")
        rag.identity.assign_group("g-ext", "no-fin")
    elif deny == "document":
        rag.update_metadata("books", acl={"folder": "/fin", "deny": ["group:g-ext"]})
    elif deny == "role-acl":  # a deny ACL entry naming a role the group holds
        rag.policy.add_role("external")
        rag.identity.assign_group("g-ext", "external")
        rag.update_metadata("books", acl={"folder": "/fin", "deny": ["role:external"]})
    elif deny == "nested":  # the deny names a group above g-ext: g-ext's members hold it through g-ext
        rag.identity.sync(write(tmp_path / "v1b.json", listing(people + [staff, group("g-ext", "contractors", "u8", "u9"), group("g-out", "outsiders", "g-ext")])))
        rag.identity.set_folder_acl("/fin", deny=["group:g-out"])
    else:
        rag.identity.set_folder_acl("/fin", deny=["group:g-ext"])
    assert not rag.can_read("u9", "books")
    v = rag.policy_version
    outsiders = [group("g-out", "outsiders", "g-ext")] if deny == "nested" else []
    dropped = write(tmp_path / "v2.json", listing(people + [staff, group("g-ext", "contractors"), *outsiders]))  # 2 of 12 (13) memberships
    with pytest.raises(MassRemovalError, match=r"every member of group:g-ext \(contractors\)(, group:g-out \(outsiders\))?, which hold") as err:
        rag.identity.sync(dropped)
    assert "(2 removed, 0 added" in str(err.value)
    assert rag.policy_version == v and not rag.can_read("u9", "books")
    assert rag.identity.sync(dropped, dry_run=True).emptied_deny_groups == (("g-ext", "g-out") if deny == "nested" else ("g-ext",))
    assert rag.identity.sync(dropped, allow_mass_removal=True).applied and rag.can_read("u9", "books")
    rag.close()


def test_cli_guard_dry_run_and_flag(tmp_path) -> None:
    home = tmp_path / "home"
    rag = PermRAG.open(home, catalog_only=True)
    rag.identity.sync(write(tmp_path / "v1.json", listing([user("u1", "a"), user("u2", "b"), group("g1", "deny-me", "u1", "u2")])))
    rag.add_documents([{"external_id": "doc", "acl": {"allow": ["user:u1"], "deny": ["group:g1"]}}])
    rag.close()
    empty = write(tmp_path / "empty.json", listing([]))
    r = run_cli(home, "identity", "sync", str(empty), "--dry-run")
    assert r.exit_code == 0 and "removes all 2 memberships" in r.output and "group:g1 (deny-me)" in r.output and "removed of 2" in r.output, r.output
    r = run_cli(home, "identity", "sync", str(empty))
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and "--allow-mass-removal" in r.output and "Traceback" not in r.output, r.output
    r = run_cli(home, "identity", "sync", str(empty), "--allow-mass-removal")
    assert r.exit_code == 0 and "2 removed of 2" in r.output, r.output


# ---------------------------------------------------------------------- 5. a sync sets exactly the export's state
def test_a_permanent_membership_replaces_a_stored_expiring_or_expired_one(tmp_path) -> None:
    clock = Clock(time.time())
    rag = PermRAG.open(tmp_path, catalog_only=True, clock=clock)
    rag.add_documents([{"external_id": "plan", "acl": {"allow": ["group:g1"]}}])
    export = write(tmp_path / "d.json", listing([user("u1", "ann"), user("u2", "bo"), group("g1", "eng", "u1", "u2")]))
    rag.identity.sync(export)
    rag.identity.add_member("g1", "user:u1", expires_at=clock.t + 60)  # an administrator makes both expiring
    rag.identity.add_member("g1", "user:u2", expires_at=clock.t + 30)
    clock.t += 45  # u2's membership has expired, u1's has not yet
    assert not rag.can_read("u2", "plan") and rag.can_read("u1", "plan")
    report = rag.identity.sync(export)
    assert set(report.renewed) == {("user:u1", "g1"), ("user:u2", "g1")} and report.changed and report.applied
    assert not rag.policy.tenant("default").expires
    clock.t += 3600
    assert rag.can_read("u1", "plan") and rag.can_read("u2", "plan")
    assert not rag.identity.sync(export).changed
    rag.close()


UIDS, GIDS = [f"u{i}" for i in range(5)], [f"g{i}" for i in range(4)]
NESTED = [("g0", "g1"), ("g1", "g2"), ("g3", "g2")]  # (member group, group): acyclic in every subset

export_st = st.fixed_dictionaries({
    "users": st.dictionaries(st.sampled_from(UIDS), st.tuples(st.sampled_from(["ann", "bo", "cy"]), st.booleans()), min_size=1),
    "groups": st.dictionaries(st.sampled_from(GIDS), st.sampled_from(["eng", "ops", "x"]), min_size=1),
    "edges": st.sets(st.tuples(st.sampled_from(UIDS), st.sampled_from(GIDS)), max_size=10),
    "nested": st.sets(st.sampled_from(NESTED)),
    "pages": st.integers(1, 3),
    "expire": st.sets(st.tuples(st.sampled_from(UIDS), st.sampled_from(GIDS)), max_size=3),
    "expire_listed": st.integers(0, 3),  # how many of the export's own memberships are first stored expiring
})  # fmt: skip


def scim_files(tmp: Path, n: int, e: dict) -> list[Path]:
    """A /Users listing and a /Groups listing, each in ``pages`` pages."""
    users = [user(u, label, active) for u, (label, active) in sorted(e["users"].items())]
    groups = []
    for g, label in sorted(e["groups"].items()):
        members = [u for u, h in sorted(e["edges"]) if h == g and u in e["users"]]
        members += [m for m, h in sorted(e["nested"]) if h == g and m in e["groups"]]
        groups.append(group(g, label, *members))
    out = []
    for kind, res in (("u", users), ("g", groups)):
        size = -(-len(res) // e["pages"])
        chunks = [res[i : i + size] for i in range(0, len(res), size)]
        out += [write(tmp / f"s{n}-{kind}{k}.json", listing(c, total=len(res), start=1 + k * size)) for k, c in enumerate(chunks)]
    return out


def identity_state(rag: PermRAG, tenant: str) -> tuple:
    tp = rag.policy.tenant(tenant)
    return ({(m, g) for m, gs in tp.member_of.items() for g in gs}, dict(tp.labels), dict(tp.expires))


DOCS = [{"external_id": "d-all", "attrs": {"dept": "eng"}}] + [
    {"external_id": f"d{i}", "acl": {"allow": [f"group:g{i % 4}", f"user:u{i % 5}"], "deny": [f"group:g{(i + 1) % 4}"] if i % 3 == 0 else []}} for i in range(8)
]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_incremental_sync_equals_a_fresh_import(request, tmp_path, backend) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    clock = Clock(time.time())
    rag = PermRAG.open(tmp_path / "home", database_url=url, catalog_only=True, clock=clock)
    count = [0]

    @settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(steps=st.lists(export_st, min_size=1, max_size=4))
    def check(steps: list[dict]) -> None:
        count[0] += 1
        inc, fresh = f"inc{count[0]}", f"fresh{count[0]}"
        clock.t = time.time()
        for t in (inc, fresh):
            rag.policy.import_text(f"p, reader, {t}, dept:eng, read, allow\ng, group:g2, reader, {t}\n")  # a group role: not identity state
            rag.add_documents(DOCS, tenant=t)
        seen_off: set[str] = set()
        for n, e in enumerate(steps):
            listed = sorted((u, g) for u, g in e["edges"] if u in e["users"] and g in e["groups"])[: e["expire_listed"]]
            tp = rag.policy.tenant(inc)
            for u, g in sorted(p for p in e["expire"] | set(listed) if tp.known(f"user:{p[0]}") and tp.known(f"group:{p[1]}")):
                # an administrator's expiring membership of a known user and group, soon expired
                rag.identity.add_member(g, f"user:{u}", inc, expires_at=clock.t + 10)
            clock.t += 20
            rag.identity.sync(scim_files(tmp_path, count[0] * 10 + n, e), tenant=inc, allow_mass_removal=True)
            seen_off |= {u for u, (_, active) in e["users"].items() if not active}
        last = steps[-1]
        rag.identity.sync(scim_files(tmp_path, count[0] * 10 + 9, last), tenant=fresh, allow_mass_removal=True)
        assert identity_state(rag, inc) == identity_state(rag, fresh)
        a, b = rag.policy.tenant(inc).inactive, rag.policy.tenant(fresh).inactive
        assert a & set(last["users"]) == b and a - b <= seen_off  # a user dropped while deactivated stays so
        mine, theirs = readable(rag, UIDS, inc), readable(rag, UIDS, fresh)
        for u in UIDS:
            assert mine[u] == (theirs[u] if u in last["users"] or u not in a else set()), (u, mine[u], theirs[u])
        assert not rag.identity.sync(scim_files(tmp_path, count[0] * 10 + 8, last), tenant=inc).changed

    try:
        check()
    finally:
        rag.close()


def test_ldif_entries_are_keyed_by_entry_uuid_and_scim_by_external_id_without_an_id(tmp_path) -> None:
    rag = PermRAG.open(tmp_path, catalog_only=True)

    def ldif(group_cn: str, people_ou: str) -> Path:
        path = tmp_path / f"{group_cn}.ldif"
        path.write_text(
            f"dn: uid=ann,ou={people_ou},dc=e\nobjectClass: person\nuid: ann\nentryUUID: 11111111-aaaa\n\n"
            f"dn: cn={group_cn},ou=groups,dc=e\nobjectClass: groupOfNames\ncn: {group_cn}\nentryUUID: 22222222-bbbb\n"
            f"member: uid=ann,ou={people_ou},dc=e\n"
        )
        return path

    rag.identity.sync(ldif("contractors", "people"))
    rag.add_documents([{"external_id": "ledger", "acl": {"allow": ["user:11111111-aaaa"], "deny": ["group:22222222-bbbb"]}}])
    assert not rag.can_read("11111111-aaaa", "ledger")
    report = rag.identity.sync(ldif("external-staff", "staff"))  # renamed and moved: new DNs, same entryUUIDs
    assert not report.added and not report.removed and not rag.can_read("11111111-aaaa", "ledger")
    assert rag.identity.labels()["group:22222222-bbbb"] == "external-staff"
    scim = write(tmp_path / "ext.json", listing([{"schemas": [USER], "externalId": "emp-7", "userName": "kim"},
                                                 {"schemas": [GROUP], "externalId": "grp-1", "displayName": "ops", "members": [{"value": "emp-7"}]}]))  # fmt: skip
    assert rag.identity.sync(scim, tenant="t2").applied and rag.identity.members("ops", "t2") == ["user:emp-7"]
    rag.close()


def test_policy_export_keeps_labels_and_deactivations_and_an_import_never_reactivates(tmp_path) -> None:
    a = PermRAG.open(tmp_path / "a", catalog_only=True)
    docs = [{"external_id": "team", "acl": {"allow": ["group:g1"]}}, {"external_id": "mine", "acl": {"allow": ["user:u1"]}}]
    a.add_documents(docs)
    a.identity.sync(write(tmp_path / "d.json", listing([user("u1", "ann, the lead", active=False), user("u2", "bo"), group("g1", "eng", "u1", "u2")])))
    text = a.policy.export_csv()
    assert 'ident, user:u1, default, "ann, the lead", inactive' in text
    b = PermRAG.open(tmp_path / "b", catalog_only=True)
    b.add_documents(docs)
    b.policy.import_text(text)
    assert b.identity.labels() == a.identity.labels() and b.identity.deactivated() == ["u1"]
    assert readable(b, ["u1", "u2"]) == readable(a, ["u1", "u2"]) == {"u1": set(), "u2": {"team"}}
    v = b.policy_version
    assert b.policy.import_text("ident, user:u1, default, ann\n") == 1  # a new label, but no reactivation
    assert b.identity.deactivated() == ["u1"] and b.identity.labels()["user:u1"] == "ann" and b.policy_version == v + 1
    b.policy.import_text(text, replace=True)  # a replace keeps the provider's facts
    assert b.identity.deactivated() == ["u1"] and not b.can_read("u1", "mine")
    b.close()
    b = PermRAG.open(tmp_path / "b", catalog_only=True)  # and so does the store
    assert b.identity.deactivated() == ["u1"] and b.identity.labels()["user:u1"] == "ann, the lead"
    a.close()
    b.close()


def test_cli_user_show_takes_a_label_and_says_deactivated(tmp_path) -> None:
    home = tmp_path / "home"
    rag = PermRAG.open(home, catalog_only=True)
    rag.add_documents([{"external_id": "team", "acl": {"allow": ["group:g1"]}}])
    rag.identity.sync(write(tmp_path / "d.json", listing([user("u1", "ann", active=False), user("u2", "bo"), user("u3", "bo"), group("g1", "eng", "u1", "u2", "u3")])))
    rag.close()
    r = run_cli(home, "user", "show", "ann", "--json")
    data = json.loads(r.output)
    assert r.exit_code == 0 and data["user"] == "u1" and data["deactivated"] and data["visible_rows"] == 0, r.output
    r = run_cli(home, "user", "show", "ann")
    assert r.exit_code == 0 and r.output.startswith("u1 (ann) in 'default'") and "DEACTIVATED" in r.output, r.output
    r = run_cli(home, "user", "show", "bo")
    assert r.exit_code == 1 and "'u2', 'u3'" in r.output and "Traceback" not in r.output, r.output
    r = run_cli(home, "user", "show", "u2", "--json")
    assert r.exit_code == 0 and not json.loads(r.output)["deactivated"] and json.loads(r.output)["visible_rows"] == 1


# ---------------------------------------------------------------------- review findings (issue 33, points 2-4)
def deny_setup(rag: PermRAG, tmp_path: Path, deny: str) -> list[dict]:
    """staff (u0-u5, role base: reads everything); contractors (u3) nested in external (u2 + contractors);
    external holds a deny of ``deny``'s kind. 9 memberships."""
    rag.policy.add_role("base")
    rag.policy.grant("base", "*")
    people = [user(f"u{i}", f"p{i}") for i in range(6)]
    staff = group("g-staff", "staff", *(f"u{i}" for i in range(6)))
    v1 = listing(people + [staff, group("contractors", "contractors", "u3"), group("external", "external", "u2", "contractors")])
    rag.identity.sync(write(tmp_path / "v1.json", v1))
    rag.identity.assign_group("g-staff", "base")
    rag.add_documents([{"external_id": "books", "attrs": {"dept": "fin"}, "acl": {"folder": "/fin"}}, {"external_id": "memo"}])
    if deny == "rule":
        rag.policy.add_role("no-fin")
        rag.policy.deny("no-fin", "dept:fin")
        rag.identity.assign_group("external", "no-fin")
    elif deny == "document":
        rag.update_metadata("books", acl={"folder": "/fin", "deny": ["group:external"]})
    else:
        rag.identity.set_folder_acl("/fin", deny=["group:external"])
    return people + [staff]


@pytest.mark.parametrize("deny", ["document", "folder", "rule"])
def test_un_nesting_a_group_from_a_deny_group_is_refused_per_user(store, tmp_path, deny) -> None:
    rag = open_store(store)
    base = deny_setup(rag, tmp_path, deny)
    assert readable(rag, ["u2", "u3", "u4"]) == {"u2": {"memo"}, "u3": {"memo"}, "u4": {"memo", "books"}}
    v = rag.policy_version
    # only the edge group:contractors → external goes: 1 of 9, and external keeps a direct member
    unnested = write(tmp_path / "v2.json", listing(base + [group("contractors", "contractors", "u3"), group("external", "external", "u2")]))
    with pytest.raises(MassRemovalError, match=r"1 user\(s\) \(user:u3 \(p3\)\) would no longer be in group:external, which hold") as err:
        rag.identity.sync(unnested)
    assert "(1 removed, 0 added, 9 before)" in str(err.value)
    assert rag.policy_version == v and readable(rag, ["u3"]) == {"u3": {"memo"}}  # nothing applied
    dry = rag.identity.sync(unnested, dry_run=True)
    assert dry.losing_deny == ("u3",) and not dry.emptied_deny_groups and dry.to_dict()["losing_deny"] == ["u3"]
    # a user taken out of the deny group directly, while it keeps members: refused too
    direct = write(tmp_path / "v3.json", listing(base + [group("contractors", "contractors", "u3"), group("external", "external", "contractors")]))
    with pytest.raises(MassRemovalError, match=r"user:u2 \(p2\)\) would no longer be in group:external"):
        rag.identity.sync(direct)
    # a user moved between groups that hold no deny, or staying under the deny another way: accepted
    moved = listing(base + [group("contractors", "contractors", "u3", "u2"), group("external", "external", "contractors")])
    assert not rag.identity.sync(write(tmp_path / "v4.json", moved), dry_run=True).mass_removal
    assert rag.identity.sync(unnested, allow_mass_removal=True).applied and readable(rag, ["u3"]) == {"u3": {"memo", "books"}}
    rag.close()


def test_the_per_user_guard_is_fast_for_20k_users_and_60k_memberships() -> None:
    from permrag.policy.directory import Directory
    from permrag.policy.model import Folder, TenantPolicy
    from permrag.policy.sync import guard, plan

    tp, d = TenantPolicy(), Directory()
    for i in range(20_000):
        d.users.add(f"u{i}")
        for k in range(3):  # 60k memberships over 300 groups, ten of them nested in a deny group
            d.groups.setdefault(f"g{(i * 7 + k * 101) % 300}", set()).add(f"user:u{i}")
    d.groups["deny"] = {f"group:g{j}" for j in range(10)}
    for m, g in d.edges():
        tp.add_member(m, g)
    tp.folders["/x"] = Folder(deny={"group:deny": None})
    d.groups["deny"].discard("group:g3")  # un-nest one: its ~200 users lose the deny
    start = time.perf_counter()
    why, _, losing = guard(tp, plan(tp, d), d, set())
    assert time.perf_counter() - start < 5
    assert losing and set(losing) <= {u[5:] for u in d.groups["g3"]} and "would no longer be in group:deny" in why[-1]


def test_a_users_and_a_groups_listing_of_equal_totals_are_not_one_listing(tmp_path) -> None:
    rag = PermRAG.open(tmp_path, catalog_only=True)
    people = [user(f"u{i}", f"p{i}") for i in range(4)]
    groups = [group("g1", "staff", "u0", "u1", "u2", "u3"), group("g2", "deny-me", "u2", "u3")]
    rag.identity.sync(write(tmp_path / "full.json", listing(people + groups)))
    v, before = rag.policy_version, rag.identity.members("g2")
    users = write(tmp_path / "users.json", listing(people[:2], total=4, start=1))  # users 3 and 4 missing
    grp = write(tmp_path / "groups.json", listing([group("g1", "staff", "u0", "u1"), group("g2", "deny-me")], total=4, start=3))
    with pytest.raises(IdentityFileError, match="lists 4 Users but its pages give 2"):
        rag.identity.sync([users, grp], allow_mass_removal=True)
    # kinds from meta.resourceType, or from the file's own resourceType, count the same way
    typed = [{"meta": {"resourceType": "Group"}, "id": "g1", "displayName": "staff", "members": [{"value": "u0"}]}, {"meta": {"resourceType": "Group"}, "id": "g2", "displayName": "deny-me"}]
    grp = write(tmp_path / "typed.json", listing(typed, total=4, start=3))
    with pytest.raises(IdentityFileError, match="lists 4 Users but its pages give 2"):
        rag.identity.sync([users, grp], allow_mass_removal=True)
    empty_users = write(tmp_path / "declared.json", listing([], total=4) | {"resourceType": "User"})
    with pytest.raises(IdentityFileError, match="lists 4 Users but its pages give 0"):
        rag.identity.sync([empty_users, write(tmp_path / "g4.json", listing(groups))], allow_mass_removal=True)
    with pytest.raises(IdentityFileError, match="a Group in a listing of Users"):
        rag.identity.sync([write(tmp_path / "bad.json", listing(people + groups) | {"resourceType": "User"})])
    assert rag.policy_version == v and rag.identity.members("g2") == before  # nothing applied
    rag.close()


def test_listings_of_what_a_deactivated_user_holds_are_empty(store, tmp_path) -> None:
    rag = open_store(store)
    rag.policy.add_role("reader")
    active = [user("u1", "ann"), user("u2", "bo"), group("g1", "eng", "u1", "u2")]
    rag.identity.sync(write(tmp_path / "a.json", listing(active)))
    rag.policy.assign_user("u1", "reader")
    assert rag.policy.roles_of("u1") == ["reader"] and rag.identity.groups_of("ann") == ["g1"]
    rag.identity.sync(write(tmp_path / "b.json", listing([user("u1", "ann", active=False)] + active[1:])))
    assert rag.policy.roles_of("u1") == [] and rag.policy.roles_of("u1", implicit=True) == []
    assert rag.identity.groups_of("ann") == [] and rag.identity.groups_of("u2") == ["g1"]
    assert rag.identity.members("g1") == ["user:u1", "user:u2"]  # stored, masked
    rag.identity.sync(write(tmp_path / "a.json", listing(active)))  # reactivation restores them
    assert rag.policy.roles_of("u1") == ["reader"] and rag.identity.groups_of("u1") == ["g1"]
    rag.close()
