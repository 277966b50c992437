"""A second process for tests/system/test_processes.py: searches in a loop and logs
each search's start time (CLOCK_MONOTONIC, shared by all processes of the
machine), policy version and rows, until the stop file appears."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from permrag import PermRAG
from permrag.embed import HashEncoder


def main() -> None:
    home, db_url, milvus_uri, collection, out, stop = sys.argv[1:7]
    users = sys.argv[7].split(",")
    rag = PermRAG.open(home, database_url=db_url or None, milvus_uri=milvus_uri, collection=collection, encoder=HashEncoder(64))
    rng = random.Random(3)
    ready = Path(out + ".ready")
    with open(out, "w") as f:
        while not Path(stop).exists():
            user = rng.choice(users)
            started = time.monotonic()
            hits = rag.search("budget roadmap", user=user, tenant="acme", k=50, mode="dense")
            f.write(json.dumps({"t": started, "user": user, "v": hits.policy_version, "rows": [h.external_id for h in hits]}) + "\n")
            ready.touch()
    rag.close()


if __name__ == "__main__":
    main()
