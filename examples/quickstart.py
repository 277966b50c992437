"""Quickstart: two departments, three users, one question.

    python examples/quickstart.py [HOME]

Runs offline on the embedded default (Milvus Lite + SQLite under HOME, a
temporary folder if none is given).
"""

from __future__ import annotations

import sys
import tempfile

from permrag import PermRAG


def main(home: str) -> dict[str, list[str]]:
    with PermRAG.open(home) as rag:
        rag.add_documents(
            [
                {"external_id": "hr-leave", "text": "Parental leave is 20 weeks of paid leave.", "attrs": {"dept": "hr", "level": "public"}},
                {"external_id": "hr-pay", "text": "Salary bands and the leave budget for next year.", "attrs": {"dept": "hr", "level": "confidential"}},
                {"external_id": "eng-oncall", "text": "On-call engineers may take leave after a night shift.", "attrs": {"dept": "eng", "level": "internal"}},
            ]
        )
        p = rag.policy
        p.add_role("staff")
        p.grant("staff", "level:public")
        p.add_role("engineer")
        p.grant("engineer", "dept:eng")
        p.inherit("engineer", "staff")  # roles inherit roles
        p.add_role("hr")
        p.grant("hr", "dept:hr")
        p.assign("alice", "engineer")
        p.assign("bob", "hr")
        p.assign("carol", "staff")
        out = {}
        for user in ("alice", "bob", "carol", "mallory"):
            hits = rag.search("how much leave do I get?", user=user, k=3)
            out[user] = [h.external_id for h in hits]
            print(f"{user:8} → {', '.join(out[user]) or '(nothing)'}")
        print(rag.explain("alice", "hr-pay"))
        return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
