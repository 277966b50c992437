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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from ..domain.acl import Acl, AclEntry, acl_entries, folder_path
from ..domain.names import Held, as_list, check, check_id, check_tenant, expiry, principal
from ..errors import PolicyError, UnknownSubjectError
from .changes import edge_change, need_role
from .directory import Directory, check_acyclic, check_ids
from .exports import read as read_exports
from .folders import FolderEdit, folder_change
from .ldap import LdapRead, LdapSource, Progress, source_of
from .model import AGENT_PREFIX, GROUP_PREFIX, MAX_DEPTH, USER_PREFIX, Folder, TenantPolicy
from .principals import listing, require, require_future
from .provisioning import Provisioning
from .records import Change, Edge, Ident, Op
from .sync import Plan, SyncReport, plan, refuse
from .versioned import DEFAULT_TENANT, Policy


def _member(member: object) -> str:
    """``user:<id>`` / ``group:<id>`` / ``agent:<id>``; a bare name is a user."""
    text = check("member", member, max_len=262, error=PolicyError)
    if text.startswith(GROUP_PREFIX):
        return GROUP_PREFIX + check("group", text[len(GROUP_PREFIX) :], error=PolicyError)
    if text.startswith(AGENT_PREFIX):
        return AGENT_PREFIX + check_id("agent", text[len(AGENT_PREFIX) :], PolicyError)
    return USER_PREFIX + check("user", text.removeprefix(USER_PREFIX), error=PolicyError)


def _affected(tp: TenantPolicy, member: str) -> set[str]:
    """Users whose groups change when ``member``'s memberships change."""
    if member.startswith(USER_PREFIX):
        return {member[len(USER_PREFIX) :]}
    if member.startswith(AGENT_PREFIX):
        return set()  # agents' bitmaps are dropped at every policy change (access/compiler.py)
    return tp.group_users(member[len(GROUP_PREFIX) :])


class Identity:
    """Groups, memberships, folder ACLs and directory sync of one store."""

    def __init__(self, policy: Policy, denied: Callable[[str], set[str]] | None = None) -> None:
        """``denied(tenant)``: the principals document ACLs deny in ``tenant``
        (the catalog's side of the mass-removal guard)."""
        self.policy = policy
        self._denied = denied

    def provisioning(self, *, allow_mass_removal: bool = False) -> Provisioning:
        """Users and groups written one at a time by an identity provider (SCIM,
        ``permrag serve``): one policy version per write; see policy/provisioning.py."""
        return Provisioning(self.policy, self._denied, allow_mass_removal=allow_mass_removal)

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

    def members(self, group: str, tenant: str = DEFAULT_TENANT) -> list[Held]:
        """Direct members of ``group`` (``user:<id>`` / ``group:<id>``) at the
        store's clock: an expired membership is not listed, an expiring one
        carries its end (``.expires_at``, epoch seconds)."""
        self.policy.refresh()
        tp = self.policy.tenant(tenant)
        g = tp.resolve(GROUP_PREFIX, group)
        return listing(((m, ("g", m, GROUP_PREFIX + g)) for m in tp.members.get(g, ())), tp, self.policy.clock())

    def group_roles(self, group: str, tenant: str = DEFAULT_TENANT) -> dict[str, Held]:
        """Roles assigned to ``group`` now: role → the role with its ``expires_at``."""
        self.policy.refresh()
        tp = self.policy.tenant(tenant)
        g = tp.resolve(GROUP_PREFIX, group)
        return {str(r): r for r in listing(((r, ("g", GROUP_PREFIX + g, r)) for r in tp.group_roles.get(g, ())), tp, self.policy.clock())}

    def groups_of(self, user: str, tenant: str = DEFAULT_TENANT, *, now: float | None = None) -> list[Held]:
        """Groups ``user`` is in, directly or through nested groups, at ``now``
        (default: the store's clock); a direct membership carries its ``expires_at``.
        A deactivated user holds nothing: ``[]`` (the memberships stay stored, masked;
        reactivation restores them; :meth:`members` still lists them)."""
        self.policy.refresh()
        tp = self.policy.tenant(tenant)
        key = USER_PREFIX + tp.resolve(USER_PREFIX, user)
        if key[len(USER_PREFIX) :] in tp.inactive:
            return []
        at = self.policy.clock() if now is None else now
        return listing(((g, ("g", key, GROUP_PREFIX + g)) for g in tp.groups_of(key, at)), tp, at)

    def folder_acl(self, folder: str, tenant: str = DEFAULT_TENANT) -> Acl:
        self.policy.refresh()
        path = folder_path(folder, PolicyError)
        f = self.policy.tenant(tenant).folders.get(path, Folder())
        return Acl(tuple(AclEntry(p, t) for p, t in sorted(f.allow.items())), tuple(AclEntry(p, t) for p, t in sorted(f.deny.items())), path, f.inherit)

    # ------------------------------------------------------------------ memberships and group roles
    def add_member(self, group: str, member: str, tenant: str = DEFAULT_TENANT, *, expires_at: object = None, allow_unknown: bool = False) -> bool:
        """Put ``member`` (``user:<id>``, ``group:<id>``, or a bare user id) in ``group``
        (each an id or an unambiguous label), until ``expires_at`` (a future time) if given.

        Both must be known to the tenant (else :class:`UnknownPrincipalError`
        naming the closest one: a misspelt group would be a new, empty one)
        unless ``allow_unknown`` — how a group the provider does not sync is made."""
        tenant, given = check_tenant(tenant, PolicyError), _member(member)
        named = check("group", group, error=PolicyError)
        until = require_future(expiry(expires_at, "expires_at", PolicyError), self.policy.clock(), "expires_at")

        def make(tp: TenantPolicy) -> Change | None:
            where = f"membership of {given} in group:{named}"
            key = require(tp, given, tenant, where, allow_unknown=allow_unknown)
            group = require(tp, GROUP_PREFIX + named, tenant, where, allow_unknown=allow_unknown)[len(GROUP_PREFIX) :]
            edge = ("g", key, GROUP_PREFIX + group)
            held = group in tp.member_of.get(key, ())
            if held and tp.expires.get(edge) == until:
                return None
            if not held:
                tp.check_member(key, group)
            return edge_change(tenant, edge, held, until, set(), _affected(tp, key))

        return self.policy._one(tenant, make)

    def remove_member(self, group: str, member: str, tenant: str = DEFAULT_TENANT) -> None:
        named = group
        tenant, given = check_tenant(tenant, PolicyError), _member(member)

        def make(tp: TenantPolicy) -> Change:
            key, group = tp.resolve_key(given), tp.resolve(GROUP_PREFIX, named)
            if group not in tp.member_of.get(key, ()):
                raise UnknownSubjectError(f"{key!r} is not a member of group {group!r} in tenant {tenant!r}")
            return Change.of("remove_member", {tenant}, [Edge(False, tenant, key, GROUP_PREFIX + group)], set(), _affected(tp, key))

        self.policy._one(tenant, make)

    def assign_group(self, group: str, role: str, tenant: str = DEFAULT_TENANT, *, expires_at: object = None, allow_unknown: bool = False) -> bool:
        """Give every member of ``group`` (transitively) ``role``, until ``expires_at``
        (a future time) if given. The role must exist; the group must be known
        to the tenant unless ``allow_unknown`` (as for :meth:`add_member`)."""
        tenant = check_tenant(tenant, PolicyError)
        named = check("group", group, error=PolicyError)
        until = require_future(expiry(expires_at, "expires_at", PolicyError), self.policy.clock(), "expires_at")

        def make(tp: TenantPolicy) -> Change | None:
            need_role(tp, role, tenant)
            group = require(tp, GROUP_PREFIX + named, tenant, f"group:{named} assigned {role!r}", allow_unknown=allow_unknown)[len(GROUP_PREFIX) :]
            edge = ("g", GROUP_PREFIX + group, role)
            held = role in tp.group_roles.get(group, ())
            if held and tp.expires.get(edge) == until:
                return None
            if not held:
                tp.check_group_role(group, role)
            return edge_change(tenant, edge, held, until, set(), tp.group_users(group))

        return self.policy._one(tenant, make)

    def unassign_group(self, group: str, role: str, tenant: str = DEFAULT_TENANT) -> None:
        tenant = check_tenant(tenant, PolicyError)
        named = group

        def make(tp: TenantPolicy) -> Change:
            group = tp.resolve(GROUP_PREFIX, named)
            if role not in tp.group_roles.get(group, ()):
                raise UnknownSubjectError(f"group {group!r} does not hold role {role!r} in tenant {tenant!r}")
            return Change.of("unassign_group", {tenant}, [Edge(False, tenant, GROUP_PREFIX + group, role)], set(), tp.group_users(group))

        self.policy._one(tenant, make)

    # ------------------------------------------------------------------ folder ACLs
    def set_folder_acl(
        self,
        folder: str,
        *,
        allow: Iterable[object] = (),
        deny: Iterable[object] = (),
        remove: Iterable[object] = (),
        inherit: bool | None = None,
        replace: bool = False,
        allow_unknown: bool = False,
        tenant: str = DEFAULT_TENANT,
    ) -> bool:
        """Change ``folder``'s own ACL: add the ``allow`` and ``deny`` entries (an
        entry already there takes the new expiry), drop the principals in
        ``remove``, set ``inherit`` if given. ``replace=True`` makes the ACL
        exactly ``allow`` / ``deny`` / ``inherit`` (default true) instead.

        Every principal added must name a user, group or role of the tenant
        (else :class:`UnknownPrincipalError` naming the closest one) unless
        ``allow_unknown``; an expiry must be in the future. Documents below
        the folder (that do not break inheritance) and subfolders (that
        inherit) get the change at the next read. Returns whether it changed."""
        tenant, path = check_tenant(tenant, PolicyError), folder_path(folder, PolicyError)
        edit = FolderEdit(
            acl_entries(as_list(allow, "allow"), f"allow of folder {path!r}", PolicyError),
            acl_entries(as_list(deny, "deny"), f"deny of folder {path!r}", PolicyError),
            tuple(principal(p, PolicyError) for p in as_list(remove, "remove")),
            None if inherit is None else bool(inherit),
            bool(replace),
            bool(allow_unknown),
        )
        edit.check()
        now = self.policy.clock()
        for e in (*edit.allow, *edit.deny):
            require_future(e.expires_at, now, f"expires_at of {e.principal!r} in folder {path!r}")
        return self.policy._one(tenant, lambda tp: folder_change(tp, tenant, path, edit))

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
            directory, where = source, "<directory>"
            check_acyclic(where, directory)
        else:
            files = [source] if isinstance(source, (str, os.PathLike)) else list(source)
            directory, where = self.read(files, format), ", ".join(map(str, files))
        check_ids(where, directory)  # every source alike: export files, LDAP, a Directory made by hand
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

    def read_ldap(
        self, source: LdapSource | str, *, base: str | None = None, bind_dn: str | None = None, password: str | None = None, starttls: bool = False, progress: Progress | None = None
    ) -> LdapRead:
        """Read every user and group of an LDAP directory (policy/ldap.py): a URL with
        the connection arguments, or an :class:`LdapSource` for every setting. All pages
        are read or an error raised (:class:`BackendError` / :class:`ConfigError`)."""
        from .ldap_client import read as read_directory

        return read_directory(source_of(source, base, bind_dn, password, starttls), progress)

    def sync_ldap(
        self,
        source: LdapSource | str,
        *,
        base: str | None = None,
        bind_dn: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        tenant: str = DEFAULT_TENANT,
        dry_run: bool = False,
        allow_mass_removal: bool = False,
    ) -> SyncReport:
        """:meth:`sync` from an LDAP directory, read completely first (:meth:`read_ldap`):
        a connection lost mid-read applies nothing; the guards and ``dry_run`` are :meth:`sync`'s."""
        got = self.read_ldap(source, base=base, bind_dn=bind_dn, password=password, starttls=starttls)
        return self.sync(got.directory, tenant=tenant, dry_run=dry_run, allow_mass_removal=allow_mass_removal)


def _sync_change(tp: TenantPolicy, tenant: str, p: Plan) -> Change:
    """The validated change that applies plan ``p``."""
    added, removed = p.added, p.removed
    _check_added(tp, removed, added)  # applies and reverts: depth and cycles of the new state
    users: set[str] | None
    if any(m.startswith(GROUP_PREFIX) for m, _ in added + removed + p.renewed):
        users = None  # nesting changed: every cached user of the tenant is recomputed
    else:
        users = {k[len(USER_PREFIX) :] for k in p.ident if k.startswith(USER_PREFIX)}
        for m, _ in added + removed + p.renewed:
            users |= _affected(tp, m)
    ops: list[Op] = [Edge(False, tenant, m, GROUP_PREFIX + g) for m, g in removed + p.renewed]
    ops += [Ident(False, tenant, k) for k in sorted(p.ident)]
    ops += [Edge(True, tenant, m, GROUP_PREFIX + g) for m, g in added + p.renewed]
    ops += [Ident(True, tenant, k, label or "", off) for k, (label, off) in sorted(p.ident.items()) if label is not None or off]
    return Change.of("sync", {tenant}, ops, None if users is None else set(), users)


def _check_added(tp: TenantPolicy, removed: list[tuple[str, str]], added: list[tuple[str, str]]) -> None:
    """Raise if the memberships after the change hold a cycle or a chain over
    :data:`MAX_DEPTH` links. The old state was valid and removals only shorten
    chains, so only chains through an added edge are checked — on ``tp``
    itself, changed and changed back (the caller holds the state lock)."""
    kept: dict[tuple[str, ...], float] = {("g", m, GROUP_PREFIX + g): tp.expires[("g", m, GROUP_PREFIX + g)] for m, g in removed if ("g", m, GROUP_PREFIX + g) in tp.expires}
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
                raise PolicyError(f"{m!r} in group {g!r} makes a chain of {depth} links from a user to its top group or role; at most {MAX_DEPTH} (casbin's reach)")
    finally:
        for m, g in added:
            tp.remove_member(m, g)
        for m, g in removed:
            tp.add_member(m, g)
        tp.expires.update(kept)
