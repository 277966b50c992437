"""Why a user can or cannot read a row or a document: the path and the rule.

This walks the same semantics as the compiler but row by row, with the
per-row selector matcher instead of the inverted index, so it doubles as an
independent check of the compiled bitmaps (the tests compare the two).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..catalog import RowRecord
from ..catalog.bitmaps import GONE
from ..domain.names import show_time
from ..policy import TenantPolicy, parse_selector
from ..policy.model import AGENT_PREFIX, GROUP_PREFIX, ROLE_PREFIX, USER_PREFIX
from .acls import effective_folder, label_denies


@dataclass(frozen=True)
class Rule:
    role: str
    selector: str
    effect: str
    expires_at: float | None = None

    def __str__(self) -> str:
        until = f", until {show_time(self.expires_at)}" if self.expires_at is not None else ""
        return f"{self.effect} {self.selector} (role {self.role}{until})"


@dataclass(frozen=True)
class AclRule:
    """An ACL entry that decides: ``principal`` on the document's own ACL or a folder's."""

    principal: str
    effect: str
    source: str  # "document" or "folder /a/b"
    expires_at: float | None = None

    def __str__(self) -> str:
        until = f", until {show_time(self.expires_at)}" if self.expires_at is not None else ""
        return f"{self.effect} {self.principal} in the ACL of the {self.source}{until}"


@dataclass(frozen=True)
class Explanation:
    """The decision for one (user, row) or (user, document) pair.

    ``decision``: ``"allow"``, ``"deny"``, ``"no-rule"``, ``"unknown-user"``,
    ``"deactivated"`` (the identity provider deactivated the user);
    for derived rows ``"derived"`` (see ``sources``; ``missing_sources``
    counts sources since deleted); for a document of several chunks
    ``"document"`` (see ``chunks``: readable only if every chunk is); for a
    delegated request ``"delegated"`` (see ``parties``: the user's explanation,
    then each agent's — ``user`` ``agent:<id>`` — readable only if all are).
    """

    user: str
    tenant: str
    external_id: str
    row_id: int | None
    visible: bool
    decision: str
    path: tuple[str, ...] = ()
    rule: Rule | AclRule | None = None
    expires_at: float | None = None  # when this decision's path or rule expires (None: never)
    sources: tuple[Explanation, ...] = field(default=())
    missing_sources: int = 0
    chunks: tuple[Explanation, ...] = field(default=())
    parties: tuple[Explanation, ...] = field(default=())

    def __str__(self) -> str:
        if self.decision == "delegated":
            who = " acting through ".join(p.user for p in self.parties)
            return f"{who} {'CAN' if self.visible else 'CANNOT'} read {self.external_id!r} (tenant {self.tenant!r}): " + "; ".join(str(p) for p in self.parties)
        head = f"{self.user} {'CAN' if self.visible else 'CANNOT'} read {self.external_id!r} (tenant {self.tenant!r})"
        if self.decision == "deactivated":
            return f"{head}: {self.user!r} is deactivated in the identity provider; its memberships, roles and ACL entries hold nothing until it is active again"
        if self.decision == "unknown-user":
            return f"{head}: {self.user!r} holds no role, is in no group and is named in no ACL in this tenant"
        if self.decision == "no-rule":
            return f"{head}: no rule of the user's roles selects this row and no ACL entry names the user, its groups or roles"
        if self.decision == "derived":
            if self.missing_sources:
                return f"{head}: derived row, {self.missing_sources} of its sources are gone (deleted)"
            hidden = [s.external_id for s in self.sources if not s.visible]
            why = "all its sources are readable" if not hidden else f"source(s) {', '.join(map(repr, hidden))} are not readable"
            return f"{head}: derived row, {why}"
        if self.decision == "document":
            blocked = [c for c in self.chunks if not c.visible]
            if not blocked:
                return f"{head}: every one of its {len(self.chunks)} chunks is readable — {_reason(self.chunks[0])}"
            first = blocked[0]
            return f"{head}: {len(blocked)} of its {len(self.chunks)} chunks are not readable; {first.external_id!r}: {_reason(first)}"
        until = f" (access through this path ends {show_time(self.expires_at)})" if self.expires_at is not None and self.visible else ""
        return f"{head}: {' → '.join(self.path)} — {self.rule}{until}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "tenant": self.tenant,
            "external_id": self.external_id,
            "visible": self.visible,
            "decision": self.decision,
            "path": list(self.path),
            "rule": str(self.rule) if self.rule else None,
            "expires_at": show_time(self.expires_at) if self.expires_at is not None else None,
            "chunks": [c.to_dict() for c in self.chunks],
            **({"parties": [p.to_dict() for p in self.parties]} if self.parties else {}),
            "explanation": str(self),
        }


def _reason(e: Explanation) -> str:
    text = str(e)
    return text.split(": ", 1)[1] if ": " in text else text


@dataclass(frozen=True)
class Reach:
    """How a user reaches a principal: the path (user first) and when its first edge expires."""

    path: tuple[str, ...]
    expires_at: float | None


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def principal_paths(tp: TenantPolicy, user: str, now: float, kind: str = "user") -> dict[str, Reach]:
    """Shortest live path from ``user`` (``kind`` agent: the agent of that id) to each principal it
    holds: ``user:<id>``, ``group:<g>`` and ``role:<r>`` (paths show groups as ``group:<g>``, roles bare)."""
    start = (AGENT_PREFIX if kind == "agent" else USER_PREFIX) + user
    assigned = tp.agent_roles if kind == "agent" else tp.user_roles
    label = tp.label(start)
    out: dict[str, Reach] = {start: Reach((user if label in (None, user) else f"{user} ({label})",), None)}
    queue: deque[str] = deque([start])
    while queue:
        here = queue.popleft()
        reach = out[here]
        steps: list[tuple[str, tuple[str, ...], str]] = []  # (principal, edge key, shown as)
        if here.startswith(ROLE_PREFIX):
            role = here[len(ROLE_PREFIX) :]
            steps += [(ROLE_PREFIX + p, ("g", role, p), p) for p in sorted(tp.parents.get(role, ()))]
        else:
            steps += [(GROUP_PREFIX + g, ("g", here, GROUP_PREFIX + g), tp.shown(GROUP_PREFIX + g)) for g in sorted(tp.member_of.get(here, ()))]
            roles = assigned.get(user, ()) if here == start else tp.group_roles.get(here[len(GROUP_PREFIX) :], ())
            steps += [(ROLE_PREFIX + r, ("g", here, r), r) for r in sorted(roles)]
        for key, edge, shown in steps:
            if key not in out and tp.live(edge, now):
                out[key] = Reach(reach.path + (shown,), _sooner(reach.expires_at, tp.expires.get(edge)))
                queue.append(key)
    return out


def role_paths(tp: TenantPolicy, user: str, now: float | None = None) -> dict[str, tuple[str, ...]]:
    """Shortest path from ``user`` to each role it holds (user first)."""
    reach = principal_paths(tp, user, _clock(now))
    return {k[len(ROLE_PREFIX) :]: r.path for k, r in reach.items() if k.startswith(ROLE_PREFIX)}


def _clock(now: float | None) -> float:
    import time

    return time.time() if now is None else now


def acl_rules(tp: TenantPolicy, row: RowRecord, now: float) -> list[AclRule]:
    """The unexpired ACL entries that apply to ``row``: its own, then its folders' (nearest first)."""
    acl = row.acl
    if acl is None:
        return []
    out = [AclRule(e.principal, effect, "document", e.expires_at) for effect, entries in (("allow", acl.allow), ("deny", acl.deny)) for e in entries if e.expires_at is None or e.expires_at > now]
    if acl.folder is not None and acl.inherit:
        allow, deny = effective_folder(tp, acl.folder, now)
        for effect, entries in (("allow", allow), ("deny", deny)):
            for who, folders in entries.items():
                t = (tp.folders[folders[0]].allow if effect == "allow" else tp.folders[folders[0]].deny).get(who)
                out.append(AclRule(who, effect, f"folder {folders[0]}", t))
    return out


def explain_row(
    tp: TenantPolicy,
    live: Callable[[Sequence[int]], dict[int, RowRecord]],
    user: str,
    row: RowRecord,
    now: float | None = None,
    lineage: Mapping[int, tuple[int, ...]] = MappingProxyType({}),
    *,
    kind: str = "user",
) -> Explanation:
    """``live(ids)`` returns the live records among ``ids``; ``lineage`` maps a
    derived row to its sources' live rows (the index's ``derived``); ``kind``:
    ``user``, or ``agent`` for the agent of id ``user`` (shown as ``agent:<id>``)."""
    now = _clock(now)
    key = (AGENT_PREFIX if kind == "agent" else USER_PREFIX) + user
    base: dict[str, Any] = dict(user=key if kind == "agent" else user, tenant=row.tenant, external_id=row.external_id, row_id=row.row_id)
    if kind == "user" and user in tp.inactive:
        return Explanation(**base, visible=False, decision="deactivated")
    if row.derived_from:
        needed = lineage.get(row.row_id, (GONE,))  # the live rows of its source documents (GONE: one is gone)
        found = live(needed)
        sources = tuple(explain_row(tp, live, user, found[s], now, lineage, kind=kind) for s in needed if s in found)
        missing = len(needed) - len(sources)
        return Explanation(**base, visible=not missing and all(s.visible for s in sources), decision="derived", sources=sources, missing_sources=missing)
    reach = principal_paths(tp, user, now, kind)
    entries = acl_rules(tp, row, now)
    if len(reach) == 1 and not any(e.principal == key for e in entries):
        return Explanation(**base, visible=False, decision="unknown-user")
    roles = sorted((k for k in reach if k.startswith(ROLE_PREFIX)), key=lambda k: (len(reach[k].path), k))
    by_label = label_denies(tp, {e.principal for e in entries if e.effect == "deny"})

    def first(effect: str) -> Explanation | None:
        found: list[tuple[int, int, Explanation]] = []
        for key in roles:
            role = key[len(ROLE_PREFIX) :]
            for sel in sorted(tp.selectors(role, effect, now)):
                if parse_selector(sel).matches(row.external_id, row.attrs, row.parent):
                    t = tp.expires.get(("p", role, sel, effect))
                    rule = Rule(role, sel, effect, t)
                    found.append(
                        (len(reach[key].path), 1, Explanation(**base, visible=effect == "allow", decision=effect, path=reach[key].path, rule=rule, expires_at=_sooner(reach[key].expires_at, t)))
                    )
                    break
        for e in entries:
            # a deny naming a label (no such id) holds for the ids so labelled, as in the compiler (access/acls.py)
            keys = (e.principal, *(by_label.get(e.principal, ()) if effect == "deny" else ()))
            for r in (reach[k] for k in keys if e.effect == effect and k in reach):
                found.append((len(r.path), 0, Explanation(**base, visible=effect == "allow", decision=effect, path=r.path, rule=e, expires_at=_sooner(r.expires_at, e.expires_at))))
        return min(found, key=lambda f: (f[0], f[1]))[2] if found else None

    return first("deny") or first("allow") or Explanation(**base, visible=False, decision="no-rule")


def explain_document(
    tp: TenantPolicy,
    live: Callable[[Sequence[int]], dict[int, RowRecord]],
    user: str,
    document: str,
    chunks: Sequence[RowRecord],
    now: float | None = None,
    lineage: Mapping[int, tuple[int, ...]] = MappingProxyType({}),
    *,
    kind: str = "user",
) -> Explanation:
    """A document of several chunks: readable iff every chunk is."""
    parts = tuple(explain_row(tp, live, user, c, now, lineage, kind=kind) for c in chunks)
    return Explanation(
        user=parts[0].user,
        tenant=chunks[0].tenant,
        external_id=document,
        row_id=None,
        visible=all(p.visible for p in parts),
        decision="document",
        chunks=parts,
    )


def delegated(parties: Sequence[Explanation]) -> Explanation:
    """A delegated request's explanation: the user's, then each agent's; readable only if every one is."""
    first = parties[0]
    return Explanation(
        user=first.user,
        tenant=first.tenant,
        external_id=first.external_id,
        row_id=first.row_id,
        visible=all(p.visible for p in parties),
        decision="delegated",
        parties=tuple(parties),
    )
