"""Directory sync: make a tenant's identity state exactly an export's.

The identity state is the memberships (all permanent: a stored expiring or
expired membership that the export lists is made permanent again), the
labels of the export's users and groups, and which of its users are
deactivated. A user that leaves the export keeps a deactivation (it never
comes back to life by being dropped) and loses its label. So an incremental
sync leaves the same state as a fresh import of the same export.

A sync that removes a lot is refused unless the caller says it means it
(:class:`MassRemovalError`): more than half of the tenant's memberships, all
of them (an empty export), or every user below a group that holds a deny —
a deny rule of one of its roles, or a folder or document ACL deny naming it,
a group above it, or one of those roles. Losing a deny group's members
widens access, so it is the one removal that must never happen by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import MassRemovalError
from .directory import Directory
from .model import GROUP_PREFIX, ROLE_PREFIX, USER_PREFIX, TenantPolicy

Edge = tuple[str, str]  # (member key, group id)
Ident = tuple[str | None, bool]  # (label, deactivated)


@dataclass(frozen=True)
class SyncReport:
    """What a sync changed (or, dry, would change)."""

    tenant: str
    added: tuple[Edge, ...]
    removed: tuple[Edge, ...]
    unchanged: int
    users: int
    groups: int
    applied: bool
    policy_version: int
    renewed: tuple[Edge, ...] = ()  # listed by the export, stored with an expiry: made permanent
    relabelled: tuple[tuple[str, str | None, str | None], ...] = ()  # (key, old label, new label)
    deactivated: tuple[str, ...] = ()
    reactivated: tuple[str, ...] = ()
    memberships_before: int = 0
    mass_removal: tuple[str, ...] = ()  # why the guard refuses it (empty: it does not)
    emptied_deny_groups: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.renewed or self.relabelled or self.deactivated or self.reactivated)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "added": [f"{m} → group:{g}" for m, g in self.added],
            "removed": [f"{m} → group:{g}" for m, g in self.removed],
            "renewed": [f"{m} → group:{g}" for m, g in self.renewed],
            "unchanged": self.unchanged,
            "relabelled": [{"id": k, "from": a, "to": b} for k, a, b in self.relabelled],
            "deactivated": list(self.deactivated),
            "reactivated": list(self.reactivated),
            "users": self.users,
            "groups": self.groups,
            "memberships_before": self.memberships_before,
            "mass_removal": list(self.mass_removal),
            "emptied_deny_groups": list(self.emptied_deny_groups),
            "applied": self.applied,
            "policy_version": self.policy_version,
        }


@dataclass(frozen=True)
class Plan:
    added: list[Edge]
    removed: list[Edge]
    renewed: list[Edge]
    unchanged: int
    ident: dict[str, Ident]  # key → new (label, deactivated) for every key whose stored one changes
    old_ident: dict[str, Ident]

    def report(self, tp: TenantPolicy, tenant: str, d: Directory, version: int, denied: set[str]) -> SyncReport:
        why, emptied = guard(tp, self, d, denied)
        relabelled = tuple((k, self.old_ident.get(k, (None, False))[0], v[0]) for k, v in sorted(self.ident.items()) if self.old_ident.get(k, (None, False))[0] != v[0])
        users = {k[len(USER_PREFIX) :]: v[1] for k, v in self.ident.items() if k.startswith(USER_PREFIX)}
        return SyncReport(
            tenant, tuple(self.added), tuple(self.removed), self.unchanged, len(d.users), len(d.groups), False, version,
            tuple(self.renewed), relabelled,
            tuple(sorted(u for u, off in users.items() if off and u not in tp.inactive)),
            tuple(sorted(u for u, off in users.items() if not off and u in tp.inactive)),
            sum(len(gs) for gs in tp.member_of.values()), why, emptied,
        )  # fmt: skip


def stored_ident(tp: TenantPolicy) -> dict[str, Ident]:
    keys = set(tp.labels) | {USER_PREFIX + u for u in tp.inactive}
    return {k: (tp.labels.get(k), k.startswith(USER_PREFIX) and k[len(USER_PREFIX) :] in tp.inactive) for k in keys}


def plan(tp: TenantPolicy, d: Directory) -> Plan:
    want = d.edges()
    have = {(m, g) for m, gs in tp.member_of.items() for g in gs}
    renewed = sorted(e for e in want & have if ("g", e[0], GROUP_PREFIX + e[1]) in tp.expires)
    new: dict[str, Ident] = {k: (d.labels.get(k), k[len(USER_PREFIX) :] in d.inactive if k.startswith(USER_PREFIX) else False) for k in d.keys()}
    for u in tp.inactive - d.users:  # dropped from the export: stays deactivated
        new[USER_PREFIX + u] = (None, True)
    old = stored_ident(tp)
    changed = {k: new.get(k, (None, False)) for k in set(new) | set(old) if new.get(k, (None, False)) != old.get(k, (None, False))}
    return Plan(sorted(want - have), sorted(have - want), renewed, len(want & have), changed, old)


def _users_below(members: dict[str, set[str]], group: str) -> set[str]:
    users: set[str] = set()
    seen, stack = {group}, [group]
    while stack:
        for m in members.get(stack.pop(), ()):
            if m.startswith(USER_PREFIX):
                users.add(m[len(USER_PREFIX) :])
            elif m[len(GROUP_PREFIX) :] not in seen:
                seen.add(m[len(GROUP_PREFIX) :])
                stack.append(m[len(GROUP_PREFIX) :])
    return users


def holds_deny(tp: TenantPolicy, group: str, denied: set[str]) -> bool:
    """Whether a member of ``group`` is denied anything through it: a deny rule of a
    role it (or a group above it) holds, or an ACL deny naming one of those."""
    above = {group} | tp.groups_of(GROUP_PREFIX + group, 0.0)
    roles: set[str] = set()
    for h in above:
        for r in tp.group_roles.get(h, ()):
            roles |= tp.inherited(r, 0.0)
    if any(tp.deny.get(r) for r in roles):
        return True
    names = {GROUP_PREFIX + h for h in above} | {ROLE_PREFIX + r for r in roles}
    folder_denied = {p for f in tp.folders.values() for p in f.deny}
    return bool(names & (denied | folder_denied))


def guard(tp: TenantPolicy, p: Plan, d: Directory, denied: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(why the sync is a mass removal, deny groups it empties); both empty when it is not."""
    before = sum(len(gs) for gs in tp.member_of.values())
    why: list[str] = []
    if before and len(p.removed) == before:
        why.append(f"it removes all {before} memberships of the tenant" + (" (the export is empty)" if not d.edges() else ""))
    elif 2 * len(p.removed) > before:
        why.append(f"it removes {len(p.removed)} of the tenant's {before} memberships (more than half)")
    touched: set[str] = set()
    for _, g in p.removed:
        touched |= {g} | tp.groups_of(GROUP_PREFIX + g, 0.0)
    emptied = sorted(g for g in touched if tp.group_users(g) and not _users_below(d.groups, g) and holds_deny(tp, g, denied))
    if emptied:
        shown = ", ".join(tp.shown(GROUP_PREFIX + g) for g in emptied)
        why.append(f"it removes every member of {shown}, which hold(s) a deny: their members would lose it")
    return tuple(why), tuple(emptied)


def refuse(report: SyncReport) -> None:
    if report.mass_removal:
        raise MassRemovalError(
            f"identity sync of tenant {report.tenant!r} refused: " + "; ".join(report.mass_removal)
            + f" ({len(report.removed)} removed, {len(report.added)} added, {report.memberships_before} before). "
            "Check the export (a partial or empty export?) and pass allow_mass_removal=True / --allow-mass-removal if it is right; nothing was applied"
        )  # fmt: skip
