"""Recommendations for many users at once: users with equal permissions share
one batched Milvus search; "more like this" refuses a seed you may not read.

    python examples/recommendation.py [HOME]
"""

from __future__ import annotations

import sys
import tempfile

from permrag import AccessDeniedError, PermRAG
from permrag.demo import data_path
from permrag.ingest.loaders import load_jsonl


def main(home: str) -> dict:
    with PermRAG.open(home) as rag:
        rag.add_documents(load_jsonl(data_path("kb.jsonl")))
        rag.policy.import_csv(data_path("policy.csv"))
        users = ["alice", "li", "bob", "carol", "dave"]
        interests = rag.encoder.encode(["deploying software", "release pipeline", "leave and vacation", "quarterly numbers", "office life"])

        def searches_so_far() -> int:  # in Milvus, or ranked in process (small visible sets)
            return rag.stats["milvus_searches"] + rag.stats["local_searches"]

        before = searches_so_far()
        recs = rag.recommend(interests, users=users, k=3)
        searches = searches_so_far() - before
        for u in users:
            print(f"{u:6} → {', '.join(h.external_id for h in recs[u])}")
        print(f"{len(users)} users, {searches} searches (alice and li hold the same roles)")
        more = [h.external_id for h in rag.similar("eng-deploy", user="alice", k=3)]
        print(f"more like eng-deploy for alice: {', '.join(more)}")
        try:
            rag.similar("hr-salaries", user="alice")
            refused = False
        except AccessDeniedError as exc:
            print(f"refused: {exc}")
            refused = True
        return {"recs": {u: [h.external_id for h in recs[u]] for u in users}, "searches": searches, "refused": refused}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
