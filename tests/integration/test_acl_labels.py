"""Document ACLs that name a label instead of an id (issue 33, points 1 and 6).

After a SCIM sync users and groups are keyed by the provider's id; a
file-share sidecar or an ACL set with a document naturally names
``group:contractors`` / ``user:bob``. A **deny** naming a label (no such id)
holds for the ids so labelled — every one of them when several share it
(fail closed) — and follows a rename; an **allow** never resolves by label.
``policy check`` lists each such principal with "did you mean". On SQLite
and PostgreSQL.
"""

from __future__ import annotations

import pytest

from permrag import PermRAG
from permrag.errors import MassRemovalError
from tests.integration.test_identity_sync import group, listing, open_store, readable, user, write

USERS = ["00u1", "00u2", "00u3"]


@pytest.fixture
def store(db_url, tmp_path):
    """(home, database URL): SQLite in the home, then a fresh PostgreSQL database."""
    return tmp_path / "home", db_url


def directory(*extra: dict, contractors: str = "contractors") -> list[dict]:
    """bob (00u1) is a contractor; alice (00u2) and carol (00u3) are staff."""
    return [user("00u1", "bob"), user("00u2", "alice"), user("00u3", "carol"),
            group("g-staff", "staff", "00u1", "00u2", "00u3"), group("g-123", contractors, "00u1"), *extra]  # fmt: skip


def setup(store, tmp_path, export: list[dict]) -> PermRAG:
    rag = open_store(store)
    rag.policy.add_role("reader")
    rag.policy.grant("reader", "dept:fin")
    rag.identity.sync(write(tmp_path / "d0.json", listing(export)))
    rag.identity.assign_group("g-staff", "reader")
    rag.add_documents([
        {"external_id": "ledger", "attrs": {"dept": "fin"}, "acl": {"deny": ["group:contractors"]}},
        {"external_id": "salaries", "attrs": {"dept": "fin"}, "acl": {"deny": ["user:bob"]}},
        {"external_id": "plan", "attrs": {"dept": "fin"}},
        {"external_id": "invite", "acl": {"allow": ["group:contractors", "user:carol"]}},  # allows by label: not applied
    ])  # fmt: skip
    return rag


ALL = {"ledger", "salaries", "plan"}


def test_a_deny_by_label_holds_and_an_allow_by_label_grants_nothing(store, tmp_path) -> None:
    rag = setup(store, tmp_path, directory())
    assert readable(rag, USERS) == {"00u1": {"plan"}, "00u2": ALL, "00u3": ALL}
    assert not rag.can_read("00u1", "ledger") and not rag.can_read("00u1", "salaries")
    why = rag.explain("00u1", "ledger")  # explain agrees with the bitmap and shows the label it went through
    assert not why.visible and why.decision == "deny" and "group:g-123 (contractors)" in str(why)
    assert rag.explain("00u1", "salaries").decision == "deny"
    assert not rag.explain("00u1", "invite").visible  # the allow by label is not applied
    # update_metadata: an ACL set later by label denies too, at once
    rag.update_metadata("plan", acl={"deny": ["group:contractors"]})
    assert readable(rag, USERS) == {"00u1": set(), "00u2": ALL, "00u3": ALL}
    # reopened (another process's view): the same answer
    rag.close()
    rag = open_store(store)
    assert readable(rag, USERS) == {"00u1": set(), "00u2": ALL, "00u3": ALL}
    rag.close()


def test_a_rename_moves_the_deny_by_label(store, tmp_path) -> None:
    rag = setup(store, tmp_path, directory())
    assert readable(rag, USERS)["00u1"] == {"plan"}  # caches filled before the rename
    # the provider renames g-123 and gives "contractors" to a new group holding alice
    rag.identity.sync(write(tmp_path / "d1.json", listing(directory(group("g-456", "contractors", "00u2"), contractors="former contractors"))))
    assert readable(rag, USERS) == {"00u1": {"ledger", "plan"}, "00u2": {"salaries", "plan"}, "00u3": ALL}
    assert rag.explain("00u2", "ledger").decision == "deny" and rag.can_read("00u1", "ledger")
    # bob renamed to robert: the deny naming "bob" names nobody now; a new bob is denied. g-456 goes:
    # a group that holds a deny by label is guarded like one that holds it by id
    d2 = write(tmp_path / "d2.json", listing([user("00u1", "robert"), user("00u2", "alice"), user("00u3", "bob"),
               group("g-staff", "staff", "00u1", "00u2", "00u3"), group("g-123", "former contractors", "00u1")]))  # fmt: skip
    with pytest.raises(MassRemovalError, match="g-456 \\(contractors\\), which hold"):
        rag.identity.sync(d2)
    rag.identity.sync(d2, allow_mass_removal=True)
    assert readable(rag, USERS) == {"00u1": ALL, "00u2": ALL, "00u3": {"ledger", "plan"}}
    rag.close()


def test_an_ambiguous_label_denies_every_id_that_bears_it(store, tmp_path) -> None:
    rag = setup(store, tmp_path, directory(group("g-999", "contractors", "00u3")))
    assert readable(rag, USERS) == {"00u1": {"plan"}, "00u2": ALL, "00u3": {"salaries", "plan"}}
    found = {f["principal"]: f for f in rag.lint() if f["kind"] == "unknown-principal"}
    assert found["group:contractors"]["label_of"] == ["group:g-123", "group:g-999"]
    assert "did you mean group:g-123 (contractors) or group:g-999 (contractors)?" in found["group:contractors"]["message"]
    assert "fail closed" in found["group:contractors"]["message"]
    rag.close()


def test_an_id_wins_over_a_label(tmp_path) -> None:
    """A group whose id is "contractors" (a store from before ids) is the one a deny of group:contractors names."""
    rag = setup((tmp_path / "home", None), tmp_path, directory(group("contractors", "old contractors", "00u3")))
    # the id's members: carol denied ledger, and the allow of invite is hers (by id); bob is denied salaries by label
    assert readable(rag, USERS) == {"00u1": {"ledger", "plan"}, "00u2": ALL, "00u3": {"salaries", "plan", "invite"}}
    assert "group:contractors" not in {f.get("principal") for f in rag.lint()}
    rag.close()


def test_policy_check_says_did_you_mean_and_what_applies(store, tmp_path) -> None:
    rag = setup(store, tmp_path, directory())
    rag.add_documents([{"external_id": "memo", "acl": {"allow": ["user:ghost"], "deny": ["group:nobody"]}}])
    found = {f["principal"]: f for f in rag.lint() if f["kind"] == "unknown-principal"}
    assert set(found) == {"group:contractors", "user:bob", "user:carol", "user:ghost", "group:nobody"}  # every principal that names no id
    carol = found["user:carol"]  # an allow by label: said, not applied
    assert not carol["deny_applied"] and "did you mean user:00u3 (carol)? Its allow is not applied" in carol["message"]
    both, bob = found["group:contractors"], found["user:bob"]
    assert both["label_of"] == ["group:g-123"] and both["deny_applied"]
    assert "did you mean group:g-123 (contractors)?" in both["message"]
    assert "Its deny is applied to group:g-123 by label" in both["message"] and "Its allow is not applied" in both["message"]
    assert bob["label_of"] == ["user:00u1"] and "did you mean user:00u1 (bob)?" in bob["message"] and "allow" not in bob["message"].split("?")[1]
    assert found["user:ghost"]["label_of"] == [] and "did you mean" not in found["user:ghost"]["message"]
    assert not found["group:nobody"]["deny_applied"]
    rag.close()


@pytest.mark.parametrize("effect", ["allow", "deny"])
def test_folder_acls_by_label_follow_the_same_rule(effect, tmp_path) -> None:
    """A folder ACL stored before the sync named the group by its name (allow_unknown); the sync then keys it by id."""
    rag = PermRAG.open(tmp_path / "home", catalog_only=True)
    rag.identity.set_folder_acl("/hr", **{effect: ["group:contractors"]}, allow_unknown=True)
    rag.policy.add_role("reader")
    rag.policy.grant("reader", "dept:fin")
    rag.identity.sync(write(tmp_path / "d.json", listing(directory())))
    rag.identity.assign_group("g-staff", "reader")
    rag.add_documents([{"external_id": "hr/x", "attrs": {"dept": "fin"}, "acl": {"folder": "/hr"}},
                       {"external_id": "hr/y", "acl": {"folder": "/hr"}}])  # fmt: skip
    expected = {"allow": {u: {"hr/x"} for u in USERS}, "deny": {"00u1": set(), "00u2": {"hr/x"}, "00u3": {"hr/x"}}}
    assert readable(rag, USERS) == expected[effect]  # hr/y: an allow by label grants it to no one
    rag.close()
