"""A store's root collection: its identity (``key`` → ``value``) in Milvus.

The root holds the store id of the catalog that created it and a format tag;
backends/milvus.py checks it before any tenant collection is used, so two
catalogs never share rows silently. These functions raise pymilvus' own
errors (the backend wraps them) or :class:`StoreMismatchError`.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import StoreMismatchError
from .lite_files import load_when_ready
from .schema import root_schema

ROOT_FORMAT = "permrag-root-2"


def read_owner(c: Any, collection: str, where: str, lite_dir: str | None = None, wait_s: float = 10.0) -> str:
    """The store id the root collection ``collection`` belongs to."""
    info = c.describe_collection(collection)
    fields = {f.get("name") for f in info.get("fields", [])}
    if fields != {"key", "value", "v"}:
        raise StoreMismatchError(f"Milvus collection {collection!r} at {where} was not made by this version of permrag (an older permrag, or another application): choose another collection name")
    # Another process of this store may be creating the root at this moment
    # (seen: two processes' first ingests on a fresh server): its index, load
    # and rows come within a second of the collection, so wait for them.
    deadline = time.monotonic() + wait_s
    while True:
        load_when_ready(c, collection, lite_dir, max(0.0, deadline - time.monotonic()))
        got = c.query(collection, filter='key in ["store_id", "format"]', output_fields=["key", "value"], consistency_level="Strong")
        if {g["key"] for g in got} == {"store_id", "format"} or time.monotonic() >= deadline:  # (seen: the format row alone)
            break
        time.sleep(0.2)
    values = {g["key"]: g["value"] for g in got}
    owners = {g["value"] for g in got if g["key"] == "store_id"}
    if values.get("format") != ROOT_FORMAT or not owners:
        raise StoreMismatchError(f"Milvus collection {collection!r} at {where} is not a permrag store root")
    if len(owners) > 1:  # two stores created it at the same moment: neither may use it
        raise StoreMismatchError(f"Milvus collection {collection!r} at {where} was claimed by {len(owners)} stores at once")
    return owners.pop()


def create_root(c: Any, collection: str, store_id: str, *, server: bool) -> None:
    """Create the root and write this store's identity into it. A store's own
    processes do this one at a time (binding.py holds its catalog's lock);
    processes of two stores may race for one name: a step the other did
    first is fine, each writes its identity, and a store that then reads
    another's (or two) refuses the collection (:func:`read_owner`)."""
    schema, ip = root_schema(c)
    try:
        c.create_collection(collection, schema=schema, consistency_level="Strong")
    except Exception:
        if not c.has_collection(collection):
            raise
    try:
        c.create_index(collection, ip, sync=False)  # an empty collection: nothing to build (sync polls every 0.5 s)
    except Exception:
        if not c.list_indexes(collection):
            raise
    load_when_ready(c, collection, None)
    c.insert(collection, [{"key": "store_id", "value": store_id, "v": [1.0, 0.0]}, {"key": "format", "value": ROOT_FORMAT, "v": [0.0, 1.0]}])
    if not server:
        c.flush(collection)  # Milvus Lite keeps unflushed rows in memory only
    # (a server writes the rows to its log before the insert returns, so they
    # outlive a crash; waiting for its seal costs 2.5 s of polling)
