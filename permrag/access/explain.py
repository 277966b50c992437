"""Why a user can or cannot read a row or a document: the path and the rule.

This walks the same semantics as the compiler but row by row, with the
per-row selector matcher instead of the inverted index, so it doubles as an
independent check of the compiled bitmaps (the tests compare the two).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..catalog import RowRecord
from ..policy import TenantPolicy, parse_selector


@dataclass(frozen=True)
class Rule:
    role: str
    selector: str
    effect: str

    def __str__(self) -> str:
        return f"{self.effect} {self.selector} (role {self.role})"


@dataclass(frozen=True)
class Explanation:
    """The decision for one (user, row) or (user, document) pair.

    ``decision``: ``"allow"``, ``"deny"``, ``"no-rule"``, ``"unknown-user"``;
    for derived rows ``"derived"`` (see ``sources``; ``missing_sources``
    counts sources since deleted); for a document of several chunks
    ``"document"`` (see ``chunks``: readable only if every chunk is).
    """

    user: str
    tenant: str
    external_id: str
    row_id: int | None
    visible: bool
    decision: str
    path: tuple[str, ...] = ()
    rule: Rule | None = None
    sources: tuple["Explanation", ...] = field(default=())
    missing_sources: int = 0
    chunks: tuple["Explanation", ...] = field(default=())

    def __str__(self) -> str:
        head = f"{self.user} {'CAN' if self.visible else 'CANNOT'} read {self.external_id!r} (tenant {self.tenant!r})"
        if self.decision == "unknown-user":
            return f"{head}: {self.user!r} holds no role in this tenant"
        if self.decision == "no-rule":
            return f"{head}: no rule of the user's roles selects this row"
        if self.decision == "derived":
            if self.missing_sources:
                return f"{head}: derived row, {self.missing_sources} of its sources are gone (deleted or replaced)"
            hidden = [s.external_id for s in self.sources if not s.visible]
            why = "all its sources are readable" if not hidden else f"source(s) {', '.join(map(repr, hidden))} are not readable"
            return f"{head}: derived row, {why}"
        if self.decision == "document":
            blocked = [c for c in self.chunks if not c.visible]
            if not blocked:
                return f"{head}: every one of its {len(self.chunks)} chunks is readable — {_reason(self.chunks[0])}"
            first = blocked[0]
            return f"{head}: {len(blocked)} of its {len(self.chunks)} chunks are not readable; {first.external_id!r}: {_reason(first)}"
        return f"{head}: {' → '.join(self.path)} — {self.rule}"

    def to_dict(self) -> dict:
        return {
            "user": self.user,
            "tenant": self.tenant,
            "external_id": self.external_id,
            "visible": self.visible,
            "decision": self.decision,
            "path": list(self.path),
            "rule": str(self.rule) if self.rule else None,
            "chunks": [c.to_dict() for c in self.chunks],
            "explanation": str(self),
        }


def _reason(e: Explanation) -> str:
    text = str(e)
    return text.split(": ", 1)[1] if ": " in text else text


def role_paths(tp: TenantPolicy, user: str) -> dict[str, tuple[str, ...]]:
    """Shortest path from ``user`` to each role it holds (user first)."""
    paths: dict[str, tuple[str, ...]] = {}
    queue: deque[tuple[str, tuple[str, ...]]] = deque()
    for role in sorted(tp.user_roles.get(user, ())):
        paths[role] = (user, role)
        queue.append((role, paths[role]))
    while queue:
        role, path = queue.popleft()
        for parent in sorted(tp.parents.get(role, ())):
            if parent not in paths:
                paths[parent] = path + (parent,)
                queue.append((parent, paths[parent]))
    return paths


def explain_row(tp: TenantPolicy, live: Callable[[Sequence[int]], dict[int, RowRecord]], user: str, row: RowRecord) -> Explanation:
    """``live(ids)`` returns the live records among ``ids`` (derived rows' sources)."""
    base = dict(user=user, tenant=row.tenant, external_id=row.external_id, row_id=row.row_id)
    if row.derived_from:
        found = live(row.derived_from)
        sources = tuple(explain_row(tp, live, user, found[s]) for s in row.derived_from if s in found)
        missing = len(row.derived_from) - len(sources)
        return Explanation(
            **base, visible=not missing and all(s.visible for s in sources), decision="derived", sources=sources, missing_sources=missing
        )
    paths = role_paths(tp, user)
    if not paths:
        return Explanation(**base, visible=False, decision="unknown-user")
    order = sorted(paths, key=lambda r: (len(paths[r]), r))

    def first(effect: str) -> Explanation | None:
        rules = tp.allow if effect == "allow" else tp.deny
        for role in order:
            for sel in sorted(rules.get(role, ())):
                if parse_selector(sel).matches(row.external_id, row.attrs, row.parent):
                    return Explanation(**base, visible=effect == "allow", decision=effect, path=paths[role], rule=Rule(role, sel, effect))
        return None

    return first("deny") or first("allow") or Explanation(**base, visible=False, decision="no-rule")


def explain_document(
    tp: TenantPolicy, live: Callable[[Sequence[int]], dict[int, RowRecord]], user: str, document: str, chunks: Sequence[RowRecord]
) -> Explanation:
    """A document of several chunks: readable iff every chunk is."""
    parts = tuple(explain_row(tp, live, user, c) for c in chunks)
    return Explanation(
        user=user,
        tenant=chunks[0].tenant,
        external_id=document,
        row_id=None,
        visible=all(p.visible for p in parts),
        decision="document",
        chunks=parts,
    )
