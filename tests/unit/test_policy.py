"""Policy store: changes, errors that change nothing, CSV, explain, casbin parity."""

from __future__ import annotations

import pytest

from permrag import PermRAG, PolicyCSVError, PolicyError, RoleCycleError, SelectorError, UnknownRoleError, UnknownSubjectError
from permrag.policy import MAX_DEPTH

from ..worlds import apply_world_policy, make_world


@pytest.fixture
def org(rag: PermRAG) -> PermRAG:
    rag.add_documents(
        [
            {"external_id": "eng-1", "attrs": {"dept": "eng", "cls": "internal"}},
            {"external_id": "eng-2", "attrs": {"dept": "eng", "cls": "secret"}},
            {"external_id": "hr-1", "attrs": {"dept": "hr", "cls": "internal"}},
            {"external_id": "all-1", "attrs": {"dept": ["eng", "hr"], "cls": "public"}},
            {"external_id": "memo#0", "attrs": {"dept": "legal"}, "parent": "memo"},
            {"external_id": "memo#1", "attrs": {"dept": "legal"}, "parent": "memo"},
            {"external_id": "sum", "derived_from": ["eng-1", "hr-1"]},
        ]
    )
    p = rag.policy
    for role in ("staff", "eng", "lead", "hr"):
        p.add_role(role)
    p.grant("staff", "cls:public")
    p.grant("eng", "dept:eng")
    p.deny("eng", "cls:secret")
    p.grant("lead", "doc:memo")
    p.grant("hr", "dept:h*")
    p.assign("eng", "staff")
    p.assign("lead", "eng")
    p.assign("alice", "eng")
    p.assign("bob", "lead")
    p.assign("bob", "hr")
    p.assign("carol", "staff")
    return rag


def names(rag: PermRAG, user: str, tenant: str = "default") -> set[str]:
    return {r.external_id for r in rag.rows(rag.visible(user, tenant))}


def test_hierarchy_deny_glob_doc_and_derived(org: PermRAG) -> None:
    assert names(org, "carol") == {"all-1"}
    assert names(org, "alice") == {"eng-1", "all-1"}
    assert names(org, "bob") == {"eng-1", "all-1", "hr-1", "memo#0", "memo#1", "sum"}
    assert names(org, "nobody") == set()
    assert names(org, "alice", "elsewhere") == set()


def test_revoke_is_visible_to_the_next_lookup(org: PermRAG) -> None:
    assert "hr-1" in names(org, "bob")
    v = org.policy_version
    org.policy.revoke("hr", "dept:h*")
    assert org.policy_version == v + 1
    assert names(org, "bob") == {"eng-1", "all-1", "memo#0", "memo#1"}
    org.policy.unassign("bob", "lead")
    assert names(org, "bob") == set()
    org.policy.remove_role("staff")
    assert names(org, "carol") == set() and "staff" not in org.policy.roles()


def test_bad_changes_raise_and_change_nothing(org: PermRAG) -> None:
    p = org.policy
    before = (org.policy_version, p.export_csv())
    bad = [
        (UnknownRoleError, lambda: p.grant("ghost", "*")),
        (UnknownRoleError, lambda: p.assign("dave", "ghost")),
        (UnknownRoleError, lambda: p.remove_role("ghost")),
        (SelectorError, lambda: p.grant("eng", "dept")),
        (SelectorError, lambda: p.grant("eng", "dept:")),
        (SelectorError, lambda: p.grant("eng", "bad attr:x")),
        (SelectorError, lambda: p.grant("eng", " dept:eng")),
        (RoleCycleError, lambda: p.assign("staff", "lead")),
        (RoleCycleError, lambda: p.assign("eng", "eng")),
        (UnknownSubjectError, lambda: p.unassign("alice", "hr")),
        (PolicyError, lambda: p.revoke("eng", "dept:sales")),
        (PolicyError, lambda: p.add_role("")),
    ]
    for err, call in bad:
        with pytest.raises(err):
            call()
    assert (org.policy_version, p.export_csv()) == before
    assert p.grant("eng", "dept:eng") is False  # already there: no change, no bump
    assert org.policy_version == before[0]


def test_hierarchy_depth_is_bounded_where_casbin_still_agrees(rag: PermRAG) -> None:
    rag.add_documents([{"external_id": "x"}])
    p = rag.policy
    for i in range(2 * MAX_DEPTH):
        p.add_role(f"r{i}")
    p.grant("r0", "*")
    top = 0
    with pytest.raises(RoleCycleError, match="deep"):
        for i in range(2 * MAX_DEPTH - 1):
            p.assign(f"r{i + 1}", f"r{i}")
            top = i + 1
    with pytest.raises(RoleCycleError, match="deep"):
        p.assign("deep-user", f"r{top}")
    p.assign("user", f"r{top - 1}")
    assert len(rag.visible("user")) == 1
    assert rag.enforcer().enforce("user", "default", rag.row("x"), "read") is True


def test_csv_roundtrip(org: PermRAG, tmp_path) -> None:
    path = tmp_path / "policy.csv"
    org.policy.export_csv(path)
    org.policy.add_role("orphan", tenant="other")
    org.policy.export_csv(path)
    with PermRAG.open(tmp_path / "second", catalog_only=True) as other:
        other.add_documents([{"external_id": "eng-1", "attrs": {"dept": "eng", "cls": "internal"}}])
        n = other.policy.import_csv(path)
        assert n > 0
        assert other.policy.export_csv().splitlines()[1:] == org.policy.export_csv().splitlines()[1:]
        assert other.policy.roles("other") == ["orphan"]
        assert names(other, "alice") == {"eng-1"}
        # importing again changes nothing
        v = other.policy_version
        other.policy.import_csv(path)
        assert other.policy.export_csv().splitlines()[1:] == org.policy.export_csv().splitlines()[1:]
        assert other.policy_version >= v


def test_csv_quoting_keeps_commas_and_quotes(rag: PermRAG, tmp_path) -> None:
    rag.policy.add_role('R&D, "Europe"')
    rag.policy.grant('R&D, "Europe"', "site:Paris, FR")
    path = tmp_path / "p.csv"
    rag.policy.export_csv(path)
    with PermRAG.open(tmp_path / "b", catalog_only=True) as other:
        other.policy.import_csv(path)
        assert other.policy.rules(tenant="default") == [('R&D, "Europe"', "site:Paris, FR", "allow")]


@pytest.mark.parametrize(
    "lines, line_no, fragment",
    [
        (["p, eng, default, dept:eng, read, allow", "p, eng, default, dept:eng"], 2, "needs"),
        (["g, alice, eng, default", "", "x, a, b"], 3, "unknown rule type"),
        (["p, eng, default, dept:eng, write, allow"], 1, "action"),
        (["p, eng, default, dept:eng, read, maybe"], 1, "effect"),
        (["p, eng, default, dept, read, allow"], 1, "selector"),
        (["g, a, b, default", "g, b, a, default"], 2, "cycle"),
        (['p, eng, default, "dept:eng, read, allow'], 1, "CSV"),
    ],
)
def test_malformed_csv_names_the_line_and_changes_nothing(rag: PermRAG, tmp_path, lines, line_no, fragment) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    v = rag.policy_version
    with pytest.raises(PolicyCSVError) as info:
        rag.policy.import_csv(path)
    assert info.value.line == line_no
    assert f"line {line_no}" in str(info.value) and fragment in str(info.value)
    assert rag.policy_version == v and rag.policy.roles() == []


def test_import_replace_and_tenant_filter(org: PermRAG, tmp_path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("p, viewer, default, *, read, allow\ng, zoe, viewer, default\n")
    org.policy.import_csv(path, replace=True)
    assert org.policy.roles() == ["viewer"]
    assert names(org, "alice") == set()
    assert len(names(org, "zoe")) == 7
    with pytest.raises(PolicyCSVError, match="line 1"):
        org.policy.import_csv(path, tenant="other")


def test_explain_names_path_and_rule(org: PermRAG) -> None:
    e = org.explain("bob", "eng-2")
    assert not e.visible and e.decision == "deny"
    assert e.path == ("bob", "lead", "eng") and e.rule.selector == "cls:secret"
    assert "bob → lead → eng" in str(e)
    e = org.explain("bob", "memo#1")
    assert e.visible and e.rule.selector == "doc:memo" and e.path == ("bob", "lead")
    e = org.explain("alice", "sum")
    assert not e.visible and e.decision == "derived" and "'hr-1'" in str(e)
    assert org.explain("nobody", "eng-1").decision == "unknown-user"
    assert org.explain("carol", "eng-1").decision == "no-rule"


def test_library_casbin_enforcer_agrees_with_bitmaps(rag: PermRAG) -> None:
    world = make_world(3, n_rows=200)
    rag.add_documents(world.docs)
    apply_world_policy(rag, world)
    enforcer = rag.enforcer()
    for t in world.tenants:
        plain = [r for r in rag.rows(rag.catalog.tenant_rows(t)) if not r.derived_from]
        for u in world.users[t][:3]:
            vis = rag.visible(u, t)
            for r in plain:
                assert enforcer.enforce(u, t, r, "read") == (r.row_id in vis)
