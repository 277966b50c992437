"""Compiled bitmaps agree with casbin's enforce, from scratch and incrementally."""

from __future__ import annotations

import random
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from permrag import PermRAG, RoleCycleError

from ..conftest import Oracle, examples
from ..worlds import apply_world_policy, load_world, make_doc, make_world, random_selector

SETTINGS = settings(max_examples=examples(12), deadline=None, suppress_health_check=list(HealthCheck))


def ext_ids(rag: PermRAG, bitmap, tenant: str) -> set[str]:
    recs = rag.rows(bitmap)
    assert all(r.tenant == tenant for r in recs), "a bitmap holds a row of another tenant"
    return {r.external_id for r in recs}


def check_all(rag: PermRAG, oracle: Oracle, world) -> int:
    checked = 0
    for t in world.tenants:
        # "r3" and "r7": users called like roles who hold nothing by that
        for u in world.users[t] + ["nobody", "r3", "r7"]:
            assert ext_ids(rag, rag.visible(u, t), t) == oracle.visible_external_ids(u, t), (u, t)
            checked += 1
    assert len(rag.visible("nobody", world.tenants[0])) == 0
    assert len(rag.visible("u0", "no-such-tenant")) == 0
    return checked


@SETTINGS
@given(seed=st.integers(0, 2**32), n_rows=st.integers(200, 320), batches=st.integers(1, 4))
def test_visible_equals_casbin_enforce(seed: int, n_rows: int, batches: int) -> None:
    world = make_world(seed, n_rows=n_rows)
    oracle = Oracle()
    with tempfile.TemporaryDirectory() as home, PermRAG.open(home, catalog_only=True) as rag:
        step = -(-len(world.docs) // batches)
        for i in range(0, len(world.docs), step):
            rag.add_documents(world.docs[i : i + step])
        for d in world.docs:
            oracle.add_row(d)
        apply_world_policy(rag, world, oracle)
        assert check_all(rag, oracle, world) > 0
        # explain agrees with the bitmaps, row by row, for one user.
        t = world.tenants[0]
        vis = rag.visible("u0", t)
        for d in world.docs[:60]:
            if d["tenant"] == t:
                rid = rag.row(d["external_id"], t).row_id
                assert rag.explain("u0", d["external_id"], t).visible == (rid in vis)


@SETTINGS
@given(seed=st.integers(0, 2**32), n_ops=st.integers(10, 40))
def test_incremental_equals_from_scratch(seed: int, n_ops: int) -> None:
    rng = random.Random(seed)
    world = make_world(seed, n_rows=200)
    oracle = Oracle()
    with tempfile.TemporaryDirectory() as home:
        rag = PermRAG.open(home, catalog_only=True)
        load_world(rag, world, oracle)
        # Warm every cache so that the operations below must update them.
        for t in world.tenants:
            for u in world.users[t]:
                rag.visible(u, t)
        next_doc = len(world.docs)
        for _ in range(n_ops):
            t = rng.choice(world.tenants)
            roles = rag.policy.roles(t)
            op = rng.choice(["grant", "deny", "revoke", "assign", "unassign", "ingest", "inherit"])
            if op in ("grant", "deny"):
                role = rng.choice(roles)
                sel = random_selector(rng, [d for d in oracle.rows.values() if d["tenant"] == t])
                (rag.policy.grant if op == "grant" else rag.policy.deny)(role, sel, tenant=t)
                oracle.allow(role, t, sel, "allow" if op == "grant" else "deny")
            elif op == "revoke":
                rules = rag.policy.rules(tenant=t)
                if rules:
                    role, sel, _ = rng.choice(rules)
                    rag.policy.revoke(role, sel, tenant=t)
                    oracle.revoke(role, t, sel)
            elif op == "inherit":
                a, b = rng.sample(roles, 2)
                try:
                    if rag.policy.inherit(a, b, tenant=t):
                        oracle.inherit(a, b, t)
                except RoleCycleError:
                    pass
            elif op == "assign":
                user = rng.choice(world.users[t] + ["newcomer"])
                role = rng.choice(roles)
                if rag.policy.assign_user(user, role, tenant=t):
                    oracle.assign(user, role, t)
                if "newcomer" not in world.users[t] and user == "newcomer":
                    world.users[t].append("newcomer")
            elif op == "unassign":
                held = [(u, r) for u in world.users[t] for r in rag.policy.roles_of(u, t)]
                if held:
                    u, r = rng.choice(held)
                    rag.policy.unassign_user(u, r, tenant=t)
                    oracle.unassign(u, r, t)
            else:
                batch = []
                for _ in range(rng.randint(1, 8)):
                    doc = make_doc(rng, next_doc, t, list(oracle.rows.values()) + batch)
                    batch.append(doc)
                    next_doc += 1
                rag.add_documents(batch)
                for d in batch:
                    oracle.add_row(d)
        check_all(rag, oracle, world)
        incremental = {(u, t): rag.visible(u, t) for t in world.tenants for u in world.users[t]}
        version = rag.policy_version
        rag.close()
        with PermRAG.open(home, catalog_only=True) as fresh:
            assert fresh.policy_version == version
            for (u, t), bm in incremental.items():
                assert fresh.visible(u, t) == bm, (u, t)
