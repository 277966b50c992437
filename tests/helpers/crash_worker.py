"""A process that dies by SIGKILL at a chosen point, for tests/system/test_faults.py.

``ingest``: ingest 100 rows, then start a second ingest and die right after
its second batch reached Milvus, before the catalog published it (the worst
moment: Milvus holds rows the catalog has only as pending).
``delete``: delete 10 rows and die after the catalog retired them, before
Milvus dropped them.
"""

from __future__ import annotations

import os
import signal
import sys

from permrag import PermRAG
from permrag.embed import HashEncoder


def docs(prefix: str, n: int) -> list[dict]:
    return [{"external_id": f"{prefix}{i}", "text": f"quarterly budget {prefix} {i}", "attrs": {"dept": "eng"}} for i in range(n)]


def main() -> None:
    point, home, uri, collection = sys.argv[1:5]
    rag = PermRAG.open(home, milvus_uri=uri or None, encoder=HashEncoder(64), collection=collection, consistency="Strong")
    rag.add_documents(docs("a", 100))
    store = rag.backend
    if point == "ingest":
        real_insert, calls = store.insert, []

        def insert_then_die(tenant_no, rows):
            real_insert(tenant_no, rows)
            calls.append(1)
            if len(calls) == 2:
                store.flush(tenant_no)  # make sure Milvus really holds them
                os.kill(os.getpid(), signal.SIGKILL)

        store.insert = insert_then_die
        rag.add_documents(docs("b", 150), batch_size=50)
    elif point == "delete":

        def die(tenant_no, ids):
            os.kill(os.getpid(), signal.SIGKILL)

        store.delete = die
        rag.delete([f"a{i}" for i in range(10)])
    raise SystemExit("not killed")


if __name__ == "__main__":
    main()
