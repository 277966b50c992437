"""Agents acting for users (issue 39): a delegated request sees the rows the
user *and* every agent may read.

The oracle test holds the compiled (user, agent) bitmaps to an independent
reference: casbin's enforce over the same roles, groups and assignments
(agents and users both casbin subjects), with document ACL entries checked
against the principals casbin says each subject holds, intersected per pair.
The search tests compare delegated searches, fetches, explanations and audit
records with that intersection on Milvus Lite.
"""

from __future__ import annotations

import random
import tempfile

import casbin
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from permrag import PermRAG
from permrag.errors import NotReadableError, PermragError

from ..conftest import MODEL, examples, oracle_selector_match
from ..worlds import random_selector

SETTINGS = settings(max_examples=examples(6), deadline=None, suppress_health_check=list(HealthCheck))
TENANTS = ["default", "t2"]
DEPTS = ["kb", "hr", "eng", "fin"]


def make_world(seed: int) -> dict:
    """Documents (some with ACLs naming users, agents, groups, roles), roles with
    rules and inheritance, users and agents holding roles and groups."""
    rng = random.Random(seed)
    w: dict = {"docs": [], "rules": [], "inherit": [], "edges": [], "roles": {}, "users": ["u0", "u1", "u2", "a0"], "agents": ["a0", "a1", "a2"]}
    groups = ["g0", "g1", "g2"]
    for t in TENANTS:
        w["roles"][t] = [f"r{i}" for i in range(5)]
        for i in range(5):
            w["rules"] += [(f"r{i}", t, random_selector(rng, []), "allow" if rng.random() < 0.75 else "deny") for _ in range(rng.randint(1, 3))]
        w["inherit"] += [(f"r{i}", f"r{i - 1}", t) for i in range(1, 5) if rng.random() < 0.4]
        for who in [f"user:{u}" for u in w["users"]] + [f"agent:{a}" for a in w["agents"]]:
            for r in rng.sample(w["roles"][t], k=rng.randint(0, 2)):
                w["edges"].append((who, r, t))
            for g in rng.sample(groups, k=rng.randint(0, 1)):
                w["edges"].append((who, f"group:{g}", t))
        w["edges"] += [(f"group:{g}", rng.choice(w["roles"][t]), t) for g in groups if rng.random() < 0.7]
        if rng.random() < 0.5:
            w["edges"].append(("group:g1", "group:g0", t))
        names = [f"user:{u}" for u in w["users"]] + [f"agent:{a}" for a in w["agents"]] + [f"group:{g}" for g in groups] + ["role:r1", "r2"]
        for i in range(30):
            doc = {"external_id": f"{t}-d{i}", "tenant": t, "text": f"doc {i} of {t}", "attrs": {"dept": rng.choice(DEPTS), "cls": rng.choice(["public", "internal", "secret"])}}
            if rng.random() < 0.4:
                doc["acl"] = {"allow": rng.sample(names, k=rng.randint(1, 2)), "deny": rng.sample(names, k=rng.randint(0, 1))}
            w["docs"].append(doc)
    return w


def apply(rag: PermRAG, w: dict) -> None:
    rag.add_documents(w["docs"])
    for t, roles in w["roles"].items():
        for r in roles:
            rag.policy.add_role(r, tenant=t)
    for role, t, sel, eft in w["rules"]:
        (rag.policy.grant if eft == "allow" else rag.policy.deny)(role, sel, tenant=t)
    for role, parent, t in w["inherit"]:
        rag.policy.inherit(role, parent, tenant=t)
    for who, obj, t in w["edges"]:
        kind, _, name = who.partition(":")
        if obj.startswith("group:"):
            rag.identity.add_member(obj[len("group:") :], who, t, allow_unknown=True)
        elif kind == "group":
            rag.identity.assign_group(name, obj, t, allow_unknown=True)
        elif kind == "agent":
            rag.policy.assign_agent(name, obj, t)
        else:
            rag.policy.assign_user(name, obj, t)


class Reference:
    """casbin over the world's rules, with allow and deny rules in enforcers of their own,
    and ACL entries checked against the principals casbin gives each subject."""

    def __init__(self, w: dict) -> None:
        self.w = w
        self.seen: dict[tuple[str, str], set[str]] = {}
        self.allow, self.deny = casbin.Enforcer(str(MODEL)), casbin.Enforcer(str(MODEL))
        for e in (self.allow, self.deny):
            e.add_function("selectorMatch", lambda row, dom, sel: oracle_selector_match(row, dom, sel))
        for role, t, sel, eft in w["rules"]:
            (self.allow if eft == "allow" else self.deny).add_policy(role, t, sel, "read", "allow")
        for e in (self.allow, self.deny):
            for role, parent, t in w["inherit"]:
                e.add_grouping_policy(role, parent, t)
            for who, obj, t in w["edges"]:
                e.add_grouping_policy(who, obj, t)

    def principals(self, subject: str, tenant: str) -> set[str]:
        held = set(self.allow.get_implicit_roles_for_user(subject, tenant))
        return {subject} | {h for h in held if h.startswith("group:")} | {f"role:{h}" for h in held if not h.startswith("group:")}

    def reads(self, subject: str, doc: dict) -> bool:
        t = doc["tenant"]
        mine = self.principals(subject, t)
        acl = doc.get("acl") or {}
        norm = lambda p: p if ":" in p else f"role:{p}"  # noqa: E731  (a bare ACL name is a role)
        allowed = self.allow.enforce(subject, t, doc, "read") or any(norm(p) in mine for p in acl.get("allow", []))
        denied = self.deny.enforce(subject, t, doc, "read") or any(norm(p) in mine for p in acl.get("deny", []))
        return allowed and not denied

    def visible(self, subjects: list[str], tenant: str) -> set[str]:
        """What every one of ``subjects`` may read (each subject's set computed once)."""
        for s in subjects:
            if (s, tenant) not in self.seen:
                self.seen[(s, tenant)] = {d["external_id"] for d in self.w["docs"] if d["tenant"] == tenant and self.reads(s, d)}
        return set.intersection(*(self.seen[(s, tenant)] for s in subjects))


def ids(rag: PermRAG, bitmap) -> set[str]:
    return {r.external_id for r in rag.rows(bitmap)}


def check(rag: PermRAG, ref: Reference, w: dict) -> None:
    for t in TENANTS:
        for u in w["users"] + ["nobody"]:
            for a in w["agents"] + ["ghost"]:
                got = ids(rag, rag.snapshot(u, t, agent=a).visible)
                assert got == ref.visible([f"user:{u}", f"agent:{a}"], t), (u, a, t)
            assert ids(rag, rag.snapshot(u, t, agent=["a1", "a2"]).visible) == ref.visible([f"user:{u}", "agent:a1", "agent:a2"], t)
        for a in w["agents"]:
            assert len(rag.visible(f"agent:{a}", t)) == 0  # an agent's id used as a user reads nothing
        # user a0 and agent a0 are different principals: the user's view is its own
        assert ids(rag, rag.visible("a0", t)) == ref.visible(["user:a0"], t)


@SETTINGS
@given(seed=st.integers(0, 2**32))
def test_delegated_bitmaps_equal_user_and_agent_reference(seed: int) -> None:
    w = make_world(seed)
    rng = random.Random(seed + 1)
    with tempfile.TemporaryDirectory() as home, PermRAG.open(home, catalog_only=True) as rag:
        apply(rag, w)
        ref = Reference(w)
        check(rag, ref, w)
        for _ in range(3):  # changes after the caches are warm: every (user, agent) answer follows
            t, agent, role = rng.choice(TENANTS), rng.choice(w["agents"]), f"r{rng.randint(0, 4)}"
            op = rng.choice(["assign", "unassign", "grant"])
            if op == "assign" and rag.policy.assign_agent(agent, role, t):
                w["edges"].append((f"agent:{agent}", role, t))
            elif op == "unassign" and (f"agent:{agent}", role, t) in w["edges"]:
                rag.policy.unassign_agent(agent, role, t)
                w["edges"].remove((f"agent:{agent}", role, t))
            elif op == "grant":
                sel = random_selector(rng, [])
                if rag.policy.grant(role, sel, tenant=t):
                    w["rules"].append((role, t, sel, "allow"))
            ref = Reference(w)
            check(rag, ref, w)
        # policy export → import into a fresh store gives the same delegated views
        text = rag.policy.export_csv()
        assert "g, agent:" in text
        with tempfile.TemporaryDirectory() as home2, PermRAG.open(home2, catalog_only=True) as again:
            again.add_documents(w["docs"])
            again.policy.import_text(text)
            for t in TENANTS:
                for u in w["users"]:
                    assert ids(again, again.snapshot(u, t, agent="a1").visible) == ids(rag, rag.snapshot(u, t, agent="a1").visible)
            for t in TENANTS:  # policy check says the same of both
                assert {(f["kind"], f.get("principal")) for f in again.lint(t)} == {(f["kind"], f.get("principal")) for f in rag.lint(t)}


# ---------------------------------------------------------------------- the worked example, end to end on Milvus Lite
KB = [{"external_id": f"kb-{i}", "text": f"How to reset a password, part {i}.", "attrs": {"space": "kb"}} for i in range(6)]
HR = [{"external_id": f"hr-{i}", "text": f"Salary review of employee {i}, password policy.", "attrs": {"space": "hr"}} for i in range(4)]
ENG = [{"external_id": f"eng-{i}", "text": f"Design note {i} on password hashing.", "attrs": {"space": "eng"}} for i in range(4)]
BOT_ACL = [{"external_id": "bot-only", "text": "A password note only the bot is named on.", "attrs": {"space": "x"}, "acl": {"allow": ["agent:support-bot"]}}]


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    home = tmp_path_factory.mktemp("agents") / "home"
    rag = PermRAG.open(home, encoder="hash")
    rag.add_documents(KB + HR + ENG + BOT_ACL)
    p = rag.policy
    for role, sel in (("kb-reader", "space:kb"), ("hr", "space:hr"), ("employee", "space:kb"), ("eng", "space:eng")):
        p.add_role(role)
        p.grant(role, sel)
    p.assign_user("erin", "employee")
    p.assign_user("erin", "hr")
    p.assign_user("sam", "eng")
    p.assign_agent("support-bot", "kb-reader")
    rag.identity.add_member("helpers", "agent:support-bot", allow_unknown=True)
    rag.identity.assign_group("helpers", "eng")
    yield rag
    rag.close()


def test_worked_example_support_agent_sees_only_the_intersection(lite) -> None:
    rag = lite
    alone = {h.external_id for h in rag.search("password", user="erin", k=50, mode="dense")}
    bot = {r.external_id for r in rag.rows(rag.access.agent_visible("support-bot", "default"))}
    assert alone == {d["external_id"] for d in KB + HR} and bot == {d["external_id"] for d in KB + ENG + BOT_ACL}
    through = rag.search("password", user="erin", k=50, mode="dense", agent="support-bot")
    assert {h.external_id for h in through} == alone & bot == {d["external_id"] for d in KB}
    top = rag.search("password", user="erin", k=3, mode="dense", agent="support-bot")
    assert [h.external_id for h in top] == [h.external_id for h in through][:3]  # the same ranking, cut at k
    for mode in ("hybrid", "keyword"):
        assert {h.external_id for h in rag.search("password", user="erin", k=50, mode=mode, agent="support-bot")} <= alone & bot
    import asyncio

    assert [h.row_id for h in asyncio.run(rag.asearch("password", user="erin", k=50, mode="dense", agent="support-bot"))] == [h.row_id for h in through]
    many = rag.search_many(["password", "reset"], user="erin", k=50, mode="dense", agent="support-bot")
    assert all({h.external_id for h in hs} <= alone & bot for hs in many)
    assert {h.external_id for h in rag.retrieve("password", user="erin", k=20, candidates=20, agent="support-bot")} <= alone & bot
    assert {h.external_id for h in rag.similar("kb-0", user="erin", k=20, agent="support-bot")} <= alone & bot - {"kb-0"}
    rec = rag.recommend(rag.encoder.encode(["password", "password"]), users=["erin", "sam"], k=20, agent="support-bot")
    assert {h.external_id for h in rec["erin"]} <= alone & bot and {h.external_id for h in rec["sam"]} == {d["external_id"] for d in ENG}


def test_fetch_can_read_and_explain_through_an_agent(lite) -> None:
    rag = lite
    assert rag.fetch("kb-1", user="erin", agent="support-bot")[0].external_id == "kb-1"
    for hidden in ("hr-1", "bot-only", "no-such"):
        with pytest.raises(NotReadableError):
            rag.fetch(hidden, user="erin", agent="support-bot")
        assert not rag.can_read("erin", hidden, agent="support-bot")
    assert rag.can_read("erin", "hr-1") and rag.can_read("erin", "kb-1", agent="support-bot")
    assert not rag.can_read("erin", "kb-1", agent="other-bot")  # an unknown agent sees nothing
    assert not rag.can_read("nobody", "kb-1", agent="support-bot")  # and so does an unknown user
    e = rag.explain("erin", "hr-1", agent="support-bot")
    assert not e.visible and e.decision == "delegated" and [p.visible for p in e.parties] == [True, False]
    assert "erin → hr" in str(e) and "agent:support-bot CANNOT" in str(e)
    e = rag.explain("erin", "kb-1", agent="support-bot")
    assert e.visible and "support-bot → kb-reader" in str(e) and e.to_dict()["parties"][1]["user"] == "agent:support-bot"
    e = rag.explain("sam", "eng-1", agent="support-bot")
    assert e.visible and "group:helpers" in str(e.parties[1])  # the agent's path through its group
    seen = rag.who_can_see("bot-only")
    assert seen["agents"] == ["support-bot"] and seen["users"] == []
    assert rag.who_can_see("kb-2")["agents"] == ["support-bot"]


def test_every_delegated_audit_record_names_user_and_agent(lite) -> None:
    rag = lite
    rag.search("password", user="erin", k=2, agent="support-bot")
    with pytest.raises(NotReadableError):
        rag.fetch("hr-0", user="erin", agent="support-bot")
    rag.can_read("erin", "kb-0", agent="support-bot")
    rag.search("password", user="erin", k=2, agent=["support-bot", "planner"])
    rag.search("password", user="erin", k=2)
    recs = rag.audit_log(limit=5)
    assert [(r["event"], r["user"], r["agent"]) for r in recs] == [
        ("search", "erin", None),
        ("search", "erin", "support-bot"),
        ("check", "erin", "support-bot"),
        ("fetch", "erin", "support-bot"),
        ("search", "erin", "support-bot"),
    ]
    assert recs[1]["agents"] == ["support-bot", "planner"] and recs[1]["rows"] == [[]]  # planner holds nothing: the chain sees nothing
    assert recs[3]["refused"] is True
    assert all(r["agent"] == "support-bot" for r in rag.audit_log(agent="support-bot", limit=50))


def test_agents_are_a_namespace_of_their_own(lite, tmp_path) -> None:
    rag = lite
    assert len(rag.search("password", user="agent:support-bot", k=10)) == 0  # an agent id used as a user reads nothing
    assert len(rag.search("password", user="support-bot", k=10)) == 0
    with PermRAG.open(tmp_path / "h", catalog_only=True) as other:
        other.policy.add_role("r")
        for bad in ("agent:x", "user:x", "Agent:x", "agent：x"):
            with pytest.raises(PermragError):
                other.policy.assign_agent(bad, "r")
        with pytest.raises(PermragError):
            other.policy.assign_user("agent:x", "r")  # a user id never names an agent
        with pytest.raises(PermragError):
            other.policy.assign_agent("x", "no-such-role")
        with pytest.raises(PermragError):
            other.snapshot("u", agent=[])
        assert other.policy.agents() == [] and other.policy_version == 1  # refused changes changed nothing


def test_the_docs_agents_example_runs_as_written(tmp_path) -> None:
    import subprocess
    import sys

    from tests.system.test_docs import blocks, env_for

    (code,) = blocks("agents")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_for(tmp_path, PERMRAG_ENCODER="hash"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[0] == "['hr-salaries', 'kb-reset', 'kb-vpn']" and lines[1] == "['kb-reset', 'kb-vpn']" and lines[2] == "False"
    assert lines[3].startswith("erin acting through agent:support-bot CANNOT read 'hr-salaries'") and "erin → hr" in lines[3]
    assert "'agents': ['support-bot']" in lines[4] and lines[5] == "support-bot"


@pytest.mark.slow  # a subprocess, a stress run or a timed wait: left out by make test-fast
def test_agent_commands(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    home = tmp_path / "h"
    with PermRAG.open(home, encoder="hash") as rag:
        rag.add_documents(KB[:3] + HR[:2])
        for role, sel in (("employee", "space:kb"), ("hr", "space:hr"), ("kb-reader", "space:kb")):
            rag.policy.add_role(role)
            rag.policy.grant(role, sel)
        rag.policy.assign_user("erin", "employee")
        rag.policy.assign_user("erin", "hr")
    permrag = str(Path(sys.executable).parent / "permrag")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([permrag, *args, "--home", str(home)], capture_output=True, text=True, timeout=120)

    done = cli("agent", "assign", "support-bot", "kb-reader")
    assert done.returncode == 0 and "agent 'support-bot' holds 'kb-reader'" in done.stdout, done.stderr
    assert json.loads(cli("agent", "list", "--json").stdout) == [{"agent": "support-bot", "roles": ["kb-reader"]}]
    shown = cli("agent", "show", "support-bot", "--json")
    assert json.loads(shown.stdout)["visible_rows"] == 3, shown.stderr
    hits = json.loads(cli("search", "password", "--as", "erin", "--agent", "support-bot", "--k", "10", "--json").stdout)
    assert {h["external_id"] for h in hits} == {"kb-0", "kb-1", "kb-2"}
    why = cli("explain", "hr-0", "--as", "erin", "--agent", "support-bot")
    assert why.returncode == 0 and "CANNOT" in why.stdout and "erin → hr" in why.stdout
    logged = json.loads(cli("audit", "--agent", "support-bot", "--json").stdout)
    assert [(r["event"], r["user"], r["agent"]) for r in logged] == [("search", "erin", "support-bot")]
    for args, message in (
        (("agent", "assign", "agent:x", "kb-reader"), "starts like a principal"),
        (("search", "password", "--as", "erin", "--agent", "suport-bot"), "unknown agent 'suport-bot'"),
    ):
        res = cli(*args)
        assert res.returncode == 1 and message in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    gone = cli("agent", "unassign", "support-bot", "kb-reader")
    assert gone.returncode == 0 and "no longer holds 'kb-reader'" in gone.stdout


def test_identity_sync_deactivates_users_and_leaves_agents_alone(tmp_path) -> None:
    from ..integration.test_identity_sync import group, listing, user, write

    with PermRAG.open(tmp_path / "h", catalog_only=True) as rag:
        rag.add_documents([{"external_id": f"d{i}", "attrs": {"dept": "eng"}} for i in range(3)])
        rag.policy.add_role("reader")
        rag.policy.grant("reader", "dept:eng")
        people = [user("u1", "ann"), user("u2", "bo"), group("g1", "eng", "u1", "u2")]
        rag.identity.sync(write(tmp_path / "a.json", listing(people)))
        rag.identity.assign_group("g1", "reader")
        rag.identity.add_member("g1", "agent:bot", allow_unknown=True)  # an agent in a group the provider owns
        assert ids(rag, rag.snapshot("u1", agent="bot").visible) == {"d0", "d1", "d2"}
        report = rag.identity.sync(write(tmp_path / "b.json", listing([user("u1", "ann", active=False), *people[1:]])))
        assert report.deactivated == ("u1",) and not report.removed  # the agent's membership is not the provider's to remove
        assert len(rag.snapshot("u1", agent="bot").visible) == 0  # a deactivated user sees nothing, with any agent
        assert ids(rag, rag.snapshot("u2", agent="bot").visible) == {"d0", "d1", "d2"}
        e = rag.explain("u1", "d0", agent="bot")
        assert not e.visible and e.parties[0].decision == "deactivated" and e.parties[1].visible


def test_langchain_and_llamaindex_take_the_agent_like_the_user(lite) -> None:
    import re

    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from permrag.integrations.langchain import as_retriever, knowledge_tool, permission_tool, permissioned
    from permrag.integrations.llamaindex import retriever

    from ..integration.test_langchain import FakeToolModel

    rag = lite
    kb = {d["external_id"] for d in KB}
    got = {d.metadata["external_id"] for d in as_retriever(rag, user="erin", agent="support-bot", k=20, mode="dense").invoke("password")}
    assert got == kb
    inner = as_retriever(rag, user="erin", k=20, mode="dense")  # sees HR too: the wrapper must take the agent's part away
    assert {d.metadata["external_id"] for d in permissioned(inner, rag, user="erin", agent="support-bot", k=20).invoke("password")} == kb
    assert {n.node.metadata["external_id"] for n in retriever(rag, user="erin", agent="support-bot", k=20, mode="dense").retrieve("password")} == kb
    tool = knowledge_tool(rag, k=20)
    assert set(tool.args) == {"query"}  # the model can name neither the user nor the agent
    text = tool.invoke({"query": "salary password"}, config={"configurable": {"user": "erin", "agent": "support-bot"}})
    assert set(re.findall(r"\[([^\]]+)\]", text)) <= kb and "Salary" not in text
    check = permission_tool(rag)
    conf = {"configurable": {"user": "erin", "agent": "support-bot"}}
    assert check.invoke({"document_id": "hr-0"}, config=conf).startswith("no") and check.invoke({"document_id": "kb-0"}, config=conf).startswith("yes")
    assert check.invoke({"document_id": "hr-0"}, config={"configurable": {"user": "erin"}}).startswith("yes")  # erin alone may
    call = [{"name": "search_knowledge_base", "args": {"query": "salary review password"}, "id": "c1"}]
    model = FakeToolModel(messages=iter([AIMessage(content="", tool_calls=call), AIMessage(content="done")]))
    out = create_agent(model, tools=[tool], context_schema=dict).invoke({"messages": [HumanMessage("salaries?")]}, context={"user": "erin", "agent": "support-bot"})
    text = next(m.content for m in out["messages"] if isinstance(m, ToolMessage))
    cited = set(re.findall(r"\[([^\]]+)\]", text))
    assert cited and cited <= kb and "Salary" not in text


def test_policy_files_carry_agents(tmp_path) -> None:
    with PermRAG.open(tmp_path / "a", catalog_only=True) as rag:
        rag.policy.add_role("kb")
        rag.policy.grant("kb", "space:kb")
        rag.policy.assign_agent("bot", "kb", expires_at="2099-01-01T00:00:00Z")
        rag.identity.set_folder_acl("/kb", allow=["agent:bot"], deny=["agent:other"], allow_unknown=True)  # other: named only here
        text = rag.policy.export_csv()
    assert "g, agent:bot, kb, default, 2099-01-01T00:00:00Z" in text and "ident, agent:other, default, " in text
    with PermRAG.open(tmp_path / "b", catalog_only=True) as again:
        again.policy.import_text(text)  # no allow_unknown needed: the file declares what it names
        assert again.policy.export_csv().split("\n", 1)[1] == text.split("\n", 1)[1]  # the same file, version line aside
        assert [(str(r), r.expires_at) for r in again.policy.roles_of_agent("bot")] == [("kb", 4070908800.0)]
        for bad in ("g, agent:, kb, default", "g, Agent:x, kb, default", "g, agent:user:x, kb, default", "ident, agent:bot, default, Bot Label"):
            with pytest.raises(PermragError):
                again.policy.import_text(bad)
        assert again.policy.export_csv().split("\n", 1)[1] == text.split("\n", 1)[1]  # refused files changed nothing


def test_agents_on_sqlite_and_postgresql(home, db_url) -> None:
    with PermRAG.open(home, database_url=db_url, catalog_only=True) as rag:
        rag.add_documents([{"external_id": f"{s}-{i}", "attrs": {"space": s}} for s in ("kb", "hr") for i in range(3)])
        for role, sel in (("kb", "space:kb"), ("all", "*")):
            rag.policy.add_role(role)
            rag.policy.grant(role, sel)
        rag.policy.assign_user("erin", "all")
        rag.policy.assign_agent("bot", "kb")
        assert ids(rag, rag.snapshot("erin", agent="bot").visible) == {"kb-0", "kb-1", "kb-2"}
        assert rag.can_read("erin", "kb-0", agent="bot") and not rag.can_read("erin", "hr-0", agent="bot")
        assert [(r["user"], r["agent"], r["readable"]) for r in rag.audit_log(agent="bot")] == [("erin", "bot", False), ("erin", "bot", True)]
        text = rag.policy.export_csv()
    with PermRAG.open(home, database_url=db_url, catalog_only=True) as again:  # a second open reads the agents back
        assert again.policy.agents() == ["bot"] and again.policy.export_csv() == text
        again.policy.unassign_agent("bot", "kb")
        assert len(again.snapshot("erin", agent="bot").visible) == 0
