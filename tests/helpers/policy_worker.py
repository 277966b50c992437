"""A second process that runs commands sent on stdin, one JSON line each:
``{"call": "policy.deny", "args": [...], "kwargs": {...}}`` → one JSON line
on stdout with the result or the error. Used by tests/system/test_multiprocess.py
to act on a store from a process whose in-memory copy is out of date."""

from __future__ import annotations

import json
import sys

from permrag import PermRAG, PermragError


def _plain(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (set, frozenset)) or type(value).__name__ in ("FrozenBitMap", "BitMap"):
        return sorted(value)
    if hasattr(value, "describe"):
        return value.describe()
    return value


def main() -> None:
    home, db_url = sys.argv[1:3]
    if len(sys.argv) > 3:  # a store with vectors: Milvus URI, collection, HashEncoder dimension
        from permrag.embed import HashEncoder

        uri, collection, dim = sys.argv[3:6]
        rag = PermRAG.open(home, database_url=db_url, milvus_uri=uri, collection=collection, encoder=HashEncoder(int(dim)))
    else:
        rag = PermRAG.open(home, database_url=db_url, catalog_only=True)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        target = rag
        for part in cmd["call"].split("."):  # "identity.provisioning().delete_user": a part ending in () is called bare
            target = getattr(target, part.removesuffix("()"))
            if part.endswith("()"):
                target = target()
        try:
            result = target(*cmd.get("args", []), **cmd.get("kwargs", {}))
            print(json.dumps({"ok": _plain(result)}, default=str), flush=True)
        except PermragError as exc:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
    rag.close()


if __name__ == "__main__":
    main()
