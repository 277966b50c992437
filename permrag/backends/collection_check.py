"""Whether a tenant's Milvus collection has the schema this permrag makes.

The upgrade hook of the Milvus side: no collection field changed since
0.2.0, so every collection a store holds passes. When a release changes
:func:`permrag.backends.schema.tenant_schema`, a collection made before is
refused here, naming ``permrag upgrade`` (that release's upgrade copies
the rows, stored vectors included, into a collection of the new schema;
docs/deployment.md, Upgrades), instead of being searched or written with
fields it lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

OPTIONAL = {"sparse"}  # BM25's field: there only where the backend has BM25


def differences(described: dict[str, Any], expected: Any) -> list[str]:
    """How ``described`` (Milvus' ``describe_collection``) differs from
    ``expected`` (a ``CollectionSchema``): fields missing, of another type,
    or not expected. Empty when they agree."""
    have = {f.get("name"): int(f.get("type")) for f in described.get("fields", [])}
    want = {f.name: int(f.dtype) for f in expected.fields}
    out = [f"no field {name!r}" for name in want if name not in have and name not in OPTIONAL]
    out += [f"field {name!r} has type {have[name]}, not {kind}" for name, kind in want.items() if name in have and have[name] != kind]
    out += [f"an unexpected field {name!r}" for name in have if name not in want and name not in OPTIONAL]
    return out


def check(name: str, described: dict[str, Any], expected: Any) -> None:
    """Refuse a collection of another schema, naming what differs and ``permrag upgrade``."""
    found = differences(described, expected)
    if found:
        raise ConfigError(
            f"collection {name!r} was made with another schema than this permrag's ({'; '.join(found)})",
            hint="stop the processes that use the store and run permrag.storage.create.upgrade_store (permrag upgrade) with this permrag",
            cli_hint="stop the processes that use the store and run `permrag upgrade` with this permrag",
        )


def collection_dim(client: Any, name: str, expected_for: Callable[[int], Any]) -> int:
    """The vector dimension of the tenant collection ``name``, after checking that it is a
    permrag collection whose fields are those ``expected_for(dim)`` makes."""
    info = client.describe_collection(name)
    fields = {f.get("name"): f for f in info.get("fields", [])}
    if "external_id" not in fields or "dense" not in fields:
        raise ConfigError(f"collection {name!r} exists but is not a permrag tenant collection")
    dim = int(fields["dense"].get("params", {}).get("dim"))
    check(name, info, expected_for(dim))
    return dim
