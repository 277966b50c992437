"""Cross-process deltas (issue 38, point 3): a process catches up with another
process's policy changes by applying the logged deltas since its version —
re-reading only the tenants they name and dropping only the caches they name —
and ends exactly where a full reload would (SQLite and PostgreSQL, with a
second real process making changes).

The reference for "equal" is a third copy of the store opened afresh (a full
load) and casbin's ``enforce`` over the stored rules."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from permrag import ArgumentError, PermRAG, PermragError
from permrag.storage import db

from ..conftest import examples
from ..system.test_multiprocess import Other

TENANTS = ("t0", "t1")
ROLES = ("r0", "r1", "r2")
USERS = ("u0", "u1", "u2")
GROUPS = ("g0", "g1")
SELECTORS = ("*", "dept:eng", "dept:hr", "lvl:1", "doc:x3")


def _docs() -> list[dict]:
    return [{"external_id": f"x{i}", "tenant": t, "attrs": {"dept": ["eng", "hr", "fin"][i % 3], "lvl": str(i % 2)}} for t in TENANTS for i in range(9)]


@pytest.fixture
def pair(tmp_path, db_url):
    """A store (this process, its caches warm) and a second process on it."""
    rag = PermRAG.open(tmp_path / "a", database_url=db_url, catalog_only=True, create=True)
    rag.add_documents(_docs())
    for t in TENANTS:
        for r in ROLES:
            rag.policy.add_role(r, t)
        rag.policy.grant("r0", "dept:eng", t)
        rag.policy.assign_user("u0", "r0", t)
    url = rag.settings.database_url
    other = Other(tmp_path / "b", url)
    yield rag, other, url, tmp_path
    other.close()
    rag.close()


@pytest.fixture
def trio(pair):
    """:func:`pair` and a third process."""
    rag, other, url, tmp = pair
    third = Other(tmp / "c", url)
    yield rag, other, third, url, tmp
    third.close()


def _views(rag: PermRAG) -> dict[tuple[str, str], list[int]]:
    return {(t, u): sorted(rag.visible(u, t)) for t in TENANTS for u in USERS}


def _enforced(rag: PermRAG) -> dict[tuple[str, str], list[int]]:
    """casbin's answer over the stored rules, row by row (the oracle)."""
    e = rag.enforcer()
    out = {}
    for t in TENANTS:
        rows = rag.rows(rag.catalog.tenant(t).rows)
        for u in USERS:
            out[(t, u)] = sorted(r.row_id for r in rows if e.enforce(u, t, r, "read"))
    return out


OPS = st.one_of(
    st.tuples(st.sampled_from(["policy.grant", "policy.deny", "policy.revoke"]), st.sampled_from(ROLES), st.sampled_from(SELECTORS), st.sampled_from(TENANTS)),
    st.tuples(st.sampled_from(["policy.assign_user", "policy.unassign_user"]), st.sampled_from(USERS), st.sampled_from(ROLES), st.sampled_from(TENANTS)),
    st.tuples(st.sampled_from(["policy.inherit", "policy.uninherit"]), st.sampled_from(ROLES), st.sampled_from(ROLES), st.sampled_from(TENANTS)),
    st.tuples(st.sampled_from(["policy.add_role", "policy.remove_role"]), st.sampled_from(ROLES), st.sampled_from(TENANTS)),
    st.tuples(st.sampled_from(["identity.add_member", "identity.remove_member"]), st.sampled_from(GROUPS), st.sampled_from([f"user:{u}" for u in USERS] + ["group:g1"]), st.sampled_from(TENANTS)),
    st.tuples(st.sampled_from(["identity.assign_group", "identity.unassign_group"]), st.sampled_from(GROUPS), st.sampled_from(ROLES), st.sampled_from(TENANTS)),
)


def _call(rag: PermRAG, other: Other | None, op: tuple) -> None:
    name, *args = op
    kwargs = {"allow_unknown": True} if name in ("identity.add_member", "identity.assign_group") else {}
    if other is not None:
        other(name, *args, **kwargs)  # a refused change (unknown role, cycle) answers an error and changes nothing
        return
    target = rag
    for part in name.split("."):
        target = getattr(target, part)
    try:
        target(*args, **kwargs)
    except PermragError:
        pass


@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.integers(0, 2), st.booleans(), OPS), min_size=1, max_size=10))
def test_applying_deltas_equals_a_full_reload(trio, steps) -> None:
    """Random changes made in three processes: this process — its caches
    filled after some steps, its own changes made sometimes from a copy the
    others moved past — catches up by deltas (never a full reload) and its
    bitmaps equal a fresh full load's, the other processes' and casbin's."""
    rag, other, third, url, tmp = trio
    reloads = rag.policy.full_reloads
    for who, warm, op in steps:
        _call(rag, (None, other, third)[who], op)
        if warm:
            _views(rag)  # fill the caches the next delta must invalidate; else the next change here starts behind
    mine = _views(rag)
    assert rag.policy.full_reloads == reloads, "a full reload where the deltas were all logged"
    fresh = PermRAG.open(tmp / "a", database_url=url, catalog_only=True)
    try:
        assert fresh.policy_version == rag.policy_version
        assert _views(fresh) == mine
        assert _enforced(fresh) == mine
    finally:
        fresh.close()
    for (t, u), rows in mine.items():
        assert other("visible", u, t)["ok"] == rows
        assert third("visible", u, t)["ok"] == rows


def test_a_change_in_one_tenant_leaves_the_other_tenants_caches(pair) -> None:
    rag, other, _url, _tmp = pair
    rag.policy.assign_user("u1", "r0", "t1")
    _views(rag)
    before = dict(rag.compiler.stats)
    cached_t1 = {u: rag.compiler.visible(u, "t1") for u in USERS}
    assert other("policy.revoke", "r0", "dept:eng", "t0") == {"ok": None}
    assert len(rag.visible("u0", "t0")) == 0  # the revoke holds here at once
    after = {u: rag.compiler.visible(u, "t1") for u in USERS}
    assert all(after[u] is cached_t1[u] for u in USERS), "a change in t0 dropped t1's cached bitmaps"
    assert rag.policy.catch_ups >= 1 and rag.policy.full_reloads == 0
    assert rag.compiler.stats["user_misses"] - before["user_misses"] == 1  # only u0 in t0 was recomputed


USER_DELTAS = [
    ("policy.assign_user", "u2", "r0", "t0"),
    ("identity.add_member", "g0", "user:u1", "t0"),
    ("identity.provisioning().delete_user", "u2", "t0"),  # a deactivation: memberships gone, sees nothing
    ("policy.unassign_user", "u0", "r0", "t0"),
]


def test_a_change_naming_users_drops_only_those_users(pair) -> None:
    """An assignment, a membership, a deactivation made in another process: here the
    catch-up drops only the named user's cached bitmap — every other user's, in the
    same tenant too, is the very same object (not recompiled), with its plan — and
    every bitmap equals casbin's and a fresh full load's."""
    rag, other, url, tmp = pair
    rag.policy.assign_user("u1", "r0", "t0")
    rag.policy.grant("r1", "dept:hr", "t0")
    rag.identity.assign_group("g0", "r1", "t0", allow_unknown=True)
    rag.identity.add_member("g0", "user:u2", "t0", allow_unknown=True)
    for call, *args in USER_DELTAS:
        named = args[1][len("user:") :] if call == "identity.add_member" else args[0]
        before = _views(rag)
        cached = {(t, u): rag.compiler.visible(u, t) for t in TENANTS for u in USERS}
        plans = {key: rag.searcher.plan(rag.snapshot(key[1], key[0])) for key in cached}
        misses = rag.compiler.stats["user_misses"]
        kwargs = {"allow_unknown": True} if call == "identity.add_member" else {}
        assert "error" not in other(call, *args, **kwargs), call
        after = _views(rag)  # catches up once, by deltas
        assert rag.compiler.stats["user_misses"] - misses == 1, f"{call}: more than {named}'s bitmap recompiled"
        for (t, u), bm in cached.items():
            if (t, u) != ("t0", named):
                assert rag.compiler.visible(u, t) is bm, f"{call} dropped {u}'s cached bitmap in {t}"
                assert rag.searcher.plan(rag.snapshot(u, t)) is plans[(t, u)]
        assert after == _enforced(rag), call
        assert after[("t0", named)] != before[("t0", named)], f"{call} changed nothing for {named}: a vacuous step"
    assert rag.policy.full_reloads == 0 and after[("t0", "u2")] == []
    fresh = PermRAG.open(tmp / "a", database_url=url, catalog_only=True)
    try:
        assert _views(fresh) == after
    finally:
        fresh.close()


def test_a_pruned_log_means_a_full_reload_and_the_same_answer(pair) -> None:
    rag, other, url, tmp = pair
    _views(rag)
    other("policy.grant", "r1", "dept:hr", "t1")
    other("policy.assign_user", "u2", "r1", "t1")
    with db.transaction(rag._engine, "test: prune") as conn:
        conn.execute(delete(db.policy_log).where(db.policy_log.c.version == rag.policy_version + 1))
    mine = _views(rag)
    assert rag.policy.full_reloads == 1
    assert mine == _enforced(rag) and mine[("t1", "u2")]


def test_the_log_records_typed_changes(pair) -> None:
    """Every version is logged with its kind, its scope and the stored rows it added and removed."""
    rag, other, _url, _tmp = pair
    v = rag.policy_version
    other("policy.deny", "r0", "doc:x3", "t1")
    other("policy.revoke", "r0", "doc:x3", "t1")
    other("identity.add_member", "g0", "user:u1", "t0", allow_unknown=True)
    with db.reading(rag._engine, "test") as conn:
        from permrag.policy.deltas import read_log

        log = read_log(conn, v)
    assert [(d.version, d.kind, d.tenants) for d in log] == [(v + 1, "deny", ("t1",)), (v + 2, "revoke", ("t1",)), (v + 3, "member", ("t0",))]
    assert log[0].added == (("p", "r0", "t1", "doc:x3", "read", "deny", None),) and log[0].removed == ()
    assert log[1].removed == log[0].added and log[1].added == ()
    assert log[0].users == ("u0",) and log[2].users == ("u1",)


def test_policy_history_retention_is_set_and_checked(pair) -> None:
    rag, *_ = pair
    assert rag.policy_history() == 90.0
    assert rag.policy_history(7) == 7.0 and rag.policy_history() == 7.0
    for bad in (-1, "30", True, 1e9):
        with pytest.raises(ArgumentError):
            rag.policy_history(bad)
    assert rag.policy_history() == 7.0


def test_postgresql_pushes_changes_to_a_following_process(tmp_path, pg_url) -> None:
    """With follow(), a change committed by another process reaches this
    process's copy without any read here (LISTEN/NOTIFY)."""
    rag = PermRAG.open(tmp_path / "a", database_url=pg_url, catalog_only=True, create=True)
    rag.add_documents(_docs())
    rag.policy.add_role("r0", "t0")
    rag.policy.grant("r0", "*", "t0")
    rag.policy.assign_user("u0", "r0", "t0")
    other = Other(tmp_path / "b", pg_url)
    try:
        assert rag.follow() is True
        assert len(rag.visible("u0", "t0")) == 9
        time.sleep(0.3)  # the listener is up
        want = rag.policy.version + 1  # read before the change: the push may apply it before other() returns
        other("policy.revoke", "r0", "*", "t0")
        deadline = time.monotonic() + 5
        while rag.policy.version < want and time.monotonic() < deadline:
            time.sleep(0.01)  # no read from this thread: only the push can move the copy
        assert rag.policy.version == want
        assert len(rag.compiler.visible("u0", "t0")) == 0
    finally:
        other.close()
        rag.close()


# ---------------------------------------------------------------------- typed records
def _every_kind(rag: PermRAG) -> dict[str, list]:
    """One change of every kind in t0 → the typed changes its record must hold (None: not checked op by op)."""
    from permrag.policy.records import Ident

    steps = _steps_of_every_kind(rag)
    out = {}
    for name, call, want in steps:
        v = rag.policy_version
        call()
        assert rag.policy_version == v + 1, name
        out[name] = want
    assert any(isinstance(op, Ident) for op in _log(rag, rag.policy_version - len(steps))[10].ops())
    return out


def _steps_of_every_kind(rag: PermRAG) -> list:
    """(kind, the call that makes one change of it in t0, the typed changes its record must hold)."""
    from permrag.policy.directory import Directory
    from permrag.policy.provisioned import UserFields
    from permrag.policy.records import Edge, FolderEntry, RoleDef, Rule

    p, i = rag.policy, rag.identity
    steps = [
        ("add_role", lambda: p.add_role("r9", "t0"), [RoleDef(True, "t0", "r9")]),
        ("grant", lambda: p.grant("r9", "dept:hr", "t0"), [Rule(True, "t0", "r9", "dept:hr", "allow", None)]),
        ("deny", lambda: p.deny("r9", "lvl:1", "t0", expires_at=4e9), [Rule(True, "t0", "r9", "lvl:1", "deny", 4e9)]),
        ("assign_user", lambda: p.assign_user("u1", "r9", "t0"), [Edge(True, "t0", "user:u1", "r9", None)]),
        ("inherit", lambda: p.inherit("r1", "r9", "t0"), [Edge(True, "t0", "r1", "r9", None)]),
        ("assign_agent", lambda: p.assign_agent("bot", "r9", "t0"), [Edge(True, "t0", "agent:bot", "r9", None)]),
        ("member", lambda: i.add_member("g0", "user:u2", "t0", allow_unknown=True), [Edge(True, "t0", "user:u2", "group:g0", None)]),
        ("group_role", lambda: i.assign_group("g0", "r9", "t0"), [Edge(True, "t0", "group:g0", "r9", None)]),
        ("folder", lambda: i.set_folder_acl("/hr", allow=["user:u1"], tenant="t0"), [FolderEntry(True, "t0", "/hr", "user:u1", "allow", None)]),
        ("sync", lambda: i.sync(Directory(users={"u2"}, groups={"g0": {"user:u2"}}, inactive={"u2"}), tenant="t0", allow_mass_removal=True), None),
        ("write_user", lambda: i.provisioning().create_user(UserFields("ann.b"), "t0"), None),
        ("unassign_group", lambda: i.unassign_group("g0", "r9", "t0"), [Edge(False, "t0", "group:g0", "r9", None)]),
        ("unassign_agent", lambda: p.unassign_agent("bot", "r9", "t0"), [Edge(False, "t0", "agent:bot", "r9", None)]),
        ("uninherit", lambda: p.uninherit("r1", "r9", "t0"), [Edge(False, "t0", "r1", "r9", None)]),
        ("unassign_user", lambda: p.unassign_user("u1", "r9", "t0"), [Edge(False, "t0", "user:u1", "r9", None)]),
        ("revoke", lambda: p.revoke("r9", "dept:hr", "t0"), [Rule(False, "t0", "r9", "dept:hr", "allow", None)]),
        ("import", lambda: p.import_text("p, r9, t0, doc:x1, read, allow\ng, user:u0, r9, t0\n"), None),
        ("remove_role", lambda: p.remove_role("r9", "t0"), None),
    ]
    return steps


def _log(rag: PermRAG, after: int) -> list:
    from permrag.policy.deltas import read_log

    with db.reading(rag._engine, "test") as conn:
        return read_log(conn, after)


def test_every_kind_of_change_is_a_typed_record_read_back_strictly(tmp_path) -> None:
    """Each kind of policy change is logged as a record that parses back to the same
    value, whose typed changes name what the operation did; anything else in the
    log is refused, never read as a smaller change."""
    from permrag.policy.records import Delta, MalformedRecord, parse

    rag = PermRAG.open(tmp_path / "a", catalog_only=True, create=True)
    try:
        rag.add_documents(_docs())
        for r in ROLES:
            rag.policy.add_role(r, "t0")
        start = rag.policy_version
        wants = _every_kind(rag)
        log = _log(rag, start)
    finally:
        rag.close()
    assert [d.kind for d in log] == list(wants)
    for d, (kind, want) in zip(log, wants.items()):
        assert parse(d.version, d.ts, d.kind, d.detail()) == d == Delta.from_row(d.version, d.ts, d.kind, d.detail())
        assert d.tenants == ("t0",) and d.ops(), kind
        if want is not None:
            assert d.ops() == want, kind
    by_kind = {d.kind: d for d in log}
    assert {op.principal for op in by_kind["sync"].ops() if hasattr(op, "inactive") and op.inactive} == {"user:u2"}
    assert {type(op).__name__ for op in by_kind["remove_role"].ops()} == {"RoleDef", "Rule", "Edge"}
    d = log[1]
    good = json.loads(d.detail())
    bad = [
        (0, d.ts, d.kind, d.detail()),
        (True, d.ts, d.kind, d.detail()),
        (d.version, "now", d.kind, d.detail()),
        (d.version, d.ts, "", d.detail()),
        (d.version, d.ts, "x" * 33, d.detail()),
        (d.version, d.ts, d.kind, "{"),
        (d.version, d.ts, d.kind, None),
        (d.version, d.ts, d.kind, "[]"),
        (d.version, d.ts, d.kind, json.dumps({**good, "extra": 1})),
        (d.version, d.ts, d.kind, json.dumps({**good, "tenants": []})),
        (d.version, d.ts, d.kind, json.dumps({**good, "tenants": "t0"})),
        (d.version, d.ts, d.kind, json.dumps({**good, "users": [1]})),
        (d.version, d.ts, d.kind, json.dumps({**good, "added": [["p", "r9", "t0", "dept:hr", "read", "maybe", None]]})),
        (d.version, d.ts, d.kind, json.dumps({**good, "added": [["p", "r9", "t0", "dept:hr", "read", "allow", "soon"]]})),
        (d.version, d.ts, d.kind, json.dumps({**good, "added": [["q", "r9", "t0", "x", None, None, None]]})),
        (d.version, d.ts, d.kind, json.dumps({**good, "added": [["g", "user:u1", "r9"]]})),
        (d.version, d.ts, d.kind, json.dumps({**good, "removed": [["role", "t0"]]})),
        (d.version, d.ts, d.kind, json.dumps({**good, "removed": {}})),
    ]
    for args in bad:
        with pytest.raises(MalformedRecord):
            parse(*args)


def test_a_record_whose_typed_changes_reach_past_its_scope_drops_the_tenant(pair) -> None:
    """The catch-up checks a record's scope against its typed changes: an assignment of
    a user the scope leaves out (a damaged or hostile record) drops every cached bitmap
    of the tenant instead of leaving that user's stale; a malformed record means a
    full reload — and the answers equal casbin's either way."""
    rag, other, _url, _tmp = pair
    _views(rag)
    assert other("policy.assign_user", "u1", "r0", "t0") == {"ok": True}
    with db.transaction(rag._engine, "test: narrow the record") as conn:
        L = db.policy_log.c
        v, detail = conn.execute(select(L.version, L.detail).order_by(L.version.desc())).first()
        conn.execute(update(db.policy_log).where(L.version == v).values(detail=json.dumps({**json.loads(detail), "users": ["u2"]})))
    cached = rag.compiler.visible("u0", "t0")
    mine = _views(rag)
    assert rag.policy.full_reloads == 0 and mine == _enforced(rag) and mine[("t0", "u1")]
    assert rag.compiler.visible("u0", "t0") is not cached, "the record's own scope was trusted: the tenant was not dropped"
    assert other("policy.assign_user", "u2", "r0", "t0") == {"ok": True}
    with db.transaction(rag._engine, "test: damage the record") as conn:
        conn.execute(update(db.policy_log).where(db.policy_log.c.version == v + 1).values(detail="{not json"))
    mine = _views(rag)
    assert rag.policy.full_reloads == 1 and mine == _enforced(rag) and mine[("t0", "u2")]


def test_a_records_scope_is_checked_row_by_row() -> None:
    """Each kind of row a record may hold, inside and outside the scope it records."""
    from permrag.policy.records import Delta

    def scope(*rows: tuple, roles=("r0",), users=("u0",)):
        return Delta(1, 0.0, "x", ("t0",), roles, users, tuple(rows)).scope()

    narrow = ({"r0"}, {"u0"})
    inside = [
        ("p", "r0", "t0", "*", "read", "allow", None),
        ("g", "r0", "r1", "t0", None, None, None),  # r0 inherits r1
        ("g", "user:u0", "r5", "t0", None, None, None),
        ("g", "user:u0", "group:g", "t0", None, None, None),
        ("g", "group:a", "group:b", "t0", None, None, None),
        ("g", "group:a", "r5", "t0", None, None, None),
        ("g", "agent:bot", "r5", "t0", None, None, None),
        ("ident", "group:a", "t0", "Sales", None, None, None),
        ("ident", "user:u0", "t0", "", "inactive", None, None),
        ("role", "t0", "r7"),
    ]
    outside = [
        ("p", "r1", "t0", "*", "read", "deny", None),
        ("g", "r1", "r0", "t0", None, None, None),
        ("g", "user:u1", "r0", "t0", None, None, None),
        ("g", "user:u1", "group:g", "t0", None, None, None),
        ("ident", "user:u1", "t0", "", "inactive", None, None),
        ("acl", "/f", "t0", "user:u0", "allow", None, None),
        ("noinh", "/f", "t0", "", None, None, None),
    ]
    assert scope(*inside) == narrow
    for row in outside:
        assert scope(*inside, row) == (None, None), row
    assert scope(*inside, roles=None) == (None, None) and scope(users=None) == (None, None)


def _stored(rag: PermRAG) -> dict[str, list]:
    """Every tenant's rows as a full load reads them (the reference)."""
    from permrag.policy.persist import read_all, rows_of

    with db.reading(rag._engine, "test") as conn:
        return {t: sorted(rows_of(tp, t), key=repr) for t, tp in read_all(conn).items()}


def _copy(rag: PermRAG) -> dict[str, list]:
    from permrag.policy.persist import rows_of

    return {t: sorted(rows_of(rag.policy.tenant(t), t), key=repr) for t in rag.policy.tenants()}


def test_every_kind_of_change_leaves_the_writer_and_a_follower_equal_to_the_store(tmp_path) -> None:
    """Changes are data (policy/records.py ``Change``) whose logged rows every
    process applies: after each kind of change — a replacing import and SCIM
    writes too — the writing process's copy and another copy that caught up by
    the deltas alone both equal a full read of the store, row for row."""
    from permrag.policy.provisioned import GroupFields, UserFields

    rag = PermRAG.open(tmp_path / "a", catalog_only=True, create=True)
    follower = PermRAG.open(tmp_path / "a", catalog_only=True)
    try:
        rag.add_documents(_docs())
        for r in ROLES:
            rag.policy.add_role(r, "t0")
        reloads = follower.policy.full_reloads
        steps = [call for _, call, _ in _steps_of_every_kind(rag)]
        prov = rag.identity.provisioning()
        steps += [
            lambda: prov.create_group(GroupFields("eng", members=(("User", prov.create_user(UserFields("bo.c"), "t0").id),)), "t0"),
            lambda: prov.delete_group(prov.groups("t0")[0].id, "t0"),
            lambda: prov.delete_user(prov.users("t0")[0].id, "t0"),
            lambda: rag.identity.set_folder_acl("/hr", allow=["user:u0"], deny=["user:u1"], inherit=False, allow_unknown=True, tenant="t0"),
            lambda: rag.identity.set_folder_acl("/hr", allow=["user:u0"], replace=True, allow_unknown=True, tenant="t0"),
            lambda: rag.policy.grant("r0", "dept:hr", "t0", expires_at=4e9),
            lambda: rag.policy.grant("r0", "dept:hr", "t0"),
            lambda: rag.policy.import_text("".join(f"p, r7, t0, doc:x{n}, read, allow\ng, user:v{n}, r7, t0\n" for n in range(40)), allow_unknown=True),
            lambda: rag.policy.import_text("p, r5, t0, *, read, allow\ng, user:u0, r5, t0\n", replace=True),  # many removals of a shape: read by tenant
            lambda: rag.policy.import_text("p, r6, t1, *, read, allow\n"),
        ]
        for i, step in enumerate(steps):
            step()
            follower.policy.refresh()
            stored = _stored(rag)
            assert _copy(rag) == stored, f"the writer's copy after step {i}"
            assert _copy(follower) == stored, f"the follower's copy after step {i}"
            assert follower.policy.version == rag.policy.version
        assert follower.policy.full_reloads == reloads, "the follower caught up by deltas only"
    finally:
        follower.close()
        rag.close()
