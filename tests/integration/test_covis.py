"""Co-visibility placement (placement/covis.py, ``partition_by="visibility"``,
and ``"visibility+acl"`` with rows' ACLs in the class key and signature):
classes that the same role rules (and ACL principals) select share a class group, so a role's
rows fill whole partitions and its search names them with no filter — and
placement never changes an answer: every search equals brute force over the
caller's rows, before and after the policy changes, on Milvus Lite and on a
real server, with two processes placing classes at once (PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from permrag import PermRAG
from permrag.domain.selectors import parse_selector
from permrag.embed import HashEncoder
from permrag.errors import ConfigError
from permrag.placement.layout import DEFAULT_GROUPS
from permrag.search import LITE, SERVER, AllowAll, Filter, Planner
from permrag.storage import db

from ..conftest import examples, open_backend
from ..integration.test_layout import (
    DEPTS,
    QUERIES,
    assert_exact_search,
    assert_top_k,
    docs_for,
    draw_role,
    placement,
    reference,
)

ROOT = Path(__file__).resolve().parents[2]
GROUPS = 80  # more than the fixture's signatures (68, ACLs included): each gets a group of its own
ROLES = {  # role → (allowed departments, denied levels)
    "eng": (DEPTS[0:5], []),
    "fin": (DEPTS[3:10], []),  # overlaps eng on d3, d4
    "big": (DEPTS[10:25], []),  # d25..d29: no attribute rule (the empty signature)
    "lvl": (DEPTS[0:1], ["2"]),  # d0 without level 2: level-2 classes carry its deny
}


def tokens(rag: PermRAG, attrs: dict, tenant: str = "default", acl=None) -> tuple[str, ...]:
    """The reference signature: every attribute rule that selects ``attrs``,
    found by matching each rule (not through the signer's index), and every
    principal the row's ACL names where the store places by ACLs too."""
    out = set()
    for role, sel, effect in rag.policy.tenant(tenant).rules():
        s = parse_selector(sel)
        if s.kind == "attr" and s.matches("", attrs):
            out.add(("+" if effect == "allow" else "-") + role)
    if acl is not None and rag.catalog.allocator.placement.acls:
        out |= {f"@allow:{e.principal}" for e in acl.allow} | {f"@deny:{e.principal}" for e in acl.deny}
        if acl.folder is not None and acl.inherit:
            out.add(f"@folder:{acl.folder}")
    return tuple(sorted(out))


def stored_groups(rag: PermRAG, tenant: str = "default") -> dict[tuple[str, ...], int]:
    t = db.class_groups.c
    with rag._engine.connect() as conn:
        return {tuple(json.loads(toks)): int(g) for toks, g in conn.execute(select(t.tokens, t.grp).where(t.tenant == tenant))}


def assert_covisible(rag: PermRAG, n: int, tenant: str = "default", placed: list[str] | None = None) -> dict[tuple[str, ...], int]:
    """Every live row sits, physically too, in its class's group; and the rows
    ``placed`` under the current policy (default: all) in their signature's."""
    table = stored_groups(rag, tenant)
    assert table and all(0 <= g < n for g in table.values())
    where = placement(rag, tenant)
    live = rag.rows(rag.catalog.live_ids())
    assert set(where) == {r.row_id for r in live}
    for r in live:
        assert where[r.row_id] == f"g{r.vclass % n}" and r.vclass % n in table.values(), (r.row_id, where[r.row_id], r.vclass)
        if placed is None or r.external_id in placed:
            g = table[tokens(rag, dict(r.attrs), tenant, r.acl)]
            assert r.vclass % n == g, (r.external_id, r.vclass, g)
    return table


def make_policy(rag: PermRAG) -> None:
    p = rag.policy
    for role, (depts, denied) in ROLES.items():
        p.add_role(role)
        for d in depts:
            p.grant(role, f"dept:{d}")
        for lvl in denied:
            p.deny(role, f"lvl:{lvl}")
        p.assign(f"u-{role}", role)
    p.add_role("glob")
    p.grant("glob", "dept:d3*")  # d3 and d30..d39
    p.assign("u-glob", "glob")
    p.add_role("one-doc")  # a document rule selects rows, not classes: not in any signature
    p.grant("one-doc", "doc:r5")
    p.assign("u-eng", "one-doc")
    p.add_role("all")
    p.grant("all", "*")
    p.assign("u-all", "all")


def with_acls(rag: PermRAG) -> bool:
    return rag.catalog.allocator.placement.acls


@pytest.fixture(scope="module", params=[("lite", "visibility+acl"), ("server", "visibility+acl"), ("lite", "visibility")], ids=["lite-acl", "server-acl", "lite"])
def store(request, tmp_path_factory):
    kind, group_by = request.param
    # Partitions priced at nothing, so the plans searched here name groups: at 1,500 rows a
    # scan of the whole collection is priced lower than six partitions (at 1M rows the
    # default prices choose the groups: benchmarks/results/search_1m_server_covis.md).
    planner = Planner(dataclasses.replace(SERVER if kind == "server" else LITE, partition_ms=0.0))
    rag = open_backend(kind, tmp_path_factory.mktemp(f"covis-{kind}"), request, encoder=HashEncoder(48), partitions=GROUPS, partition_by=group_by, local_rows=0, repartition_every=0, planner=planner)
    make_policy(rag)  # the roles exist before the rows arrive
    docs = docs_for(1500)
    rag.add_documents(docs, batch_size=400)
    vecs = dict(zip((d["external_id"] for d in docs), rag.encoder.encode([d["text"] for d in docs])))
    yield rag, vecs, kind
    rag.close()


def test_classes_of_one_signature_share_a_group(store) -> None:
    rag, _, _ = store
    table = assert_covisible(rag, GROUPS)
    assert len(table) == len(set(table.values())) > 8  # every signature a group of its own (fewer than GROUPS)
    assert () in table  # classes no attribute rule selects are a signature too
    assert not any(t.endswith("one-doc") or t.endswith("all") for sig in table for t in sig)
    assert any(t.startswith("@allow:user:acl-") for sig in table for t in sig) == with_acls(rag)
    no = rag.catalog.tenants.number("default")
    assert len(rag.backend.client().list_partitions(rag.backend.name(no))) == len(table) + 2  # + _default and the marker


@pytest.mark.parametrize("user", ["u-eng", "u-fin", "u-big", "u-glob", "acl-1", "acl-4"])
def test_a_role_searches_whole_groups_without_a_filter(store, user) -> None:
    """A role's rows, and the rows whose ACL names a user (the ACL is in the
    class key), fill whole groups: the plan names them with no filter."""
    rag, vecs, _ = store
    table = stored_groups(rag)
    acl_user = user.startswith("acl-")
    token = f"@allow:user:{user}" if acl_user else f"+{user[2:]}"
    holding = {g for sig, g in table.items() if token in sig}
    assert bool(holding) == (with_acls(rag) or not acl_user)
    plan = rag.plan(user)
    if user != "u-eng" and holding:  # (u-eng's document rule adds r5: a partly visible group, the planner's choice)
        assert isinstance(plan, Filter) and set(plan.groups) == holding, plan.describe()
        assert plan.expr == "" and plan.exact, plan.describe()  # whole groups: no filter at all
    for q in QUERIES:
        for k in (1, 10, 200):
            hits = rag.search(q, user=user, k=k, mode="dense")
            assert {h.row_id for h in hits} <= set(rag.visible(user))
            assert_top_k([h.row_id for h in hits], reference(rag, vecs, user, q), k)


@pytest.mark.parametrize("user", ["u-lvl", "acl-3", "u-all", "nobody"])
def test_partly_visible_groups_and_acl_users_stay_exact(store, user) -> None:
    rag, vecs, _ = store
    plan = rag.plan(user)
    if user == "u-all":
        assert isinstance(plan, AllowAll)
    for q in QUERIES:
        for k in (1, 10, 200):
            hits = rag.search(q, user=user, k=k, mode="dense")
            assert {h.row_id for h in hits} <= set(rag.visible(user))
            assert_top_k([h.row_id for h in hits], reference(rag, vecs, user, q), k)


@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_leak_fuzz_after_the_policy_moves_on(store, data) -> None:
    """Rules made after placement cut across the groups: answers stay exact."""
    rag, vecs, _ = store
    assert_exact_search(rag, vecs, *draw_role(rag, data, parents=sorted(ROLES)))


def test_writes_keep_rows_in_their_signature_group(store) -> None:
    """Replace, metadata update (a new class, maybe a new signature) and delete."""
    rag, vecs, _ = store
    rag.add_documents([{"external_id": "mv", "text": "budget w3 w17 moving row", "attrs": {"dept": "d1", "lvl": "1"}}])
    rag.add_documents([{"external_id": "mv", "text": "budget w3 w17 replaced row", "attrs": {"dept": "d12", "lvl": "1"}}], replace=True)
    rag.update_metadata("mv", attrs={"dept": ["d4", "d12"], "lvl": "3"})  # a new class: signature +big +eng +fin
    rag.update_metadata("mv", acl={"allow": ["user:acl-new"]})  # and a new ACL: a class (and group) of its own
    mv = rag.row("mv")
    own = stored_groups(rag)[tokens(rag, dict(mv.attrs), acl=mv.acl)]
    assert mv.vclass % GROUPS == own
    plan = rag.plan("acl-new")
    if with_acls(rag):  # without ACLs in the class key the row shares its role signature's group: a residual filter
        assert plan.groups == (own,) and plan.expr == "", plan.describe()
    assert [h.external_id for h in rag.search("budget", user="acl-new", k=5, mode="dense")] == ["mv"]
    rag.add_documents([{"external_id": "gone", "text": "budget w3 w17 deleted", "attrs": {"dept": "d4", "lvl": "2"}}])
    assert rag.delete(["gone"]) == 1
    table = assert_covisible(rag, GROUPS, placed=["mv"])  # (the fuzz test changed the policy after the rest was placed)
    sig = tokens(rag, dict(rag.row("mv").attrs), acl=rag.row("mv").acl)
    assert {"+big", "+eng", "+fin"} <= set(sig) and sig in table and ("@allow:user:acl-new" in sig) == with_acls(rag)
    hits = rag.search("budget w3 w17 replaced row", user="u-big", k=10, mode="dense")
    assert hits[0].external_id == "mv" and "gone" not in {h.external_id for h in hits}
    vecs = {**vecs, "mv": rag.encoder.encode(["budget w3 w17 replaced row"])[0]}
    for user in ("u-big", "u-eng", "u-fin"):
        got = rag.search("budget w3 w17 replaced row", user=user, k=50, mode="dense")
        assert_top_k([h.row_id for h in got], reference(rag, vecs, user, "budget w3 w17 replaced row"), 50)
    rag.delete(["mv"])


def test_when_groups_run_out_a_signature_joins_the_nearest(tmp_path) -> None:
    home = tmp_path / "h"
    rag = PermRAG.open(home, encoder=HashEncoder(48), partitions=2, partition_by="visibility", local_rows=0)
    try:
        for role, dept in (("a", "d0"), ("b", "d1"), ("c", "d2")):
            rag.policy.add_role(role)
            rag.policy.grant(role, f"dept:{dept}")
        rag.add_documents([{"external_id": "x0", "text": "x0", "attrs": {"dept": "d0"}}])
        rag.add_documents([{"external_id": "x1", "text": "x1", "attrs": {"dept": "d1"}}])
        assert stored_groups(rag) == {("+a",): 0, ("+b",): 1}
        rag.add_documents(
            [
                {"external_id": "x02", "text": "x02", "attrs": {"dept": ["d0", "d2"]}},  # Jaccard 1/2 with +a, 0 with +b
                {"external_id": "x12", "text": "x12", "attrs": {"dept": ["d1", "d2"]}},  # 1/2 with +b
                {"external_id": "x3", "text": "x3", "attrs": {"dept": "d3"}},  # 0 with both: the lower group
            ]
        )
        assert stored_groups(rag) == {("+a",): 0, ("+b",): 1, ("+a", "+c"): 0, ("+b", "+c"): 1, (): 0}
        assert_covisible(rag, 2)
    finally:
        rag.close()
    rag = PermRAG.open(home, encoder=HashEncoder(48), partitions=2, partition_by="visibility", local_rows=0)
    try:  # a reopened store (another process, later) keeps the stored mapping
        rag.add_documents([{"external_id": "y", "text": "y", "attrs": {"dept": ["d2", "d1"], "lvl": "9"}}])
        assert rag.row("y").vclass % 2 == 1
        rag.policy.assign("u", "c")
        hits = rag.search("x12", user="u", k=5, mode="dense")
        assert {h.external_id for h in hits} == {"x02", "x12", "y"}
    finally:
        rag.close()


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.frozensets(st.sampled_from("abcdefg"), max_size=4), min_size=1, max_size=12, unique=True), st.frozensets(st.sampled_from("abcdefgh"), max_size=4))
def test_the_nearest_signature_is_found_through_shared_tokens_only(known_sigs, mine) -> None:
    """The token index finds what comparing with every known signature finds."""
    from permrag.placement.covis import _add, _Known, _nearest

    known = _Known()
    for i, toks in enumerate(known_sigs):
        _add(known, f"s{i}", i % 5, toks)

    def jaccard(a, b):
        return 1.0 if not a and not b else len(a & b) / len(a | b)

    want = min(((i % 5, toks) for i, toks in enumerate(known_sigs)), key=lambda k: (-jaccard(mine, k[1]), k[0]))[0]
    assert _nearest(known, mine) == want


def test_group_by_is_checked(tmp_path) -> None:
    with pytest.raises(ConfigError, match="partitions=N"):
        PermRAG.open(tmp_path / "a", encoder=HashEncoder(48), partition_by="visibility", partitions=0)
    with PermRAG.open(tmp_path / "c", encoder=HashEncoder(48), partition_by="visibility") as rag:  # the backend's default count
        assert rag.catalog.allocator.placement.groups == DEFAULT_GROUPS["lite"] and not rag.catalog.allocator.placement.acls
    with pytest.raises(ConfigError, match="partition_by"):
        PermRAG.open(tmp_path / "b", encoder=HashEncoder(48), partitions=4, partition_by="role")


WORKER = """
import random, sys
from permrag import PermRAG
from permrag.embed import HashEncoder
home, db_url, uri, collection, prefix = sys.argv[1:6]
layout = dict(partitions=8, partition_by="visibility+acl") if prefix == "p" else {}  # q: the layout the store recorded
rag = PermRAG.open(home, database_url=db_url, milvus_uri=uri, encoder=HashEncoder(48), collection=collection,
                   consistency="Strong", local_rows=0, **layout)
assert rag.catalog.allocator.placement.groups == 8 and rag.catalog.allocator.placement.acls
rng = random.Random(prefix)
for b in range(12):  # many small ingests, each bringing classes (and ACL signatures) the other process may be creating too
    rag.add_documents([{"external_id": f"{prefix}{b}-{i}", "text": f"budget {prefix} {b} {i}",
                        "attrs": {"dept": f"d{rng.randrange(40)}", "lvl": str(rng.randrange(3))},
                        **({"acl": {"allow": [f"user:acl-{i % 3}"]}} if i % 4 == 0 else {})} for i in range(25)])
rag.close()
print("done")
"""


def test_two_processes_place_classes_at_once(tmp_path, pg_url, milvus_server) -> None:
    """Both ingests succeed, one group per signature (ACLs included), every row in
    its signature's group — also the rows of the process opened without
    ``partitions``/``partition_by``, which takes the layout the store recorded."""
    collection = f"cv_{abs(hash(str(tmp_path))) % 10**8}"
    opts = dict(database_url=pg_url, milvus_uri=milvus_server, encoder=HashEncoder(48), collection=collection, consistency="Strong", partitions=8, partition_by="visibility+acl", local_rows=0)
    rag = PermRAG.open(tmp_path / "main", **opts)
    try:
        rng = random.Random(5)
        for role in ("r1", "r2", "r3", "r4", "r5"):
            rag.policy.add_role(role)
            for d in rng.sample(DEPTS, 12):
                rag.policy.grant(role, f"dept:{d}")
            rag.policy.assign(f"u-{role}", role)
        procs = [
            subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / p), pg_url, milvus_server, collection, p], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for p in ("p", "q")
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0 and out.strip() == "done", out + err[-2000:]
        rag.catalog.load()
        assert len(rag.catalog.live_ids()) == 2 * 12 * 25
        table = stored_groups(rag)
        assert len(table) > 8 and set(table.values()) == set(range(8))  # more signatures than groups: all groups used
        assert any(t.startswith("@allow:user:acl-") for sig in table for t in sig)
        for r in rag.rows(rag.catalog.live_ids()):
            assert r.vclass % 8 == table[tokens(rag, dict(r.attrs), acl=r.acl)], r.external_id
        where = placement(rag)
        assert all(where[r.row_id] == f"g{r.vclass % 8}" for r in rag.rows(rag.catalog.live_ids()))
        vecs = dict(
            (r.external_id, v)
            for r, v in zip(rag.rows(rag.catalog.live_ids()), rag.encoder.encode([f"budget {r.external_id[0]} {r.external_id[1:].replace('-', ' ')}" for r in rag.rows(rag.catalog.live_ids())]))
        )
        for user in ("u-r1", "u-r3", "u-r5", "acl-1"):
            hits = rag.search("budget p 3", user=user, k=20, mode="dense")
            assert_top_k([h.row_id for h in hits], reference(rag, vecs, user, "budget p 3"), 20)
    finally:
        rag.close()
