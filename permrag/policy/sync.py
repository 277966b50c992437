"""Directory sync: make a tenant's identity state exactly an export's.

The identity state is the memberships (all permanent: a stored expiring or
expired membership that the export lists is made permanent again), the
labels of the export's users and groups, and which of its users are
deactivated. A user that leaves the export keeps a deactivation (it never
comes back to life by being dropped) and loses its label. So an incremental
sync leaves the same state as a fresh import of the same export.

A sync that removes a lot is refused unless the caller says it means it
(:class:`MassRemovalError`): more than half of the tenant's memberships, all
of them (an empty export), every user below a group that holds a deny — a
deny rule of one of its roles, or a folder or document ACL deny naming it, a
group above it, or one of those roles — or, judged per user, any user who is
(transitively) below a deny-holding group now and would not be after: a user
taken out of it, or a group un-nested from it, with all of its members.
Losing a deny widens access, so it is the one removal that must never happen
by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import MassRemovalError
from .directory import Directory
from .model import AGENT_PREFIX, GROUP_PREFIX, ROLE_PREFIX, USER_PREFIX, TenantPolicy

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
    losing_deny: tuple[str, ...] = ()  # users the sync takes out from under a group that holds a deny

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
            "losing_deny": list(self.losing_deny),
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
        why, emptied, losing = guard(tp, self, d, denied)
        relabelled = tuple((k, self.old_ident.get(k, (None, False))[0], v[0]) for k, v in sorted(self.ident.items()) if self.old_ident.get(k, (None, False))[0] != v[0])
        users = {k[len(USER_PREFIX) :]: v[1] for k, v in self.ident.items() if k.startswith(USER_PREFIX)}
        return SyncReport(
            tenant, tuple(self.added), tuple(self.removed), self.unchanged, len(d.users), len(d.groups), False, version,
            tuple(self.renewed), relabelled,
            tuple(sorted(u for u, off in users.items() if off and u not in tp.inactive)),
            tuple(sorted(u for u, off in users.items() if not off and u in tp.inactive)),
            sum(len(gs) for gs in tp.member_of.values()), why, emptied, losing,
        )  # fmt: skip


def stored_ident(tp: TenantPolicy) -> dict[str, Ident]:
    keys = set(tp.labels) | {USER_PREFIX + u for u in tp.inactive}
    return {k: (tp.labels.get(k), k.startswith(USER_PREFIX) and k[len(USER_PREFIX) :] in tp.inactive) for k in keys}


def plan(tp: TenantPolicy, d: Directory) -> Plan:
    want = d.edges()
    have = {(m, g) for m, gs in tp.member_of.items() for g in gs if not m.startswith(AGENT_PREFIX)}  # agents' memberships are not the provider's
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
            elif m.startswith(GROUP_PREFIX) and m[len(GROUP_PREFIX) :] not in seen:
                seen.add(m[len(GROUP_PREFIX) :])
                stack.append(m[len(GROUP_PREFIX) :])
    return users


def _acl_denied(tp: TenantPolicy, denied: set[str]) -> set[str]:
    """Principals a document (``denied``) or folder ACL denies."""
    return denied | {p for f in tp.folders.values() for p in f.deny}


def _denies_itself(tp: TenantPolicy, group: str, acl_denied: set[str]) -> bool:
    """Whether ``group`` itself (not a group above it) holds a deny: a deny rule of
    a role it holds (or one those inherit), or an ACL deny naming it or such a role."""
    roles: set[str] = set()
    for r in tp.group_roles.get(group, ()):
        roles |= tp.inherited(r, 0.0)
    if any(tp.deny.get(r) for r in roles):
        return True
    return GROUP_PREFIX + group in acl_denied or any(ROLE_PREFIX + r in acl_denied for r in roles)


def _touched(tp: TenantPolicy, p: Plan) -> set[str]:
    """The groups a removed edge ends at, and every group above them (stored edges)."""
    touched: set[str] = set()
    for _, g in p.removed:
        if g not in touched:  # a group already in holds its groups above too
            touched |= {g} | tp.groups_of(GROUP_PREFIX + g, 0.0)
    return touched


def deny_losses(tp: TenantPolicy, p: Plan, d: Directory, denied: set[str]) -> tuple[list[str], dict[str, set[str]]]:
    """(deny groups the sync empties, deny group → users it takes out from under it).

    Judged per user, from the edges: a removed edge ``(m, g)`` can only take users
    out from under ``g`` and the groups above it (``m``'s own members included,
    when ``m`` is a group), so only those are walked, before (the stored edges)
    and after (the export's). A group holds a deny through itself or a group above
    it; users below it are judged under the group that holds it itself."""
    acl_denied = _acl_denied(tp, denied)
    touched = _touched(tp, p)
    own = {g for g in touched if _denies_itself(tp, g, acl_denied)}  # a touched group's groups above are touched too
    emptied = sorted(g for g in touched if (g in own or tp.groups_of(GROUP_PREFIX + g, 0.0) & own) and tp.group_users(g) and not _users_below(d.groups, g))
    lost: dict[str, set[str]] = {}
    for g in sorted(own):
        gone = _users_below(tp.members, g) - _users_below(d.groups, g)
        if gone:
            lost[g] = gone
    return emptied, lost


def guard(tp: TenantPolicy, p: Plan, d: Directory, denied: set[str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(why the sync is a mass removal, deny groups it empties, users it takes out
    from under a deny group); all empty when it is not."""
    before = sum(len(gs) for gs in tp.member_of.values())
    why: list[str] = []
    if before and len(p.removed) == before:
        why.append(f"it removes all {before} memberships of the tenant" + (" (the export is empty)" if not d.edges() else ""))
    elif 2 * len(p.removed) > before:
        why.append(f"it removes {len(p.removed)} of the tenant's {before} memberships (more than half)")
    emptied, lost = deny_losses(tp, p, d, denied) if p.removed else ([], {})
    if emptied:
        shown = ", ".join(tp.shown(GROUP_PREFIX + g) for g in emptied)
        why.append(f"it removes every member of {shown}, which hold(s) a deny: their members would lose it")
    users = sorted(set().union(*lost.values()))
    if users:
        few = ", ".join(tp.shown(USER_PREFIX + u) for u in users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        groups = ", ".join(tp.shown(GROUP_PREFIX + g) for g in lost)
        why.append(f"{len(users)} user(s) ({few}) would no longer be in {groups}, which hold(s) a deny: they would lose it")
    return tuple(why), tuple(emptied), tuple(users)


def refuse(report: SyncReport) -> None:
    if report.mass_removal:
        raise MassRemovalError(
            f"identity sync of tenant {report.tenant!r} refused: " + "; ".join(report.mass_removal)
            + f" ({len(report.removed)} removed, {len(report.added)} added, {report.memberships_before} before). "
            "Check the export (a partial or empty export?) and pass allow_mass_removal=True / --allow-mass-removal if it is right; nothing was applied"
        )  # fmt: skip
