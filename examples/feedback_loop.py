"""Generated content fed back into the store inherits its sources' visibility.

An analyst's summary built from a finance document and an HR document is
visible only to people who may read both.

    python examples/feedback_loop.py [HOME]
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
        answer = "Summary: Q3 revenue was 48.2 million; staff get 25 days of annual leave."
        rag.add_generated(answer, sources=["fin-q3", "hr-vacation"], user="carol", external_id="answer-1")
        who = rag.who_can_see("answer-1")
        print(f"answer-1 is readable by: {', '.join(who['users'])}")
        for u in ("carol", "erin"):
            print(" • " + str(rag.explain(u, "answer-1")))
        try:
            rag.add_generated("salary digest", sources=["hr-salaries"], user="carol")
            refused = False
        except AccessDeniedError as exc:
            print(f"refused: {exc}")
            refused = True
        return {"readers": who["users"], "refused": refused}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
