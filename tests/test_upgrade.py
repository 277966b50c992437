"""Upgrades keep stores: a store made by permrag 0.2.0 — that release's own
code, taken from this repository's history — opens with this version and
answers every question as before; later writes carry it forward.

The old store holds what 0.2.0 could make: role rules, a document ACL, a
folder ACL, groups from an identity export, a folder sync and a derived row.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from permrag import PermRAG

ROOT = Path(__file__).resolve().parents[1]
RELEASE_0_2_0 = "1fa3a19"
USERS = ["alice", "bob", "carol", "dave", "nobody"]
QUERIES = ["leave policy", "salary bands", "storage design", "budget"]

BUILD = r"""
import json, pathlib, sys
from permrag import PermRAG
home, folder = sys.argv[1], pathlib.Path(sys.argv[2])
rag = PermRAG.open(home, encoder="hash")
rag.add_documents([
    {"external_id": "leave", "text": "Parental leave policy: 20 weeks.", "attrs": {"dept": "hr", "level": "public"}},
    {"external_id": "pay", "text": "Salary bands for 2026.", "attrs": {"dept": "hr", "level": "confidential"}},
    {"external_id": "design", "text": "Storage design notes.", "acl": {"folder": "/eng/specs"}},
    {"external_id": "offsite", "text": "Offsite budget and plans.", "acl": {"allow": ["user:carol"], "deny": ["group:platform"]}},
])
p = rag.policy
p.add_role("staff"); p.grant("staff", "level:public")
p.add_role("hr"); p.grant("hr", "dept:hr"); p.deny("hr", "level:confidential"); p.inherit("hr", "staff")
p.grant("staff", "folder:hr"); p.assign_user("alice", "hr"); p.assign_user("dave", "staff")
csv = pathlib.Path(home) / "groups.csv"
csv.write_text("group,member\nplatform,user:bob\nengineering,group:platform\nengineering,user:carol\n")
rag.identity.sync(str(csv))
rag.identity.set_folder_acl("/eng", allow=["group:engineering"])
rag.sync_folder(folder)
rag.add_generated("Summary: leave is 20 weeks.", sources=["leave"], user="alice", external_id="leave-summary")
out = {}
for u in sys.argv[3].split(","):
    out[u] = {
        "visible": sorted(r.external_id for r in rag.rows(rag.visible(u))),
        "search": {q: [h.external_id for h in rag.search(q, user=u, k=5, mode="dense")] for q in sys.argv[4].split(",")},
    }
rag.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def old_store(tmp_path_factory):
    """A home made by 0.2.0, and what 0.2.0 answered in it."""
    base = tmp_path_factory.mktemp("upgrade")
    archive = subprocess.run(["git", "archive", RELEASE_0_2_0, "permrag"], cwd=ROOT, capture_output=True, timeout=60)
    assert archive.returncode == 0, f"the release's code must be in this repository's history: {archive.stderr.decode()[:300]}"
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(base / "old", filter="data")
    folder = base / "handbook"
    (folder / "hr").mkdir(parents=True)
    (folder / "hr" / "holidays.md").write_text("# Holidays\n\nThe office closes for the holidays in December.\n")
    (folder / "eng.txt").write_text("Storage design review checklist for the platform team.\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMRAG_")}
    env.update(PYTHONPATH=str(base / "old"), HF_HUB_OFFLINE="1")
    home = base / "home"
    res = subprocess.run([sys.executable, "-c", BUILD, str(home), str(folder), ",".join(USERS), ",".join(QUERIES)],
                         capture_output=True, text=True, env=env, cwd=base, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return home, folder, json.loads(res.stdout.strip().splitlines()[-1])


def answers(rag: PermRAG) -> dict:
    return {
        u: {
            "visible": sorted(r.external_id for r in rag.rows(rag.visible(u))),
            "search": {q: [h.external_id for h in rag.search(q, user=u, k=5, mode="dense")] for q in QUERIES},
        }
        for u in USERS
    }


def test_a_0_2_0_store_answers_as_before_and_takes_new_writes(old_store) -> None:
    home, folder, before = old_store
    assert before["alice"]["visible"] and "leave-summary" in before["alice"]["visible"]  # the old store is not empty
    with PermRAG.open(home) as rag:
        assert answers(rag) == before
        # a re-sync of the same folder changes nothing and keeps the ids 0.2.0 gave its files
        report = rag.sync_folder(folder)
        assert report.ok and not (report.added or report.changed or report.metadata or report.restored or report.deleted), report.describe()
        assert rag.can_read("dave", "hr/holidays.md")
        # lineage written by 0.2.0 survives an ACL change of its source (read by name now)
        rag.update_metadata("leave", attrs={"dept": "hr", "level": "public", "reviewed": "yes"})
        assert rag.can_read("alice", "leave-summary")
        # identity from 0.2.0's export keeps its groups as ids
        assert rag.can_read("bob", "design") and not rag.can_read("bob", "offsite")
        after = answers(rag)  # 'leave' has a new row ID now: rows that tie may trade places, nothing else changes
        for u in USERS:
            assert after[u]["visible"] == before[u]["visible"]
            assert {q: set(ids) for q, ids in after[u]["search"].items()} == {q: set(ids) for q, ids in before[u]["search"].items()}
