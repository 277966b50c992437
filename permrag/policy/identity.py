"""Groups, memberships, folder ACLs and directory sync: ``rag.identity``.

Identity arrives from the identity provider (users in nested groups) and from
source systems (ACLs on folders and documents). Both are stored with the
policy (policy/persist.py), so every change is one versioned transaction
seen by every process at its next read, like a role change:

* memberships ``g, user:<id>, group:<g>`` and ``g, group:<a>, group:<b>``;
* group roles ``g, group:<g>, <role>``;
* folder ACLs (``acl`` / ``noinherit`` rows); documents carry their own ACL
  in the catalog (catalog/rows.py) and inherit their folder's.

* what the provider says of an id (``ident`` rows): its label and whether
  the user is deactivated.

Users and groups are keyed by the provider's immutable id; admin calls take
an id or an unambiguous label (:meth:`TenantPolicy.resolve`).
:meth:`Identity.sync` makes the tenant's identity state equal to an export's
(policy/sync.py): one policy version, none when nothing changed.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable, Iterable, Sequence

from sqlalchemy import bindparam, delete
from sqlalchemy.engine import Connection

from .. import db
from ..acl import Acl, AclEntry, acl_entries, folder_path
from ..errors import PolicyError, UnknownSubjectError
from ..names import check, check_tenant, expiry
from .changes import edge_change, need_role
from .directory import Directory, check_acyclic
from .exports import read as read_exports
from .model import GROUP_PREFIX, MAX_DEPTH, USER_PREFIX, Change, Folder, TenantPolicy
from .persist import FOLDER_ACL, IDENT, NO_INHERIT, ident_row, stamp
from .store import DEFAULT_TENANT, Policy
from .sync import Plan, SyncReport, plan, refuse


def _member(member: object) -> str:
    """``user:<id>`` / ``group:<id>``; a bare name is a user."""
    text = check("member", member, max_len=262, error=PolicyError)
    if text.startswith(GROUP_PREFIX):
        return GROUP_PREFIX + check("group", text[len(GROUP_PREFIX) :], error=PolicyError)
    return USER_PREFIX + check("user", text.removeprefix(USER_PREFIX), error=PolicyError)


def _affected(tp: TenantPolicy, member: str) -> set[str]:
    """Users whose groups change when ``member``'s memberships change."""
    if member.startswith(USER_PREFIX):
        return {member[len(USER_PREFIX) :]}
    return tp.group_users(member[len(GROUP_PREFIX) :])


class Identity:
    """Groups, memberships, folder ACLs and directory sync of one store."""

    def __init__(self, policy: Policy, denied: Callable[[str], set[str]] | None = None) -> None:
        """``denied(tenant)``: the principals document ACLs deny in ``tenant``
        (the catalog's side of the mass-removal guard)."""
        self.policy = policy
        self._denied = denied

    # ------------------------------------------------------------------ reading
    def groups(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        self.policy.refresh()
        return sorted(self.policy.tenant(tenant).groups())

    def labels(self, tenant: str = DEFAULT_TENANT) -> dict[str, str]:
        """``user:<id>`` / ``group:<id>`` → the provider's label (userName / displayName)."""
        self.policy.refresh()
        return dict(sorted(self.policy.tenant(tenant).labels.items()))

    def deactivated(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Ids of the users the provider deactivated: they hold nothing."""
        self.policy.refresh()
        return sorted(self.policy.tenant(tenant).inactive)

    def members(self, group: str, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Direct members of ``group`` (``user:<id>`` / ``group:<id>``)."""
        self.policy.refresh()
        tp = self.policy.tenant(tenant)
        return sorted(tp.members.get(tp.resolve(GROUP_PREFIX, group), ()))

    def groups_of(self, user: str, tenant: str = DEFAULT_TENANT, *, now: float | None = None) -> list[str]:
        """Groups ``user`` is in, directly or through nested groups (unexpired)."""
        self.policy.refresh()
        tp = self.policy.tenant(tenant)
        return sorted(tp.groups_of(USER_PREFIX + tp.resolve(USER_PREFIX, user), now))

    def folder_acl(self, folder: str, tenant: str = DEFAULT_TENANT) -> Acl:
        self.policy.refresh()
        path = folder_path(folder, PolicyError)
        f = self.policy.tenant(tenant).folders.get(path, Folder())
        return Acl(
            tuple(AclEntry(p, t) for p, t in sorted(f.allow.items())), tuple(AclEntry(p, t) for p, t in sorted(f.deny.items())), path, f.inherit
        )

    # ------------------------------------------------------------------ memberships and group roles
    def add_member(self, group: str, member: str, tenant: str = DEFAULT_TENANT, *, expires_at: object = None) -> bool:
        """Put ``member`` (``user:<id>``, ``group:<id>``, or a bare user id) in ``group``
        (each an id or an unambiguous label)."""
        tenant, given = check_tenant(tenant, PolicyError), _member(member)
        named = check("group", group, error=PolicyError)
        until = expiry(expires_at, "expires_at", PolicyError)

        def make(tp: TenantPolicy) -> Change | None:
            key, group = tp.resolve_key(given), tp.resolve(GROUP_PREFIX, named)
            edge = ("g", key, GROUP_PREFIX + group)
            held = group in tp.member_of.get(key, ())
            if held and tp.expires.get(edge) == until:
                return None
            if not held:
                tp.check_member(key, group)
            return edge_change(tenant, edge, held, until, lambda t: t.add_member(key, group), set(), _affected(tp, key))

        return self.policy._one(tenant, make)

    def remove_member(self, group: str, member: str, tenant: str = DEFAULT_TENANT) -> None:
        named = group
        tenant, given = check_tenant(tenant, PolicyError), _member(member)
        c = db.casbin_rule.c

        def make(tp: TenantPolicy) -> Change:
            key, group = tp.resolve_key(given), tp.resolve(GROUP_PREFIX, named)
            if group not in tp.member_of.get(key, ()):
                raise UnknownSubjectError(f"{key!r} is not a member of group {group!r} in tenant {tenant!r}")
            return Change(
                lambda conn: conn.execute(delete(db.casbin_rule).where(c.ptype == "g", c.v0 == key, c.v1 == GROUP_PREFIX + group, c.v2 == tenant)),
                lambda s: s[tenant].remove_member(key, group),
                {tenant},
                set(),
                _affected(tp, key),
            )

        self.policy._one(tenant, make)

    def assign_group(self, group: str, role: str, tenant: str = DEFAULT_TENANT, *, expires_at: object = None) -> bool:
        """Give every member of ``group`` (transitively) ``role``."""
        tenant = check_tenant(tenant, PolicyError)
        named = check("group", group, error=PolicyError)
        until = expiry(expires_at, "expires_at", PolicyError)

        def make(tp: TenantPolicy) -> Change | None:
            group = tp.resolve(GROUP_PREFIX, named)
            edge = ("g", GROUP_PREFIX + group, role)
            need_role(tp, role, tenant)
            held = role in tp.group_roles.get(group, ())
            if held and tp.expires.get(edge) == until:
                return None
            if not held:
                tp.check_group_role(group, role)
            return edge_change(tenant, edge, held, until, lambda t: t.add_group_role(group, role), set(), tp.group_users(group))

        return self.policy._one(tenant, make)

    def unassign_group(self, group: str, role: str, tenant: str = DEFAULT_TENANT) -> None:
        tenant = check_tenant(tenant, PolicyError)
        c = db.casbin_rule.c
        named = group

        def make(tp: TenantPolicy) -> Change:
            group = tp.resolve(GROUP_PREFIX, named)
            if role not in tp.group_roles.get(group, ()):
                raise UnknownSubjectError(f"group {group!r} does not hold role {role!r} in tenant {tenant!r}")
            return Change(
                lambda conn: conn.execute(delete(db.casbin_rule).where(c.ptype == "g", c.v0 == GROUP_PREFIX + group, c.v1 == role, c.v2 == tenant)),
                lambda s: s[tenant].remove_group_role(group, role),
                {tenant},
                set(),
                tp.group_users(group),
            )

        self.policy._one(tenant, make)

    # ------------------------------------------------------------------ folder ACLs
    def set_folder_acl(
        self,
        folder: str,
        *,
        allow: Iterable[object] = (),
        deny: Iterable[object] = (),
        inherit: bool = True,
        tenant: str = DEFAULT_TENANT,
    ) -> bool:
        """Replace ``folder``'s own ACL. Documents below it (that do not break
        inheritance) and subfolders (that inherit) get it at the next read."""
        tenant, path = check_tenant(tenant, PolicyError), folder_path(folder, PolicyError)
        new = Folder(
            {e.principal: e.expires_at for e in acl_entries(list(allow), f"allow of folder {path!r}", PolicyError)},
            {e.principal: e.expires_at for e in acl_entries(list(deny), f"deny of folder {path!r}", PolicyError)},
            bool(inherit),
        )
        c = db.casbin_rule.c

        def make(tp: TenantPolicy) -> Change | None:
            old = tp.folders.get(path, Folder())
            if (old.allow, old.deny, old.inherit) == (new.allow, new.deny, new.inherit):
                return None

            def write(conn: Connection) -> None:
                conn.execute(delete(db.casbin_rule).where(c.ptype.in_([FOLDER_ACL, NO_INHERIT]), c.v0 == path, c.v1 == tenant))
                rows = [
                    {"ptype": FOLDER_ACL, "v0": path, "v1": tenant, "v2": p, "v3": eft, "v4": stamp(t), "v5": None}
                    for eft, entries in (("allow", new.allow), ("deny", new.deny))
                    for p, t in sorted(entries.items())
                ]
                if not new.inherit:
                    rows.append({"ptype": NO_INHERIT, "v0": path, "v1": tenant, "v2": "", "v3": None, "v4": None, "v5": None})
                if rows:
                    conn.execute(db.casbin_rule.insert(), rows)

            def apply(s: dict[str, TenantPolicy]) -> None:
                if new.empty():
                    s[tenant].folders.pop(path, None)
                else:
                    s[tenant].folders[path] = new.copy()

            return Change(write, apply, {tenant}, None, None)

        return self.policy._one(tenant, make)

    # ------------------------------------------------------------------ sync
    def read(self, sources: Sequence[str | os.PathLike[str]], fmt: str | None = None) -> Directory:
        """Parse one sync's export files (all of them are read before anything is applied)."""
        return read_exports(sources, fmt)

    def sync(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Directory,
        *,
        tenant: str = DEFAULT_TENANT,
        format: str | None = None,
        dry_run: bool = False,
        allow_mass_removal: bool = False,
    ) -> SyncReport:
        """Make ``tenant``'s identity state that of the export (files or a :class:`Directory`):
        memberships (permanent), labels, deactivations; see policy/sync.py.

        Raises :class:`MassRemovalError` (nothing applied) for a mass removal
        unless ``allow_mass_removal``; a ``dry_run`` reports it instead."""
        tenant = check_tenant(tenant, PolicyError)
        if isinstance(source, Directory):
            directory = source
            check_acyclic("<directory>", directory)
        else:
            directory = self.read([source] if isinstance(source, (str, os.PathLike)) else list(source), format)
        denied = self._denied(tenant) if self._denied is not None else set()
        report: list[SyncReport] = []

        def make(tp: TenantPolicy) -> Change | None:
            p = plan(tp, directory)
            report.append(p.report(tp, tenant, directory, self.policy.version, denied))
            if dry_run or not report[-1].changed:
                return None
            if not allow_mass_removal:
                refuse(report[-1])
            return _sync_change(tp, tenant, p)

        applied = self.policy._one(tenant, make)
        return replace(report[-1], applied=applied, policy_version=self.policy.version)


def _sync_change(tp: TenantPolicy, tenant: str, p: Plan) -> Change:
    """The validated change that applies plan ``p``."""
    added, removed = p.added, p.removed
    _check_added(tp, removed, added)  # applies and reverts: depth and cycles of the new state
    users: set[str] | None = set()
    for m, _ in added + removed + p.renewed:
        users |= _affected(tp, m)  # type: ignore[operator]
    users |= {k[len(USER_PREFIX) :] for k in p.ident if k.startswith(USER_PREFIX)}  # type: ignore[operator]
    if any(m.startswith(GROUP_PREFIX) for m, _ in added + removed + p.renewed):
        users = None  # nesting changed: every cached user of the tenant is recomputed
    c = db.casbin_rule.c
    gone = removed + p.renewed
    rows = [{"ptype": "g", "v0": m, "v1": GROUP_PREFIX + g, "v2": tenant, "v3": None, "v4": None, "v5": None} for m, g in added + p.renewed]
    idents = [ident_row(k, tenant, label, off) for k, (label, off) in sorted(p.ident.items()) if label is not None or off]

    def write(conn: Connection) -> None:
        if gone:
            where = [c.ptype == "g", c.v0 == bindparam("m"), c.v1 == bindparam("g"), c.v2 == tenant]
            conn.execute(delete(db.casbin_rule).where(*where), [{"m": m, "g": GROUP_PREFIX + g} for m, g in gone])
        if p.ident:
            stale = delete(db.casbin_rule).where(c.ptype == IDENT, c.v0 == bindparam("k"), c.v1 == tenant)
            conn.execute(stale, [{"k": k} for k in sorted(p.ident)])
        for part in db.chunks(rows + idents, 1000):
            conn.execute(db.casbin_rule.insert(), list(part))

    def apply(s: dict[str, TenantPolicy]) -> None:
        t = s[tenant]
        for m, g in removed + p.renewed:
            t.remove_member(m, g)
        for m, g in added + p.renewed:
            t.add_member(m, g)
        for k, (label, off) in p.ident.items():
            if label is None:
                t.labels.pop(k, None)
            else:
                t.labels[k] = label
            if k.startswith(USER_PREFIX):
                (t.inactive.add if off else t.inactive.discard)(k[len(USER_PREFIX) :])

    return Change(write, apply, {tenant}, None if users is None else set(), users)


def _check_added(tp: TenantPolicy, removed: list[tuple[str, str]], added: list[tuple[str, str]]) -> None:
    """Raise if the memberships after the change hold a cycle or a chain over
    :data:`MAX_DEPTH` links. The old state was valid and removals only shorten
    chains, so only chains through an added edge are checked — on ``tp``
    itself, changed and changed back (the caller holds the state lock)."""
    kept = {("g", m, GROUP_PREFIX + g): tp.expires[("g", m, GROUP_PREFIX + g)] for m, g in removed if ("g", m, GROUP_PREFIX + g) in tp.expires}
    for m, g in removed:
        tp.remove_member(m, g)
    for m, g in added:
        tp.add_member(m, g)
    try:
        down: dict[str, int] = {}
        up: dict[str, int] = {}
        for m, g in added:
            if m.startswith(GROUP_PREFIX) and g in tp.groups_of(GROUP_PREFIX + g, 0.0):
                raise PolicyError(f"group {g!r} would contain itself through {m!r} (a group cycle)")
            below = tp._down_group(m[len(GROUP_PREFIX) :], down) if m.startswith(GROUP_PREFIX) else 0
            depth = below + 1 + tp._up_group(g, up)
            if depth > MAX_DEPTH:
                raise PolicyError(
                    f"{m!r} in group {g!r} makes a chain of {depth} links from a user to its top group or role; at most {MAX_DEPTH} (casbin's reach)"
                )
    finally:
        for m, g in added:
            tp.remove_member(m, g)
        for m, g in removed:
            tp.add_member(m, g)
        tp.expires.update(kept)
