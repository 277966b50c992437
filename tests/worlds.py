"""Random catalogs and policies for the oracle tests (one generator, shared)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

DEPTS = ["eng", "eng-infra", "hr", "sales", "legal", "fin", "q:1"]
LEVELS = ["public", "internal", "secret"]
TAGS = ["a", "b", "x-1", "x-2", "y*", "long tag"]


@dataclass
class World:
    tenants: list[str]
    docs: list[dict]
    roles: list[tuple[str, str]]  # (tenant, role)
    rules: list[tuple[str, str, str, str]]  # (role, tenant, selector, effect)
    inherits: list[tuple[str, str, str]]  # (role, parent role, tenant)
    assignments: list[tuple[str, str, str]]  # (user, role, tenant)
    users: dict[str, list[str]] = field(default_factory=dict)  # tenant → users


def make_doc(rng: random.Random, i: int, tenant: str, earlier: list[dict]) -> dict:
    same = [d for d in earlier if d["tenant"] == tenant]
    if same and rng.random() < 0.06:
        srcs = rng.sample(same, k=min(len(same), rng.randint(1, 3)))
        return {"external_id": f"g{i}", "tenant": tenant, "derived_from": [s["external_id"] for s in srcs]}
    attrs: dict = {"cls": rng.choice(LEVELS)}
    if rng.random() < 0.3:
        attrs["dept"] = sorted(set(rng.sample(DEPTS, k=rng.randint(1, 2))))
    else:
        attrs["dept"] = rng.choice(DEPTS)
    if rng.random() < 0.5:
        attrs["tag"] = rng.sample(TAGS, k=rng.randint(0, 3))
    doc = {"external_id": f"d{i}", "tenant": tenant, "attrs": attrs}
    if rng.random() < 0.25:
        doc["parent"] = f"p{rng.randint(0, 15)}"
    return doc


def random_selector(rng: random.Random, docs: list[dict]) -> str:
    roll = rng.random()
    if roll < 0.05:
        return "*"
    if roll < 0.15 and docs:
        d = rng.choice(docs)
        return f"doc:{d.get('parent') or d['external_id']}" if rng.random() < 0.5 else f"doc:{d['external_id']}"
    if roll < 0.45:
        return f"dept:{rng.choice(DEPTS + ['e*', '*-*', '*'])}"
    if roll < 0.7:
        return f"cls:{rng.choice(LEVELS + ['*al', 'p*c'])}"
    return f"tag:{rng.choice(TAGS + ['x-*', '*', 'y*'])}"


def make_world(seed: int, n_rows: int = 220, n_tenants: int = 3, n_roles: int = 8, n_users: int = 6) -> World:
    """Tenants with a role DAG (a chain r3 → r2 → r1 → r0 plus random links),
    rules, and users — two of them called like roles (``r1``, ``r5``), as an
    identity provider may send them, holding roles other than their namesakes."""
    rng = random.Random(seed)
    tenants = [f"t{i}" for i in range(n_tenants)]
    docs: list[dict] = []
    for i in range(n_rows):
        docs.append(make_doc(rng, i, rng.choice(tenants), docs))
    roles, rules, inherits, assignments = [], [], [], []
    users: dict[str, list[str]] = {}
    for t in tenants:
        names = [f"r{j}" for j in range(n_roles)]
        roles += [(t, r) for r in names]
        inherits += [("r3", "r2", t), ("r2", "r1", t), ("r1", "r0", t)]
        for _ in range(n_roles):
            i, j = sorted(rng.sample(range(n_roles), 2))
            if (names[j], names[i], t) not in inherits:
                inherits.append((names[j], names[i], t))
        tdocs = [d for d in docs if d["tenant"] == t]
        for r in names:
            for _ in range(rng.randint(1, 3)):
                rule = (r, t, random_selector(rng, tdocs), "deny" if rng.random() < 0.25 else "allow")
                if rule not in rules:
                    rules.append(rule)
        us = [f"u{k}" for k in range(n_users)] + ["r1", "r5"]
        users[t] = us
        for u in us:
            for r in rng.sample(names, k=rng.randint(0, 2)):
                if u != r:
                    assignments.append((u, r, t))
        assignments.append(("r5", "r0", t))  # the user r5 holds r0, not the role r5
    return World(tenants, docs, roles, rules, inherits, assignments, users)


def apply_world_policy(rag, world: World, oracle=None) -> None:
    for t, r in world.roles:
        rag.policy.add_role(r, tenant=t)
    for role, t, sel, eft in world.rules:
        (rag.policy.grant if eft == "allow" else rag.policy.deny)(role, sel, tenant=t)
        if oracle is not None:
            oracle.allow(role, t, sel, eft)
    for role, parent, t in world.inherits:
        rag.policy.inherit(role, parent, tenant=t)
        if oracle is not None:
            oracle.inherit(role, parent, t)
    for user, role, t in world.assignments:
        rag.policy.assign_user(user, role, tenant=t)
        if oracle is not None:
            oracle.assign(user, role, t)


def load_world(rag, world: World, oracle=None) -> None:
    """Ingest the world's rows and apply its policy (mirrored into the oracle)."""
    rag.add_documents(world.docs)
    if oracle is not None:
        for d in world.docs:
            oracle.add_row(d)
    apply_world_policy(rag, world, oracle)
