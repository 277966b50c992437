"""Groups, memberships, folder ACLs and directory sync: ``rag.identity``.

Identity arrives from the identity provider (users in nested groups) and from
source systems (ACLs on folders and documents). Both are stored with the
policy (policy/persist.py), so every change is one versioned transaction
seen by every process at its next read, like a role change:

* memberships ``g, user:<id>, group:<g>`` and ``g, group:<a>, group:<b>``;
* group roles ``g, group:<g>, <role>``;
* folder ACLs (``acl`` / ``noinherit`` rows); documents carry their own ACL
  in the catalog (catalog/rows.py) and inherit their folder's.

:meth:`Identity.sync` makes the tenant's memberships equal to an export's:
edges that disappeared are removed, unchanged ones cost nothing, and the
policy version moves once (not at all when nothing changed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from sqlalchemy import bindparam, delete
from sqlalchemy.engine import Connection

from .. import db
from ..acl import Acl, AclEntry, acl_entries, folder_path
from ..errors import IdentityFileError, PolicyError, UnknownSubjectError
from ..names import check, check_tenant, expiry
from .changes import edge_change, need_role
from .directory import Directory, check_acyclic, parse
from .model import GROUP_PREFIX, MAX_DEPTH, USER_PREFIX, Change, Folder, TenantPolicy
from .persist import FOLDER_ACL, NO_INHERIT, stamp
from .store import DEFAULT_TENANT, Policy


@dataclass(frozen=True)
class SyncReport:
    """What a sync changed (or, dry, would change)."""

    tenant: str
    added: tuple[tuple[str, str], ...]  # (member key, group)
    removed: tuple[tuple[str, str], ...]
    unchanged: int
    users: int
    groups: int
    applied: bool
    policy_version: int

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "added": [f"{m} → group:{g}" for m, g in self.added],
            "removed": [f"{m} → group:{g}" for m, g in self.removed],
            "unchanged": self.unchanged,
            "users": self.users,
            "groups": self.groups,
            "applied": self.applied,
            "policy_version": self.policy_version,
        }


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

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    # ------------------------------------------------------------------ reading
    def groups(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        self.policy.refresh()
        return sorted(self.policy.tenant(tenant).groups())

    def members(self, group: str, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Direct members of ``group`` (``user:<id>`` / ``group:<id>``)."""
        self.policy.refresh()
        return sorted(self.policy.tenant(tenant).members.get(group, ()))

    def groups_of(self, user: str, tenant: str = DEFAULT_TENANT, *, now: float | None = None) -> list[str]:
        """Groups ``user`` is in, directly or through nested groups (unexpired)."""
        self.policy.refresh()
        return sorted(self.policy.tenant(tenant).groups_of(USER_PREFIX + user, now))

    def folder_acl(self, folder: str, tenant: str = DEFAULT_TENANT) -> Acl:
        self.policy.refresh()
        path = folder_path(folder, PolicyError)
        f = self.policy.tenant(tenant).folders.get(path, Folder())
        return Acl(
            tuple(AclEntry(p, t) for p, t in sorted(f.allow.items())), tuple(AclEntry(p, t) for p, t in sorted(f.deny.items())), path, f.inherit
        )

    # ------------------------------------------------------------------ memberships and group roles
    def add_member(self, group: str, member: str, tenant: str = DEFAULT_TENANT, *, expires_at: object = None) -> bool:
        """Put ``member`` (``user:<id>``, ``group:<id>``, or a bare user id) in ``group``."""
        tenant, key = check_tenant(tenant, PolicyError), _member(member)
        group = check("group", group, error=PolicyError)
        until = expiry(expires_at, "expires_at", PolicyError)
        edge = ("g", key, GROUP_PREFIX + group)

        def make(tp: TenantPolicy) -> Change | None:
            held = group in tp.member_of.get(key, ())
            if held and tp.expires.get(edge) == until:
                return None
            if not held:
                tp.check_member(key, group)
            return edge_change(tenant, edge, held, until, lambda t: t.add_member(key, group), set(), _affected(tp, key))

        return self.policy._one(tenant, make)

    def remove_member(self, group: str, member: str, tenant: str = DEFAULT_TENANT) -> None:
        tenant, key = check_tenant(tenant, PolicyError), _member(member)
        c = db.casbin_rule.c

        def make(tp: TenantPolicy) -> Change:
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
        group = check("group", group, error=PolicyError)
        until = expiry(expires_at, "expires_at", PolicyError)
        edge = ("g", GROUP_PREFIX + group, role)

        def make(tp: TenantPolicy) -> Change | None:
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

        def make(tp: TenantPolicy) -> Change:
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
        """Parse one or more export files (all formats are read before anything is applied)."""
        out = Directory()
        for src in sources:
            name = str(src)
            try:
                text = Path(src).read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as exc:
                raise IdentityFileError(name, f"byte {exc.start}", "not UTF-8") from None
            except OSError as exc:
                raise PolicyError(f"cannot read identity file {name}: {exc.strerror or exc}") from None
            out.merge(parse(name, text, fmt))
        check_acyclic(", ".join(map(str, sources)), out)
        return out

    def sync(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Directory,
        *,
        tenant: str = DEFAULT_TENANT,
        format: str | None = None,
        dry_run: bool = False,
    ) -> SyncReport:
        """Make ``tenant``'s memberships those of the export (files or a :class:`Directory`)."""
        tenant = check_tenant(tenant, PolicyError)
        if isinstance(source, Directory):
            directory = source
            check_acyclic("<directory>", directory)
        else:
            files = [source] if isinstance(source, (str, os.PathLike)) else list(source)
            directory = self.read(files, format)
        want = directory.edges()
        report: list[SyncReport] = []

        def make(tp: TenantPolicy) -> Change | None:
            have = {(m, g) for m, gs in tp.member_of.items() for g in gs}
            added, removed = sorted(want - have), sorted(have - want)
            report.append(
                SyncReport(tenant, tuple(added), tuple(removed), len(want & have), len(directory.users), len(directory.groups), False, self.policy.version)
            )
            if dry_run or not (added or removed):
                return None
            users: set[str] = set()
            for m, _ in added + removed:
                users |= _affected(tp, m)
            _check_added(tp, removed, added)  # applies and reverts: depth and cycles of the new state
            for m, _ in added + removed:
                if m.startswith(GROUP_PREFIX):
                    users = None  # nesting changed: every cached user of the tenant is recomputed
                    break
            c = db.casbin_rule.c

            def write(conn: Connection) -> None:
                if removed:
                    gone = delete(db.casbin_rule).where(
                        c.ptype == "g", c.v0 == bindparam("m"), c.v1 == bindparam("g"), c.v2 == tenant
                    )
                    conn.execute(gone, [{"m": m, "g": GROUP_PREFIX + g} for m, g in removed])
                rows = [{"ptype": "g", "v0": m, "v1": GROUP_PREFIX + g, "v2": tenant, "v3": None, "v4": None, "v5": None} for m, g in added]
                for part in db.chunks(rows, 1000):
                    conn.execute(db.casbin_rule.insert(), list(part))

            def apply(s: dict[str, TenantPolicy]) -> None:
                for m, g in removed:
                    s[tenant].remove_member(m, g)
                for m, g in added:
                    s[tenant].add_member(m, g)

            return Change(write, apply, {tenant}, None if users is None else set(), users)

        applied = self.policy._one(tenant, make)
        r = report[-1]
        return SyncReport(r.tenant, r.added, r.removed, r.unchanged, r.users, r.groups, applied, self.policy.version)


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
