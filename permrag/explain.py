"""Why a user can or cannot read a row: the role path and the deciding rule.

This walks the same semantics as the compiler but row by row, with the
per-row selector matcher instead of the inverted index, so it doubles as an
independent check of the compiled bitmaps (the tests compare the two).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .catalog import Catalog, RowRecord
from .policy import Policy, TenantPolicy
from .selectors import parse_selector


@dataclass(frozen=True)
class Rule:
    role: str
    selector: str
    effect: str

    def __str__(self) -> str:
        return f"{self.effect} {self.selector} (role {self.role})"


@dataclass(frozen=True)
class Explanation:
    """The decision for one (user, row) pair.

    ``decision`` is ``"allow"``, ``"deny"``, ``"no-rule"``, ``"unknown-user"``
    or, for derived rows, ``"derived"`` (see ``sources``).
    """

    user: str
    tenant: str
    external_id: str
    row_id: int
    visible: bool
    decision: str
    path: tuple[str, ...] = ()
    rule: Rule | None = None
    sources: tuple["Explanation", ...] = field(default=())

    def __str__(self) -> str:
        head = f"{self.user} {'CAN' if self.visible else 'CANNOT'} read {self.external_id!r} (tenant {self.tenant!r})"
        if self.decision == "unknown-user":
            return f"{head}: {self.user!r} holds no role in this tenant"
        if self.decision == "no-rule":
            return f"{head}: no rule of the user's roles selects this row"
        if self.decision == "derived":
            hidden = [s.external_id for s in self.sources if not s.visible]
            why = "all its sources are readable" if not hidden else f"source(s) {', '.join(map(repr, hidden))} are not readable"
            return f"{head}: derived row, {why}"
        return f"{head}: {' → '.join(self.path)} — {self.rule}"


def _paths(tp: TenantPolicy, user: str) -> dict[str, tuple[str, ...]]:
    """Shortest role path from ``user`` to each role it holds."""
    paths: dict[str, tuple[str, ...]] = {}
    if user in tp.roles:
        paths[user] = (user,)
    queue = deque([(user, (user,))])
    while queue:
        sub, path = queue.popleft()
        for role in sorted(tp.parents.get(sub, ())):
            if role not in paths:
                paths[role] = path + (role,)
                queue.append((role, path + (role,)))
    return paths


def explain_row(policy: Policy, catalog: Catalog, user: str, row: RowRecord) -> Explanation:
    tp = policy.tenant(row.tenant)
    base = dict(user=user, tenant=row.tenant, external_id=row.external_id, row_id=row.row_id)
    if row.derived_from:
        sources = tuple(explain_row(policy, catalog, user, src) for src in catalog.rows(row.derived_from))
        return Explanation(**base, visible=all(s.visible for s in sources), decision="derived", sources=sources)
    paths = _paths(tp, user)
    if not paths:
        return Explanation(**base, visible=False, decision="unknown-user")
    order = sorted(paths, key=lambda r: (len(paths[r]), r))

    def first(effect: str) -> Explanation | None:
        rules = tp.allow if effect == "allow" else tp.deny
        for role in order:
            for sel in sorted(rules.get(role, ())):
                if parse_selector(sel).matches(row.external_id, row.attrs, row.parent):
                    return Explanation(
                        **base, visible=effect == "allow", decision=effect, path=paths[role], rule=Rule(role, sel, effect)
                    )
        return None

    return first("deny") or first("allow") or Explanation(**base, visible=False, decision="no-rule")
