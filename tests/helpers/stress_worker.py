"""One process of tests/system/test_multiprocess.py's stress test.

For ``seconds``, and for at least ``min_ops`` operations, it ingests (into tenant ``acme``, and now and then into
``globex``), grants, denies, revokes, assigns and unassigns at random and
searches ``acme`` in between, on a store it may share with other processes
(PostgreSQL + one Milvus server, which another *store* uses at the same
time). It logs every change with the policy version that change produced,
every ingested row, and every search with the version its hits are stamped
with. When time is up it waits for the other processes to stop too, then
logs its final ``visible()`` of every user.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from permrag import PermRAG, PolicyError
from permrag.embed import HashEncoder

TENANT = "acme"
DEPTS = [f"d{i}" for i in range(6)]
LEVELS = ["1", "2", "3"]
ROLES = [f"r{i}" for i in range(6)]
USERS = [f"u{i}" for i in range(8)]
WORDS = ["budget", "hiring", "roadmap", "merger", "audit", "launch"]


def selectors() -> list[str]:
    return [f"dept:{d}" for d in DEPTS] + [f"lvl:{lv}" for lv in LEVELS] + ["dept:d1*"]


def main() -> None:
    home, db_url, uri, collection, seed, seconds, out, me, others, min_ops = sys.argv[1:11]
    rng = random.Random(int(seed))
    rag = PermRAG.open(home, database_url=db_url or None, milvus_uri=uri, collection=collection, encoder=HashEncoder(32))
    p = rag.policy
    n = 0
    with open(out, "w") as f:

        def log(**rec) -> None:
            f.write(json.dumps(rec) + "\n")

        for role in ROLES:  # a store of its own starts empty
            if p.add_role(role, tenant=TENANT):
                log(kind="change", v=p.version, op="add_role", role=role)
        deadline = time.monotonic() + float(seconds)
        ops = 0
        # for the time given *and* a floor of operations: a slow or loaded machine still does enough to check
        while time.monotonic() < deadline or ops < int(min_ops):
            ops += 1
            roll = rng.random()
            role = rng.choice(ROLES)
            try:
                if roll < 0.5:
                    user = rng.choice(USERS)
                    hits = rag.search(" ".join(rng.sample(WORDS, 2)), user=user, tenant=TENANT, k=30, mode="dense")
                    log(kind="search", user=user, v=hits.policy_version, rows=[h.external_id for h in hits])
                elif roll < 0.58:
                    docs = []
                    tenant = "globex" if rng.random() < 0.25 else TENANT
                    for _ in range(5):
                        attrs = {"dept": rng.choice(DEPTS), "lvl": rng.choice(LEVELS)}
                        docs.append({"external_id": f"{me}-{n}", "text": " ".join(rng.sample(WORDS, 3)), "tenant": tenant, "attrs": attrs})
                        n += 1
                    rag.add_documents(docs)
                    log(kind="ingest", tenant=tenant, rows={d["external_id"]: d["attrs"] for d in docs})
                elif roll < 0.70:
                    sel = rng.choice(selectors())
                    if p.grant(role, sel, tenant=TENANT):
                        log(kind="change", v=p.version, op="grant", role=role, sel=sel)
                elif roll < 0.76:
                    sel = rng.choice(selectors())
                    if p.deny(role, sel, tenant=TENANT):
                        log(kind="change", v=p.version, op="deny", role=role, sel=sel)
                elif roll < 0.88:
                    sel = rng.choice(selectors())
                    p.revoke(role, sel, tenant=TENANT)  # often a rule the other process granted
                    log(kind="change", v=p.version, op="revoke", role=role, sel=sel)
                elif roll < 0.95:
                    user = rng.choice(USERS)
                    if p.assign_user(user, role, tenant=TENANT):
                        log(kind="change", v=p.version, op="assign", role=role, user=user)
                else:
                    user = rng.choice(USERS)
                    p.unassign_user(user, role, tenant=TENANT)
                    log(kind="change", v=p.version, op="unassign", role=role, user=user)
            except PolicyError:
                pass  # the stored policy says no (a revoke of nothing): nothing changed
        Path(out + ".done").touch()
        wait = time.monotonic() + 120
        while not all(Path(o + ".done").exists() for o in others.split(",") if o) and time.monotonic() < wait:
            time.sleep(0.05)
        rag.refresh()
        final = {u: sorted(r.external_id for r in rag.rows(rag.visible(u, TENANT))) for u in USERS}
        log(kind="final", v=rag.policy_version, cv=rag.catalog_version, visible=final)
    rag.close()


if __name__ == "__main__":
    main()
