"""The exposure report (issue 38, point 4): audited serves of rows the user may
no longer read, each with the path that allowed it when it was served.

The reference is rebuilt independently: the audit log read through
``rag.audit_log`` (every serve's user, version and rows), casbin's ``enforce``
over the stored rules for what each user may read now, and the explanations
and bitmaps this test wrote down at the moment of each serve."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import delete

from permrag import ArgumentError, PermRAG, UnknownRowError
from permrag.cli import main
from permrag.embed import HashEncoder
from permrag.storage import db


def _docs() -> list[dict]:
    return [{"external_id": f"d{i}", "text": f"note {i} budget", "attrs": {"dept": ["eng", "hr"][i % 2], "lvl": str(i % 3)}} for i in range(12)]


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """Searches and fetches by three users while access changes under them."""
    rag = PermRAG.open(tmp_path_factory.mktemp("exp") / "home", encoder=HashEncoder(16), create=True)
    rag.add_documents(_docs())
    p = rag.policy
    p.add_role("eng")
    p.add_role("lvl0")
    p.grant("eng", "dept:eng")
    p.grant("lvl0", "lvl:0")
    p.assign_user("ann", "eng")
    p.assign_user("bob", "eng")
    p.assign_user("cy", "lvl0")
    said: dict[tuple[str, int, int], str] = {}  # (user, row, version) → explain() at the serve
    views: dict[int, dict[str, set[int]]] = {}

    def serve(user: str, fetch: str | None = None) -> None:
        hits = rag.fetch(fetch, user=user) if fetch else rag.search("budget", user=user, k=12, mode="dense")
        for h in hits:
            said[(user, h.row_id, hits.policy_version)] = str(rag.explain(user, h.external_id))
        views[hits.policy_version] = {u: set(rag.visible(u)) for u in ("ann", "bob", "cy")}

    serve("ann")
    serve("bob")
    serve("cy")
    mid = rag.policy_version
    p.deny("eng", "lvl:1")  # ann and bob lose the eng rows of level 1
    ended_deny = rag.policy_version
    serve("ann", "d0")
    serve("cy")
    p.unassign_user("cy", "lvl0")  # cy loses everything
    ended_cy = rag.policy_version
    serve("bob")
    yield rag, said, views, {"mid": mid, "deny": ended_deny, "cy": ended_cy}
    rag.close()


def _reference(rag: PermRAG, user: str | None = None, rows: set[int] | None = None) -> set[tuple[str, int, int, float]]:
    """(user, row, served version, time) of every audited serve of a row the user may not read now, by casbin."""
    e = rag.enforcer()
    recs = {r.row_id: r for r in rag.rows(rag.catalog.tenant("default").rows)}
    out = set()
    for a in rag.audit_log(limit=100000, user=user):
        if a["event"] not in ("search", "fetch", "recommend"):
            continue
        flat = [r for part in a.get("rows", []) for r in (part if isinstance(part, list) else [part])]
        for rid in flat:
            if rid in recs and (rows is None or rid in rows) and not e.enforce(a["user"], "default", recs[rid], "read"):
                out.add((a["user"], rid, a["policy_version"], a["time"]))
    return out


def test_the_report_matches_the_audit_log_and_casbin(story) -> None:
    rag, said, _views, v = story
    got = rag.exposure()
    assert {(e.user, e.row_id, e.served_version, e.time) for e in got} == _reference(rag)
    assert {e.user for e in got} == {"ann", "bob", "cy"}
    for e in got:
        assert e.path == said[(e.user, e.row_id, e.served_version)]  # how it was readable then, word for word
        assert e.decision == "allow" and e.late is False
        assert e.ended_version == (v["cy"] if e.user == "cy" else v["deny"])
        assert e.ended_at is not None and e.ended_at > e.time


def test_filters_by_user_document_and_time(story) -> None:
    rag, _said, _views, v = story
    by_user = rag.exposure(user="bob")
    assert {(e.user, e.row_id, e.served_version, e.time) for e in by_user} == _reference(rag, user="bob")
    doc = rag.row("d4")
    by_doc = rag.exposure(document="d4")
    assert by_doc and {(e.user, e.row_id, e.served_version, e.time) for e in by_doc} == _reference(rag, rows={doc.row_id})
    cut = max(e.time for e in rag.exposure()) + 1e-6
    assert rag.exposure(since=cut) == []
    later = [a["time"] for a in rag.audit_log(limit=100000) if a["policy_version"] >= v["deny"]]
    assert all(e.time >= min(later) for e in rag.exposure(since=min(later)))


def test_judged_against_an_older_version(story) -> None:
    """``version=``: the rows each user could not read at that version, by the bitmaps written down then."""
    rag, _said, views, v = story
    at = rag.exposure(version=v["deny"])
    want = set()
    for a in rag.audit_log(limit=100000):
        if a["event"] in ("search", "fetch"):
            flat = [r for part in a["rows"] for r in (part if isinstance(part, list) else [part])]
            want |= {(a["user"], r, a["policy_version"]) for r in flat if r not in views[v["deny"]][a["user"]]}
    assert {(e.user, e.row_id, e.served_version) for e in at} == want
    assert any(e.user == "ann" for e in at) and not any(e.user == "cy" for e in at)


def test_a_stale_serve_is_late(story) -> None:
    """A serve recorded at an old version after the change that ended it (a stale process's answer) is flagged."""
    rag, _said, _views, v = story
    row = rag.row("d4").row_id
    rag.audit.record("search", "ann", "default", v["mid"], {"rows": [[row]]})
    late = [e for e in rag.exposure(user="ann", document="d4") if e.served_version == v["mid"] and e.late]
    assert len(late) == 1 and late[0].ended_version == v["deny"]


def test_pruned_history_and_bad_input(story) -> None:
    rag, _said, _views, v = story
    with pytest.raises(UnknownRowError):
        rag.exposure(document="nope")
    for kw in ({"user": ""}, {"since": "yesterday"}, {"version": -1}, {"version": 10**6}, {"document": 3}):
        with pytest.raises(ArgumentError):
            rag.exposure(**kw)
    with db.transaction(rag._engine, "test: prune the oldest history") as conn:
        conn.execute(delete(db.policy_log).where(db.policy_log.c.version <= v["deny"]))  # v["mid"] can no longer be rebuilt
    got = rag.exposure(user="cy")
    old = [e for e in got if e.served_version == v["mid"]]
    assert old and all(e.path is None and e.decision == "history pruned" for e in old)
    assert all(e.path is not None for e in got if e.served_version == v["deny"]) and any(e.served_version == v["deny"] for e in got)
    with pytest.raises(ArgumentError, match="older than the retained policy history"):
        rag.exposure(version=1)


def test_cli_exposure(story) -> None:
    rag, *_ = story
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, ["--home", str(rag.settings.home), "exposure", *args])

    res = cli("--user", "bob", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == [e.to_dict() for e in rag.exposure(user="bob")]
    shown = cli("--document", "d4")
    assert shown.exit_code == 0 and "d4" in shown.output
    assert cli("--retention", "30").output.strip() == "policy history kept for 30 days" and rag.policy_history() == 30.0
    bad = cli("--document", "nope")
    assert bad.exit_code == 1 and bad.output.startswith("error: no row 'nope'") and "Traceback" not in bad.output
