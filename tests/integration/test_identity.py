"""Groups from identity-provider exports, document and folder ACLs, expiring access.

The reference here is written from the semantics alone (README "Identity"),
not from permrag's model: a user's principals are a fixed point over the
world's raw edges, and a document is readable iff some live allow (a rule of
a held role, or an ACL entry — the document's own, or a folder's up the chain
until inheritance is broken — naming a held principal) and no live deny.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from permrag import PermRAG
from permrag.errors import IdentityFileError, PermragError, PolicyError
from permrag.policy.directory import Directory
from tests.conftest import milvus_ids

from ..conftest import examples

DATA = Path(__file__).resolve().parents[2] / "policies" / "identity"  # the example exports the docs use


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------------- the reference
@dataclass
class World:
    users: list[str]
    groups: list[str]
    roles: list[str]
    depts: list[str]
    members: list[tuple[str, str, float | None]] = field(default_factory=list)  # (member key, group, expiry)
    group_roles: list[tuple[str, str, float | None]] = field(default_factory=list)
    user_roles: list[tuple[str, str, float | None]] = field(default_factory=list)
    rules: list[tuple[str, str, str, float | None]] = field(default_factory=list)  # (role, dept, effect, expiry)
    folders: dict[str, tuple[list[tuple[str, float | None]], list[tuple[str, float | None]], bool]] = field(default_factory=dict)
    docs: list[dict] = field(default_factory=list)


def live(t: float | None, now: float) -> bool:
    return t is None or t > now


def ref_principals(w: World, user: str, now: float) -> tuple[set[str], set[str]]:
    keys = {f"user:{user}"}
    changed = True
    while changed:
        changed = False
        for m, g, t in w.members:
            if m in keys and live(t, now) and f"group:{g}" not in keys:
                keys.add(f"group:{g}")
                changed = True
    roles = {r for u, r, t in w.user_roles if u == user and live(t, now)}
    roles |= {r for g, r, t in w.group_roles if f"group:{g}" in keys and live(t, now)}
    return keys | {f"role:{r}" for r in roles}, roles


def ref_entries(w: World, doc: dict, now: float) -> tuple[set[str], set[str]]:
    acl = doc.get("acl") or {}
    allow = {e["principal"] if isinstance(e, dict) else e for e in acl.get("allow", []) if live(e.get("expires_at") if isinstance(e, dict) else None, now)}
    deny = {e["principal"] if isinstance(e, dict) else e for e in acl.get("deny", []) if live(e.get("expires_at") if isinstance(e, dict) else None, now)}
    folder = acl.get("folder")
    if folder and acl.get("inherit", True):
        here = folder
        while here:
            if here in w.folders:
                fa, fd, inherit = w.folders[here]
                allow |= {p for p, t in fa if live(t, now)}
                deny |= {p for p, t in fd if live(t, now)}
                if not inherit:
                    break
            here = None if here == "/" else (here.rsplit("/", 1)[0] or "/")
    return allow, deny


def ref_visible(w: World, user: str, now: float) -> set[str]:
    principals, roles = ref_principals(w, user, now)
    out = set()
    for d in w.docs:
        rules = [(eft) for r, dept, eft, t in w.rules if r in roles and dept == d["attrs"]["dept"] and live(t, now)]
        allow, deny = ref_entries(w, d, now)
        if ("deny" in rules or deny & principals) or not ("allow" in rules or allow & principals):
            continue
        out.add(d["external_id"])
    return out


def apply(rag: PermRAG, w: World) -> None:
    for r in w.roles:
        rag.policy.add_role(r)
    for r, dept, eft, t in w.rules:
        (rag.policy.grant if eft == "allow" else rag.policy.deny)(r, f"dept:{dept}", expires_at=t)
    for u, r, t in w.user_roles:
        rag.policy.assign_user(u, r, expires_at=t)
    for m, g, t in w.members:
        rag.identity.add_member(g, m, expires_at=t, allow_unknown=True)  # random names: groups are made here
    for g, r, t in w.group_roles:
        rag.identity.assign_group(g, r, expires_at=t, allow_unknown=True)
    for path, (fa, fd, inherit) in w.folders.items():
        rag.identity.set_folder_acl(
            path,
            allow=[{"principal": p, "expires_at": t} for p, t in fa],
            deny=[{"principal": p, "expires_at": t} for p, t in fd],
            inherit=inherit,
            replace=True,
            allow_unknown=True,
        )
    rag.add_documents(w.docs)


T0 = 1_000_000.0
TIMES = [None, T0 + 10, T0 + 20, T0 + 30]
FOLDERS = ["/", "/a", "/a/b", "/a/b/c", "/x"]


@st.composite
def worlds(draw) -> World:
    users = [f"u{i}" for i in range(draw(st.integers(2, 6)))] + ["r0"]  # a user named like a role
    groups = [f"g{i}" for i in range(draw(st.integers(1, 6)))]
    roles = ["r0", "r1", "r2"]
    depts = ["eng", "hr", "ops"]
    w = World(users, groups, roles, depts)
    exp = st.sampled_from(TIMES)
    # memberships: groups only contain groups of a higher index (no cycle), ≤ 5 deep by construction
    for i, g in enumerate(groups):
        for u in draw(st.lists(st.sampled_from(users), max_size=3, unique=True)):
            w.members.append((f"user:{u}", g, draw(exp)))
        for h in draw(st.lists(st.sampled_from(groups[i + 1 : i + 4] or [g]), max_size=2, unique=True)):
            if h != g:
                w.members.append((f"group:{g}", h, draw(exp)))
    for g in draw(st.lists(st.sampled_from(groups), max_size=3, unique=True)):
        w.group_roles.append((g, draw(st.sampled_from(roles)), draw(exp)))
    for u in draw(st.lists(st.sampled_from(users), max_size=2, unique=True)):
        w.user_roles.append((u, draw(st.sampled_from(roles)), draw(exp)))
    seen_rules = set()
    for _ in range(draw(st.integers(0, 4))):
        r, d, e = draw(st.sampled_from(roles)), draw(st.sampled_from(depts)), draw(st.sampled_from(["allow", "allow", "deny"]))
        if (r, d, e) not in seen_rules:
            seen_rules.add((r, d, e))
            w.rules.append((r, d, e, draw(exp)))
    principals = [f"user:{u}" for u in users] + [f"group:{g}" for g in groups] + [f"role:{r}" for r in roles] + ["r1"]
    entry = st.tuples(st.sampled_from(principals), exp)
    for path in draw(st.lists(st.sampled_from(FOLDERS), max_size=3, unique=True)):
        fa = dict(draw(st.lists(entry, max_size=2)))
        fd = dict(draw(st.lists(entry, max_size=1)))
        w.folders[path] = ([(("role:" + p) if ":" not in p else p, t) for p, t in fa.items()], [(("role:" + p) if ":" not in p else p, t) for p, t in fd.items()], draw(st.booleans()))
    for i in range(draw(st.integers(3, 12))):
        doc = {"external_id": f"d{i}", "attrs": {"dept": draw(st.sampled_from(depts))}}
        if draw(st.booleans()):
            allow = draw(st.lists(st.sampled_from(principals), max_size=3, unique=True))
            deny = draw(st.lists(st.sampled_from(principals), max_size=1, unique=True))
            t = draw(exp)
            acl: dict = {
                "allow": [p if t is None else {"principal": p, "expires_at": t} for p in allow],
                "deny": deny,
                "inherit": draw(st.booleans()),
            }
            if draw(st.booleans()):
                acl["folder"] = draw(st.sampled_from(FOLDERS))
            doc["acl"] = acl
        w.docs.append(doc)
    # bare "r1" in ACLs means the role r1
    for d in w.docs:
        acl = d.get("acl")
        if acl:
            acl["allow"] = [("role:r1" if e == "r1" else {**e, "principal": "role:r1"} if isinstance(e, dict) and e["principal"] == "r1" else e) for e in acl["allow"]]
            acl["deny"] = ["role:r1" if e == "r1" else e for e in acl["deny"]]
    return w


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(w=worlds())
def test_compiled_bitmaps_equal_the_reference_at_every_moment(tmp_path_factory, w: World) -> None:
    clock = Clock(T0)
    rag = PermRAG.open(tmp_path_factory.mktemp("id"), catalog_only=True, clock=clock)
    try:
        apply(rag, w)
        names = {r.row_id: r.external_id for r in rag.rows(rag.catalog.tenant("default").rows)}
        records = {r.external_id: r for r in rag.rows(rag.catalog.tenant("default").rows)}
        for now in (T0, T0 + 15, T0 + 25, T0 + 35):  # across every expiry, no change made in between
            clock.t = now
            enforcer = rag.enforcer()  # casbin over the same rules (it knows groups and roles, not ACLs)
            for u in w.users + ["nobody"]:
                got = {names[i] for i in rag.visible(u)}
                assert got == ref_visible(w, u, now), (u, now)
                for d in w.docs:
                    if "acl" not in d:
                        assert enforcer.enforce(u, "default", records[d["external_id"]], "read") == (d["external_id"] in got)
                for d in w.docs[:4]:
                    assert rag.explain(u, d["external_id"]).visible == (d["external_id"] in got)
    finally:
        rag.close()


def test_expiry_is_shown_and_ends_access_without_a_change(tmp_path) -> None:
    clock = Clock(T0)
    rag = PermRAG.open(tmp_path, catalog_only=True, clock=clock)
    rag.policy.add_role("reader")
    rag.policy.grant("reader", "dept:eng")
    rag.identity.add_member("eng", "user:ann", expires_at=T0 + 60, allow_unknown=True)
    rag.identity.assign_group("eng", "reader")
    rag.add_documents(
        [{"external_id": "spec", "attrs": {"dept": "eng"}}, {"external_id": "memo", "attrs": {"dept": "x"}, "acl": {"allow": [{"principal": "user:bo", "expires_at": "1970-01-12T14:00:00Z"}]}}]
    )
    e = rag.explain("ann", "spec")
    assert e.visible and e.path == ("ann", "group:eng", "reader") and e.expires_at == T0 + 60
    assert "1970-01-12T13:47:40Z" in str(e)
    assert rag.can_read("bo", "memo") and "until 1970-01-12T14:00:00Z" in str(rag.explain("bo", "memo"))
    version = rag.policy_version
    clock.t = T0 + 60
    assert not rag.can_read("ann", "spec") and rag.explain("ann", "spec").decision == "unknown-user"  # no live edge left
    clock.t = 1_000_800.0
    assert not rag.can_read("bo", "memo")
    assert rag.policy_version == version
    rag.close()


# ---------------------------------------------------------------------- exports
def edges_from_scim(path: Path) -> set[tuple[str, str]]:
    """An independent reading of the SCIM fixture (plain json)."""
    doc = json.loads(path.read_text())
    users = {r["id"]: r["userName"] for r in doc["Resources"] if "userName" in r}
    groups = {r["id"]: r["displayName"] for r in doc["Resources"] if "displayName" in r}
    out = set()
    for r in doc["Resources"]:
        for m in r.get("members", []):
            ref = m["value"]
            out.add((f"user:{users[ref]}" if ref in users else f"group:{groups[ref]}", r["displayName"]))
    return out


def memberships(rag: PermRAG) -> set[tuple[str, str]]:
    tp = rag.policy.tenant("default")
    return {(m, g) for m, gs in tp.member_of.items() for g in gs}


def by_label(rag: PermRAG) -> set[tuple[str, str]]:
    """The memberships with every id replaced by its label (CSV ids are their own labels)."""
    tp = rag.policy.tenant("default")

    def name(key: str) -> str:
        return tp.labels.get(key, key.split(":", 1)[1])

    return {(m.split(":", 1)[0] + ":" + name(m), name("group:" + g)) for m, g in memberships(rag)}


@pytest.mark.parametrize("name", ["directory.scim.json", "directory.ldif", "directory.csv"])
def test_every_format_gives_the_export(tmp_path, name) -> None:
    rag = PermRAG.open(tmp_path, catalog_only=True)
    rag.policy.add_role("analyst")
    rag.policy.grant("analyst", "dept:fin")
    v = rag.policy_version
    report = rag.identity.sync(DATA / name)
    assert report.applied and rag.policy_version == v + 1
    assert by_label(rag) == edges_from_scim(DATA / "directory.scim.json")
    assert report.users == 6 and report.groups == 4
    tp = rag.policy.tenant("default")
    uid, gid = (lambda label: tp.resolve("user:", label)), (lambda label: tp.resolve("group:", label))
    assert (uid("carol@example.com") == "carol@example.com") == (name == "directory.csv")  # SCIM and LDIF key by the provider's id
    rag.identity.assign_group("finance", "analyst")  # an admin call takes the label
    assert tp.group_roles[gid("finance")] == {"analyst"}
    rag.add_documents([{"external_id": "ledger", "attrs": {"dept": "fin"}}, {"external_id": "plan", "attrs": {"dept": "eng"}, "acl": {"allow": [f"group:{gid('engineering')}"]}}])
    # nested: carol is in platform ⊂ engineering; the user "analyst" is a user, not the role
    assert rag.can_read(uid("carol@example.com"), "plan") and not rag.can_read(uid("erin@example.com"), "plan")
    assert rag.can_read(uid("analyst"), "ledger") and rag.explain(uid("analyst"), "ledger").path == (tp.shown("user:" + uid("analyst"))[5:], tp.shown("group:" + gid("finance")), "analyst")
    assert rag.who_can_see("plan")["users"] == sorted(uid(u) for u in ["alice@example.com", "bob@example.com", "carol@example.com"])
    assert rag.who_can_see("plan")["groups"] == sorted([gid("engineering"), gid("platform")])
    again = rag.identity.sync(DATA / name)
    assert not again.applied and not again.changed and rag.policy_version == v + 2
    rag.close()


def test_sync_removes_what_disappeared_and_dry_run_changes_nothing(tmp_path) -> None:
    rag = PermRAG.open(tmp_path, catalog_only=True)
    rag.identity.sync(DATA / "directory.csv")
    smaller = tmp_path / "smaller.csv"
    smaller.write_text("\n".join(line for line in (DATA / "directory.csv").read_text().splitlines() if "carol@" not in line and "erin@" not in line) + "\nfinance,user:frank\n")
    before, v = memberships(rag), rag.policy_version
    dry = rag.identity.sync(smaller, dry_run=True)
    assert not dry.applied and memberships(rag) == before and rag.policy_version == v
    assert set(dry.removed) == {("user:carol@example.com", "platform"), ("user:erin@example.com", "all-staff")}
    assert set(dry.added) == {("user:frank", "finance")}
    done = rag.identity.sync(smaller)
    assert done.applied and rag.policy_version == v + 1 and set(done.removed) == set(dry.removed)
    assert ("user:carol@example.com", "platform") not in memberships(rag)
    rag.close()


directories = st.builds(
    lambda edges: Directory({m[5:] for m, _ in edges if m.startswith("user:")}, {g: {m for m, h in edges if h == g} for _, g in edges}),
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from([f"user:u{i}" for i in range(8)]), st.sampled_from([f"g{i}" for i in range(5)])),
            st.sampled_from([("group:g0", "g1"), ("group:g1", "g2"), ("group:g2", "g3"), ("group:g0", "g4"), ("group:g3", "g4")]),
        ),
        max_size=20,
        unique=True,
    ),
)


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=directories, second=directories)
def test_incremental_sync_equals_a_fresh_import(tmp_path_factory, first: Directory, second: Directory) -> None:
    a = PermRAG.open(tmp_path_factory.mktemp("a"), catalog_only=True)
    b = PermRAG.open(tmp_path_factory.mktemp("b"), catalog_only=True)
    try:
        a.add_documents([{"external_id": f"d{i}", "acl": {"allow": [f"group:g{i}"]}} for i in range(5)])
        b.add_documents([{"external_id": f"d{i}", "acl": {"allow": [f"group:g{i}"]}} for i in range(5)])
        a.identity.sync(first)
        v = a.policy_version
        report = a.identity.sync(second, allow_mass_removal=True)
        assert a.policy_version == v + (1 if first.edges() != second.edges() else 0)
        assert report.unchanged == len(first.edges() & second.edges())
        b.identity.sync(second)
        assert memberships(a) == memberships(b) == second.edges()
        for u in [f"u{i}" for i in range(8)]:
            assert list(a.visible(u)) == list(b.visible(u))
        v = a.policy_version
        assert not a.identity.sync(second).applied and a.policy_version == v
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("bad.json", '{"Resources": [\n  {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "1", "userName": "a"},\n  oops\n]}', "line 3"),
        (
            "ref.json",
            json.dumps({"Resources": [{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "g", "displayName": "x", "members": [{"value": "nope"}]}]}),
            "$.Resources[0].members[0].value",
        ),
        ("name.json", json.dumps({"Resources": [{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "1", "userName": " padded"}]}), "$.Resources[0].userName"),
        ("nodn.ldif", "version: 1\n\ncn: x\nobjectClass: groupOfNames\n", "line 3"),
        ("dangling.ldif", "dn: cn=x,dc=e\nobjectClass: groupOfNames\ncn: x\nmember: uid=ghost,dc=e\n", "entry at line 1"),
        ("b64.ldif", "dn: uid=a,dc=e\nobjectClass: person\nuid:: ***\n", "line 3"),
        ("fields.csv", "group,member\neng,user:a\neng,user:b,extra\n", "line 3"),
        ("cycle.csv", "a,group:b\nb,group:c\nc,group:a\n", "groups"),
    ],
)
def test_malformed_exports_name_the_place_and_apply_nothing(tmp_path, name, text, where) -> None:
    rag = PermRAG.open(tmp_path / "home", catalog_only=True)
    rag.identity.sync(DATA / "directory.csv")
    before, v = memberships(rag), rag.policy_version
    bad = tmp_path / name
    bad.write_text(text)
    with pytest.raises(IdentityFileError) as err:
        rag.identity.sync([DATA / "directory.csv", bad])
    assert where in str(err.value) and name in str(err.value)
    assert memberships(rag) == before and rag.policy_version == v
    rag.close()


def test_group_rules_refuse_cycles_and_depth(tmp_path) -> None:
    rag = PermRAG.open(tmp_path, catalog_only=True)
    rag.identity.add_member("a", "group:b", allow_unknown=True)
    with pytest.raises(PolicyError, match="cycle"):
        rag.identity.add_member("b", "group:a")
    for i in range(8):
        rag.identity.add_member(f"c{i + 1}", f"group:c{i}", allow_unknown=True)
    rag.identity.add_member("c0", "user:x", allow_unknown=True)  # x → c0 → … → c8: 9 links, casbin's reach
    with pytest.raises(PolicyError, match="too deep"):
        rag.identity.add_member("c9", "group:c8", allow_unknown=True)
    assert rag.identity.groups_of("x") == [f"c{i}" for i in range(9)]
    with pytest.raises(PermragError):
        rag.policy.add_role("group:eng")  # roles cannot be named like principals
    rag.close()


# ---------------------------------------------------------------------- search, processes, CLI
def test_acl_search_equals_brute_force_on_lite(tmp_path) -> None:
    from tests.helpers.reference import assert_top_k
    from tests.integration.test_search import dense_reference

    rag = PermRAG.open(tmp_path, encoder="hash")
    docs = [
        {
            "external_id": f"d{i}",
            "text": f"budget plan w{i % 7} w{i % 11} review",
            "attrs": {"dept": ["eng", "hr"][i % 2]},
            "acl": {"allow": [f"user:u{i % 5}"] + (["group:leads"] if i % 3 == 0 else []), "folder": f"/team{i % 4}"},
        }
        for i in range(300)
    ]
    rag.add_documents(docs)
    rag.identity.sync(Directory({"a", "b"}, {"leads": {"user:a"}, "all": {"group:leads", "user:b"}}))
    rag.identity.set_folder_acl("/team1", allow=["group:all"], deny=["user:u1"], allow_unknown=True)  # u1: named by document ACLs only
    vecs = {d["external_id"]: v for d, v in zip(docs, rag.encoder.encode([d["text"] for d in docs]))}
    for user in ["u0", "u1", "a", "b", "stranger"]:
        for q in ["budget w3", "review w5 plan"]:
            hits = rag.search(q, user=user, k=10, mode="dense")
            assert_top_k([h.row_id for h in hits], dense_reference(rag, vecs, user, q, "default"), 10)
            assert {h.row_id for h in rag.search(q, user=user, k=50)} <= set(rag.visible(user))
    assert not rag.can_read("u1", "d1")  # u1 is on d1's own ACL but /team1 denies it
    rag.close()


WORKER = textwrap.dedent(
    """
    import sys, time
    from permrag import PermRAG
    rag = PermRAG.open(sys.argv[1], database_url=sys.argv[2], catalog_only=True)
    print(len(rag.visible("ann")), flush=True)
    deadline = time.time() + 30
    sys.stdin.readline()  # the other process changed something
    print(len(rag.visible("ann")), flush=True)
    while len(rag.visible("ann")) == 5 and time.time() < deadline:  # waits for an expiry, no change made
        time.sleep(0.05)
    print(len(rag.visible("ann")), round(time.time() - float(sys.argv[3]), 2), flush=True)
    """
)


@pytest.mark.postgres
def test_another_process_sees_membership_changes_and_expiry(tmp_path, pg_url) -> None:
    import time

    rag = PermRAG.open(tmp_path / "home", database_url=pg_url, catalog_only=True)
    rag.add_documents([{"external_id": f"d{i}", "acl": {"allow": ["group:eng"] if i % 2 else ["user:ann"]}} for i in range(10)])
    rag.identity.add_member("eng", "user:ann", allow_unknown=True)
    until = time.time() + 4
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "home"), pg_url, str(until)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "10"
    rag.identity.remove_member("eng", "user:ann")
    rag.identity.set_folder_acl("/", replace=True)  # a no-op change
    rag.update_metadata("d0", acl={"allow": [{"principal": "user:ann", "expires_at": until}]})
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "5"  # the removal holds in the other process at once
    count, late = proc.stdout.readline().split()
    proc.wait(timeout=30)
    assert count == "4" and float(late) < 1.0, (count, late)  # d0 gone at its expiry, in the other process
    rag.close()


def run_cli(home: Path, *args: str):
    from click.testing import CliRunner

    from permrag.cli import main

    return CliRunner().invoke(main, ["--home", str(home), *args])


def test_cli_identity_workflow(tmp_path) -> None:
    home = tmp_path / "home"
    rag = PermRAG.open(home, catalog_only=True)
    rag.add_documents([{"external_id": "plan", "acl": {"allow": ["group:00g1"]}}])
    rag.close()
    r = run_cli(home, "identity", "sync", str(DATA / "directory.scim.json"), "--dry-run")
    assert r.exit_code == 0 and "would change" in r.output and "+ user:00u3c in group:00g2" in r.output
    r = run_cli(home, "identity", "sync", str(DATA / "directory.scim.json"))
    assert r.exit_code == 0 and "9 memberships added" in r.output, r.output
    r = run_cli(home, "explain", "--as", "00u3c", "plan")
    assert r.exit_code == 0 and "00u3c (carol@example.com) → group:00g2 (platform) → group:00g1 (engineering)" in r.output, r.output
    r = run_cli(home, "who-can-see", "plan")
    assert r.exit_code == 0 and "00u3c" in r.output and "00u5e" not in r.output
    r = run_cli(home, "folder", "acl", "/eng", "--allow", "group:finance", "--no-inherit")
    assert r.exit_code == 0
    r = run_cli(home, "folder", "acl", "/eng", "--show", "--json")
    assert json.loads(r.output) == {"allow": ["group:00g3"], "deny": [], "inherit": False, "folder": "/eng"}  # the label, stored by id
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    for args, needle in (
        (["identity", "sync", str(bad)], "bad.json, line 1"),
        (["group", "add-member", "x", "user:y", "--expires", "tomorrow"], "ISO 8601"),
        (["group", "assign", "x", "no-such-role"], "unknown role"),
    ):
        r = run_cli(home, *args)
        lines = [line for line in r.output.strip().splitlines() if line.strip()]
        assert r.exit_code == 1 and "Traceback" not in r.output and len(lines) == 1 and needle in r.output, r.output


def test_the_readme_identity_snippet_runs_as_written(tmp_path) -> None:
    from tests.system.test_docs import blocks, env_for

    (code,) = blocks("identity")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_for(tmp_path, PERMRAG_ENCODER="hash"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "bob@example.com CAN read 'design' (tenant 'default'): bob@example.com → group:platform → group:engineering — allow group:engineering in the ACL of the folder /eng" in out
    assert "'users': ['alice@example.com', 'bob@example.com']" in out and out.rstrip().endswith("False")


def test_policy_csv_round_trip_keeps_groups_folders_and_expiry(tmp_path) -> None:
    clock = Clock(T0)
    a = PermRAG.open(tmp_path / "a", catalog_only=True, clock=clock)
    a.policy.add_role("reader")
    a.policy.grant("reader", "dept:eng", expires_at=T0 + 100)
    a.policy.assign_user("reader", "reader", expires_at=T0 + 50)  # a user called like the role
    a.identity.sync(DATA / "directory.csv")
    a.identity.assign_group("engineering", "reader")
    a.identity.add_member("finance", "user:zoe", expires_at=T0 + 10, allow_unknown=True)
    a.identity.set_folder_acl("/eng", allow=["group:finance", {"principal": "user:kim", "expires_at": T0 + 20}], deny=["role:reader"], inherit=False, allow_unknown=True)
    docs = [{"external_id": f"d{i}", "attrs": {"dept": "eng"}, "acl": {"folder": "/eng/x" if i % 2 else "/other"}} for i in range(6)]
    a.add_documents(docs)
    text = a.policy.export_csv()
    b = PermRAG.open(tmp_path / "b", catalog_only=True, clock=clock)
    b.add_documents(docs)
    b.policy.import_text(text)
    assert b.policy.export_csv().split("\n", 1)[1] == text.split("\n", 1)[1]
    users = ["reader", "zoe", "kim", "carol@example.com", "dave@example.com", "nobody"]
    for now in (T0, T0 + 15, T0 + 60, T0 + 200):
        clock.t = now
        assert [list(a.visible(u)) for u in users] == [list(b.visible(u)) for u in users], now
    assert any(f["kind"] == "expired" for f in a.lint())
    a.close()
    b.close()


def test_acl_update_is_metadata_only_and_atomic(tmp_path) -> None:
    from permrag.embed import HashEncoder

    class Counting(HashEncoder):
        calls = 0

        def encode(self, texts):
            Counting.calls += len(texts)
            return super().encode(texts)

    rag = PermRAG.open(tmp_path, encoder=Counting(64), chunk_size=200, chunk_overlap=0)
    long = " ".join(f"word{i} budget plan" for i in range(200))
    rag.add_documents([{"external_id": "big", "text": long, "attrs": {"dept": "eng"}, "acl": {"allow": ["user:ann"]}}])
    before_rows = {r.external_id: r for r in rag.row("big").chunks}
    encoded = Counting.calls
    stored = rag.backend.stored(rag.catalog.tenants.number("default"), [r.row_id for r in before_rows.values()])
    assert rag.can_read("ann", "big") and not rag.can_read("bo", "big")
    rag.update_metadata("big", acl={"allow": ["user:bo"]})
    assert Counting.calls == encoded  # no chunk re-encoded
    after = rag.row("big").chunks
    assert [r.external_id for r in after] == list(before_rows) and len(after) > 3
    new = rag.backend.stored(rag.catalog.tenants.number("default"), [r.row_id for r in after])
    for r in after:
        old = stored[before_rows[r.external_id].row_id]
        assert new[r.row_id]["text"] == old["text"] and np.allclose(new[r.row_id]["dense"], old["dense"])
    assert rag.can_read("bo", "big") and not rag.can_read("ann", "big")
    assert {h.external_id for h in rag.search("budget", user="bo", k=50, mode="dense")} == {r.external_id for r in after}
    assert rag.search("budget", user="ann", k=50, mode="dense") == []
    assert sorted(milvus_ids(rag)) == sorted(r.row_id for r in after)  # the old rows left Milvus
    rag.close()


def test_groups_and_acls_stay_in_their_tenant_on_one_milvus(tmp_path) -> None:
    rag = PermRAG.open(tmp_path, encoder="hash")
    for t in ("acme", "globex"):
        rag.add_documents([{"external_id": f"{t}-{i}", "text": f"plan budget {i}", "acl": {"allow": ["group:eng"]}} for i in range(5)], tenant=t)
    rag.identity.sync(Directory({"alice"}, {"eng": {"user:alice"}}), tenant="acme")
    rag.identity.sync(Directory({"bob"}, {"eng": {"user:bob"}}), tenant="globex")
    assert {h.external_id for h in rag.search("plan", user="alice", tenant="acme", k=10, mode="dense")} == {f"acme-{i}" for i in range(5)}
    assert rag.search("plan", user="alice", tenant="globex", k=10, mode="dense") == []
    assert {h.tenant for h in rag.search("plan", user="bob", tenant="globex", k=10)} == {"globex"}
    rag.identity.sync(Directory(set(), {}), tenant="acme", allow_mass_removal=True)  # acme's export is now empty
    assert not rag.visible("alice", "acme") and len(rag.visible("bob", "globex")) == 5
    assert rag.identity.members("eng", "globex") == ["user:bob"]
    rag.close()
