"""What a search returns: :class:`Hit` and :class:`Hits`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One search result, stamped with the policy version it was computed under.

    ``external_id`` is the row's own id (a chunk's carries its ``#n`` suffix);
    ``document`` is the document it belongs to (its ``parent``, or itself).
    """

    row_id: int
    external_id: str
    text: str
    score: float
    attrs: dict[str, Any]
    tenant: str
    parent: str | None
    policy_version: int

    @property
    def document(self) -> str:
        return self.parent or self.external_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "row_id": self.row_id,
            "external_id": self.external_id,
            "document": self.document,
            "text": self.text,
            "score": self.score,
            "attrs": self.attrs,
            "tenant": self.tenant,
            "parent": self.parent,
            "policy_version": self.policy_version,
        }


REASONS = ("deny_all", "fewer_visible", "fewer_matches", "merged_parents", "missing_vectors")


class Hits(list[Hit]):
    """The hits of one query, best first, the policy version they were
    computed under (also for an empty result), and the search mode that ran
    (``mode="auto"`` resolves to ``hybrid`` or ``dense`` by the backend).

    What the answer is worth (docs/consistency.md): ``consistency_token``
    names the policy and catalog versions it was computed under (pass it as
    ``at_least=`` to a later read); ``visible_rows`` is how many rows the
    caller may read in the tenant; ``complete`` says whether these are the
    exact top-k of those rows, and ``reason`` why fewer than k came back
    (one of :data:`REASONS`; None when k did).
    """

    def __init__(
        self,
        hits: Sequence[Hit] = (),
        policy_version: int = 0,
        mode: str = "dense",
        *,
        catalog_version: int = 0,
        consistency_token: str = "",
        visible_rows: int | None = None,
        complete: bool = True,
        reason: str | None = None,
    ) -> None:
        super().__init__(hits)
        self.policy_version = policy_version
        self.mode = mode
        self.catalog_version = catalog_version
        self.consistency_token = consistency_token
        self.visible_rows = visible_rows
        self.complete = complete
        self.reason = reason

    def contract(self) -> dict[str, Any]:
        """The consistency and completeness fields, as one dict (what every face carries)."""
        return {
            "consistency_token": self.consistency_token,
            "policy_version": self.policy_version,
            "catalog_version": self.catalog_version,
            "complete": self.complete,
            "visible_rows": self.visible_rows,
            "reason": self.reason,
        }


class Stats(dict[str, int]):
    """Counters of what searches did (``rag.stats``), safe to bump from many threads."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self._lock = threading.Lock()

    def __missing__(self, key: str) -> int:
        return 0

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self[key] = self.get(key, 0) + n
