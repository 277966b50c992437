"""Revocation under load: 8 threads search while another thread grants,
denies, revokes, assigns and unassigns at random for at least 30 seconds.

Two properties are checked after the run, against a model of the policy the
test keeps itself (every change it made, by version):

* every hit is readable under the policy version the hit is stamped with;
* no search that started after a change returned was served on an older
  version (so no search that starts after a revoke returns the revoked rows).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

from permrag import PermRAG
from permrag.embed import HashEncoder

from ..conftest import oracle_selector_match
from ..helpers.load import run_until

SECONDS = float(os.environ.get("PERMRAG_LOAD_SECONDS", "15"))  # and on until enough() holds
THREADS = 8
TENANT = "acme"
DEPTS = [f"d{i}" for i in range(8)]
LEVELS = ["1", "2", "3"]
WORDS = ["budget", "hiring", "roadmap", "merger", "audit", "launch", "policy", "travel", "salary", "vendor"]
ROLES = [f"r{i}" for i in range(8)]
USERS = [f"u{i}" for i in range(12)]


@dataclass(frozen=True)
class Model:
    """The policy as the test sees it: what it granted, denied and assigned."""

    allow: frozenset = frozenset()  # (role, selector)
    deny: frozenset = frozenset()
    edges: frozenset = frozenset()  # (subject, role)

    def roles_of(self, user: str) -> set[str]:
        out, todo = set(), [user]
        while todo:
            s = todo.pop()
            for sub, role in self.edges:
                if sub == s and role not in out:
                    out.add(role)
                    todo.append(role)
        return out

    def visible(self, user: str, rows: list[dict]) -> set[str]:
        roles = self.roles_of(user)
        allow = [s for r, s in self.allow if r in roles]
        deny = [s for r, s in self.deny if r in roles]
        return {row["external_id"] for row in rows if any(oracle_selector_match(row, TENANT, s) for s in allow) and not any(oracle_selector_match(row, TENANT, s) for s in deny)}


@dataclass
class Log:
    models: dict[int, Model] = field(default_factory=dict)
    changes: list[tuple[float, int, str]] = field(default_factory=list)  # (returned at, version, what)
    searches: list[tuple[float, str, int, list[str]]] = field(default_factory=list)  # (started, user, version, ext ids)
    errors: list[BaseException] = field(default_factory=list)


def _selectors() -> list[str]:
    return [f"dept:{d}" for d in DEPTS] + [f"lvl:{lv}" for lv in LEVELS] + ["dept:d1*", "*"]


def _writer(rag: PermRAG, model: Model, log: Log, stop: threading.Event, rng: random.Random) -> None:
    p = rag.policy
    try:
        while not stop.is_set():
            op = rng.random()
            role = rng.choice(ROLES)
            if op < 0.30:
                sel = rng.choice(_selectors())
                p.grant(role, sel, tenant=TENANT)
                model = Model(model.allow | {(role, sel)}, model.deny, model.edges)  # a deny rule stays and wins
                what = f"grant {role} {sel}"
            elif op < 0.40:
                sel = rng.choice(_selectors()[:-1])
                p.deny(role, sel, tenant=TENANT)
                model = Model(model.allow, model.deny | {(role, sel)}, model.edges)
                what = f"deny {role} {sel}"
            elif op < 0.75:
                rules = sorted(model.allow | model.deny)
                if not rules:
                    continue
                role, sel = rng.choice(rules)
                p.revoke(role, sel, tenant=TENANT)
                model = Model(model.allow - {(role, sel)}, model.deny - {(role, sel)}, model.edges)
                what = f"revoke {role} {sel}"
            elif op < 0.88:
                user = rng.choice(USERS)
                p.assign(user, role, tenant=TENANT)
                model = Model(model.allow, model.deny, model.edges | {(user, role)})
                what = f"assign {user} {role}"
            else:
                edges = sorted(e for e in model.edges if e[0].startswith("u"))
                if len(edges) < 6:
                    continue
                user, role = rng.choice(edges)
                p.unassign(user, role, tenant=TENANT)
                model = Model(model.allow, model.deny, model.edges - {(user, role)})
                what = f"unassign {user} {role}"
            version = p.version
            log.models[version] = model
            log.changes.append((time.monotonic(), version, what))
            time.sleep(rng.uniform(0.002, 0.02))
    except BaseException as exc:  # reported by the test
        log.errors.append(exc)
        stop.set()


def _searcher(rag: PermRAG, log: Log, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            user = rng.choice(USERS)
            query = " ".join(rng.sample(WORDS, 2))
            started = time.monotonic()
            hits = rag.search(query, user=user, tenant=TENANT, k=25, mode=rng.choice(["dense", "keyword", "hybrid"]))
            assert all(h.policy_version == hits.policy_version for h in hits)
            log.searches.append((started, user, hits.policy_version, [h.external_id for h in hits]))
    except BaseException as exc:
        log.errors.append(exc)
        stop.set()


def enough(log: Log) -> bool:
    """Many changes, many revokes, many searches with results, spread over many versions."""
    revokes = sum(1 for c in log.changes if c[2].startswith("revoke"))
    answered = [s for s in list(log.searches) if s[3]]
    return revokes >= 50 and len(log.changes) >= 120 and len(log.searches) >= 500 and len(answered) >= 200 and len({s[2] for s in answered}) >= 50


def test_revocation_under_load(tmp_path):
    rng = random.Random(7)
    # 8 threads x thousands of searches; the audit log is tested elsewhere
    rag = PermRAG.open(tmp_path / "home", encoder=HashEncoder(64), audit="off")
    rows = [
        {
            "external_id": f"x{i}",
            "text": " ".join(rng.choice(WORDS) for _ in range(6)),
            "tenant": TENANT,
            "attrs": {"dept": rng.choice(DEPTS), "lvl": rng.choice(LEVELS)},
        }
        for i in range(600)
    ]
    rag.add_documents(rows)
    p = rag.policy
    model = Model()
    for r in ROLES:
        p.add_role(r, tenant=TENANT)
    for i, u in enumerate(USERS):
        for r in (ROLES[i % 8], ROLES[(i * 3 + 1) % 8]):
            p.assign(u, r, tenant=TENANT)
            model = Model(model.allow, model.deny, model.edges | {(u, r)})
    p.assign("r7", "r0", tenant=TENANT)  # a chain: holders of r7 inherit r0
    model = Model(model.allow, model.deny, model.edges | {("r7", "r0")})
    for r, d in zip(ROLES, DEPTS):
        p.grant(r, f"dept:{d}", tenant=TENANT)
        model = Model(model.allow | {(r, f"dept:{d}")}, model.deny, model.edges)
    log = Log()
    log.models[p.version] = model
    log.changes.append((time.monotonic(), p.version, "initial"))

    stop = threading.Event()
    threads = [threading.Thread(target=_searcher, args=(rag, log, stop, s)) for s in range(THREADS)]
    threads.append(threading.Thread(target=_writer, args=(rag, model, log, stop, random.Random(11))))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    run_until(stop, SECONDS, lambda: enough(log))
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    rag.close()
    assert not log.errors, log.errors[0]
    assert elapsed >= SECONDS

    # The run did what it claims: many changes, many revokes, many searches
    # with results, spread over many versions.
    revokes = [c for c in log.changes if c[2].startswith("revoke")]
    answered = [s for s in log.searches if s[3]]
    assert enough(log), (len(revokes), len(log.changes), len(log.searches), len(answered))

    # 1. every hit is readable under the version it is stamped with
    cache: dict[tuple[int, str], set[str]] = {}
    for _, user, version, ext in log.searches:
        assert version in log.models, f"hit stamped with version {version} that no change produced"
        key = (version, user)
        if key not in cache:
            cache[key] = log.models[version].visible(user, rows)
        leaked = set(ext) - cache[key]
        assert not leaked, f"{user} at version {version} got unreadable rows {sorted(leaked)}"

    # 2. no search that started after a change returned ran on an older version
    changes = sorted(log.changes)
    stale = 0
    j, newest = 0, 0
    for started, _user, version, _ in sorted(log.searches, key=lambda s: s[0]):
        while j < len(changes) and changes[j][0] < started:
            newest = max(newest, changes[j][1])
            j += 1
        if version < newest:
            stale += 1
    assert stale == 0, f"{stale} searches served on a policy older than a change that had returned"
    print(
        f"\n{elapsed:.0f} s: {len(log.changes)} changes ({len(revokes)} revokes), {len(log.searches)} searches "
        f"({len(answered)} with rows) over {len({s[2] for s in log.searches})} versions; stale: {stale}"
    )
