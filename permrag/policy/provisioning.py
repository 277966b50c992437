"""Live provisioning: an identity provider writes users and groups one at a time
(SCIM 2.0, ``permrag serve``), as deltas rather than whole exports.

Every write is one policy change (one version, seen by every process at its
next read); a refused write changes nothing. The state is the one directory
sync keeps (policy/sync.py), so a provisioned tenant answers exactly like a
synced one:

* a user ``user:<id>`` is its ``ident`` row: the label (``userName``) and
  whether it is deactivated (``active: false``: it holds nothing, its
  memberships stay stored and come back with reactivation). The row also
  keeps what only the provider reads back: ``externalId`` (``v4``) and a small
  JSON of ``displayName`` and the created / modified times (``v5``);
* a group ``group:<id>`` is its ``ident`` row (label ``displayName``) and its
  direct members, permanent ``g`` edges;
* the id is permanent: the provider's ``externalId`` when it is a usable id
  not held by another live resource, else a fresh random one. Deleting a user
  drops its label and memberships and keeps it deactivated (as a sync does
  when a user leaves the export), so a deletion never widens access.

A write that replaces a group's members wholesale (SCIM ``PUT``, a ``replace``
of ``members``, a delete) or removes several named members or a group, and would
empty a group holding a deny or take more than half of its members, is refused with :class:`MassRemovalError`
unless provisioning was opened with ``allow_mass_removal``: losing a deny
widens access. Each resource has a version (SCIM ``meta.version``); a write
given a version that is no longer the stored one raises
:class:`VersionMismatchError` inside the change, so nothing is applied.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeAlias

from sqlalchemy.engine import Connection

from ..domain.names import check_id, check_tenant
from ..errors import MassRemovalError, PolicyError, ResourceConflictError, UnknownPrincipalError, UnknownSubjectError, VersionMismatchError
from ..storage import db
from .model import GROUP_PREFIX, USER_PREFIX, TenantPolicy
from .provisioned import (
    Extras,
    GroupFields,
    ProvisionedGroup,
    ProvisionedUser,
    UserFields,
    extras_of,
    group_keys,
    group_record,
    ident_record,
    is_group,
    is_user,
    select_keys,
    text,
    user_keys,
    user_record,
)
from .records import Change, Edge, Ident, Op, op_of
from .sync import _acl_denied, _denies_itself
from .versioned import DEFAULT_TENANT, Policy


def _new_id(tp: TenantPolicy, prefix: str, external_id: str | None, live: Callable[[TenantPolicy, str], bool]) -> str:
    """The provider's externalId when it is a usable id no live resource holds, else a random one."""
    if external_id is not None:
        try:
            ident = check_id(prefix.rstrip(":"), external_id, PolicyError)
        except PolicyError:
            ident = None
        if ident is not None and not live(tp, prefix + ident):
            return ident
    return uuid.uuid4().hex


def _check_version(current: str, wanted: str | None, what: str) -> None:
    if wanted is not None and wanted != current:
        raise VersionMismatchError(f"{what} is at version {current!r}, not {wanted!r}: it changed since it was read; nothing was changed")


class Provisioning:
    """Users and groups of one store, written one at a time by an identity provider."""

    UserFields: TypeAlias = UserFields
    GroupFields: TypeAlias = GroupFields

    def __init__(self, policy: Policy, denied: Callable[[str], set[str]] | None = None, *, allow_mass_removal: bool = False) -> None:
        self.policy = policy
        self._denied = denied
        self.allow_mass_removal = allow_mass_removal

    def _denials(self, tenant: str) -> set[str]:
        """Principals the tenant's document ACLs deny (read before a guarded change, outside its lock)."""
        return self._denied(tenant) if self._denied is not None else set()

    # ------------------------------------------------------------------ reading
    def _state(self, tenant: str, key: str | None = None) -> tuple[TenantPolicy, dict[str, Extras], float]:
        tenant = check_tenant(tenant, PolicyError)
        self.policy.refresh()
        with db.reading(self.policy.engine, "reading provisioned identities") as conn:
            extras = extras_of(conn, tenant, key)
        return self.policy.tenant(tenant), extras, self.policy.clock()

    def _select(self, tenant: str, keys: Callable[[TenantPolicy], set[str]], where: tuple[str, str] | None) -> tuple[TenantPolicy, list[str], dict[str, Extras], float]:
        tenant = check_tenant(tenant, PolicyError)
        self.policy.refresh()
        tp = self.policy.tenant(tenant)
        with db.reading(self.policy.engine, "reading provisioned identities") as conn:
            hit, extras = select_keys(conn, tenant, tp, keys(tp), where)
        return tp, hit, extras, self.policy.clock()

    def users(self, tenant: str = DEFAULT_TENANT, *, where: tuple[str, str] | None = None) -> list[ProvisionedUser]:
        """Every user the provider sees (labelled or in a group), by id; ``where`` =
        (``id`` | ``userName`` | ``externalId``, value) keeps the matching ones."""
        tp, keys, extras, now = self._select(tenant, user_keys, where)
        return [user_record(tp, k[len(USER_PREFIX) :], extras.get(k, (None, {})), now) for k in keys]

    def user(self, uid: str, tenant: str = DEFAULT_TENANT) -> ProvisionedUser:
        key = USER_PREFIX + str(text("user id", uid))
        tp, extras, now = self._state(tenant, key)
        if not is_user(tp, key):
            raise UnknownSubjectError(f"no user with id {uid!r} in tenant {tenant!r}")
        return user_record(tp, uid, extras.get(key, (None, {})), now)

    def groups(self, tenant: str = DEFAULT_TENANT, *, where: tuple[str, str] | None = None) -> list[ProvisionedGroup]:
        """Every group the provider sees (labelled, or with members or a parent group), by id;
        ``where`` = (``id`` | ``displayName`` | ``externalId``, value) keeps the matching ones."""
        tp, keys, extras, now = self._select(tenant, group_keys, where)
        return [group_record(tp, k[len(GROUP_PREFIX) :], extras.get(k, (None, {})), now) for k in keys]

    def group(self, gid: str, tenant: str = DEFAULT_TENANT) -> ProvisionedGroup:
        key = GROUP_PREFIX + str(text("group id", gid))
        tp, extras, now = self._state(tenant, key)
        if not is_group(tp, key):
            raise UnknownSubjectError(f"no group with id {gid!r} in tenant {tenant!r}")
        return group_record(tp, gid, extras.get(key, (None, {})), now)

    # ------------------------------------------------------------------ users
    def create_user(self, fields: UserFields, tenant: str = DEFAULT_TENANT) -> ProvisionedUser:
        """Provision a user; its id is the ``externalId`` when usable and free, else random."""
        return self.user(self._write_user(None, fields, tenant, None), tenant)

    def replace_user(self, uid: str, fields: UserFields, tenant: str = DEFAULT_TENANT, *, if_version: str | None = None) -> ProvisionedUser:
        """Make user ``uid`` exactly ``fields`` (``active=False``: deactivated, holds nothing)."""
        return self.user(self._write_user(uid, fields, tenant, if_version), tenant)

    def _write_user(self, uid: str | None, f: UserFields, tenant: str, if_version: str | None) -> str:
        tenant = check_tenant(tenant, PolicyError)
        name, shown = text("userName", f.user_name), text("displayName", f.display_name, optional=True)
        ext = text("externalId", f.external_id, optional=True)
        now, done = self.policy.clock(), []

        def make(tp: TenantPolicy, conn: Connection) -> Change:
            ident = _new_id(tp, USER_PREFIX, ext, is_user) if uid is None else uid
            key = USER_PREFIX + ident
            if uid is not None and not is_user(tp, key):
                raise UnknownSubjectError(f"no user with id {uid!r} in tenant {tenant!r}")
            lower = str(name).casefold()
            taken = [k for k, v in tp.labels.items() if k != key and k.startswith(USER_PREFIX) and v.casefold() == lower]
            if taken:
                raise ResourceConflictError(f"userName {name!r} is held by user {taken[0][len(USER_PREFIX) :]!r} in tenant {tenant!r}")
            done.append(ident)
            off = f.active is False  # left out: SCIM's default, active (the provider could as well send true)
            old = extras_of(conn, tenant, key).get(key, (None, {}))
            if uid is not None:
                _check_version(user_record(tp, ident, old, now).version, if_version, f"user {ident!r}")
            more = {"d": shown, "c": old[1].get("c", now), "m": now, "a": 0 if f.active is None else 1}
            return Change.of("write_user", {tenant}, [Ident(False, tenant, key), _ident(ident_record(key, tenant, name, off, ext, more))], set(), {ident})

        self.policy._one_reading(tenant, make)
        return done[-1]

    def delete_user(self, uid: str, tenant: str = DEFAULT_TENANT, *, if_version: str | None = None) -> None:
        """Deprovision a user: its label and memberships go, and it stays deactivated
        (its id holds nothing, whatever still names it)."""
        tenant = check_tenant(tenant, PolicyError)
        key, now = USER_PREFIX + str(text("user id", uid)), self.policy.clock()

        def make(tp: TenantPolicy, conn: Connection) -> Change:
            if not is_user(tp, key):
                raise UnknownSubjectError(f"no user with id {uid!r} in tenant {tenant!r}")
            _check_version(user_record(tp, uid, extras_of(conn, tenant, key).get(key, (None, {})), now).version, if_version, f"user {uid!r}")
            ops: list[Op] = [Edge(False, tenant, key, GROUP_PREFIX + g) for g in sorted(tp.member_of.get(key, ()))]
            return Change.of("delete_user", {tenant}, [*ops, Ident(False, tenant, key), Ident(True, tenant, key, "", True)], set(), {uid})

        self.policy._one_reading(tenant, make)

    # ------------------------------------------------------------------ groups
    def create_group(self, fields: GroupFields, tenant: str = DEFAULT_TENANT) -> ProvisionedGroup:
        """Provision a group with its members; its id is the ``externalId`` when usable and free, else random."""
        return self.group(self._write_group(None, fields, tenant, None, False), tenant)

    def replace_group(self, gid: str, fields: GroupFields, tenant: str = DEFAULT_TENANT, *, if_version: str | None = None, wholesale: bool = True) -> ProvisionedGroup:
        """Make group ``gid`` exactly ``fields``. ``wholesale``: the members were given
        as a whole (a PUT, a replace of all members), so the mass-removal guard applies;
        to a removal of named members it applies when it names more than one, or a
        group (a single write must not empty a deny group by listing every member)."""
        return self.group(self._write_group(gid, fields, tenant, if_version, wholesale), tenant)

    def _write_group(self, gid: str | None, f: GroupFields, tenant: str, if_version: str | None, wholesale: bool) -> str:
        tenant = check_tenant(tenant, PolicyError)
        name, ext = text("displayName", f.display_name), text("externalId", f.external_id, optional=True)
        given = [(kind, str(text("member value", v))) for kind, v in f.members]
        # a wholesale write, or one that names several members or a group to remove, is
        # guarded; removing one user by name (Okta's way) never is
        guarded = not self.allow_mass_removal and gid is not None
        now, done, denied = self.policy.clock(), [], self._denials(tenant) if guarded else set()

        def make(tp: TenantPolicy, conn: Connection) -> Change:
            ident = _new_id(tp, GROUP_PREFIX, ext, is_group) if gid is None else gid
            if gid is not None and not is_group(tp, GROUP_PREFIX + ident):
                raise UnknownSubjectError(f"no group with id {gid!r} in tenant {tenant!r}")
            old = set(tp.members.get(ident, ()))
            kept = {m for m in old if not m.startswith((USER_PREFIX, GROUP_PREFIX))}  # members SCIM does not see (agents)
            new = {_member_key(tp, kind, v, tenant) for kind, v in given} | kept
            for m in sorted(new - old):
                tp.check_member(m, ident)
            gone = old - new
            if guarded and (wholesale or len(gone) > 1 or any(m.startswith(GROUP_PREFIX) for m in gone)):
                _guard(tp, ident, old, new, denied)  # one user removed by name is never a mass removal; a group may hold many
            done.append(ident)
            previous = extras_of(conn, tenant, GROUP_PREFIX + ident).get(GROUP_PREFIX + ident, (None, {}))
            if if_version is not None:
                _check_version(group_record(tp, ident, previous, now).version, if_version, f"group {ident!r}")
            return _group_change(tp, tenant, ident, (name, ext), old, new, (previous, now))

        self.policy._one_reading(tenant, make)
        return done[-1]

    def delete_group(self, gid: str, tenant: str = DEFAULT_TENANT, *, if_version: str | None = None) -> None:
        """Deprovision a group: its label and every membership in or of it go. A
        group that holds a deny is not emptied this way unless ``allow_mass_removal``."""
        tenant = check_tenant(tenant, PolicyError)
        key, now = GROUP_PREFIX + str(text("group id", gid)), self.policy.clock()
        denied = set() if self.allow_mass_removal else self._denials(tenant)

        def make(tp: TenantPolicy, conn: Connection) -> Change:
            if not is_group(tp, key):
                raise UnknownSubjectError(f"no group with id {gid!r} in tenant {tenant!r}")
            old, parents = set(tp.members.get(gid, ())), sorted(tp.member_of.get(key, ()))
            if not self.allow_mass_removal:
                _guard(tp, gid, old, set(), denied)
            _check_version(group_record(tp, gid, extras_of(conn, tenant, key).get(key, (None, {})), now).version, if_version, f"group {gid!r}")
            # every membership in it (agents' too) and of it in other groups
            ops: list[Op] = [*(Edge(False, tenant, m, key) for m in sorted(old)), *(Edge(False, tenant, key, GROUP_PREFIX + p) for p in parents)]
            return Change.of("delete_group", {tenant}, [*ops, Ident(False, tenant, key)], None, None)

        self.policy._one_reading(tenant, make)


def _member_key(tp: TenantPolicy, kind: str | None, ident: str, tenant: str) -> str:
    """``user:<id>`` / ``group:<id>`` of a member reference; it must name a provisioned user or group."""
    user, group = is_user(tp, USER_PREFIX + ident), is_group(tp, GROUP_PREFIX + ident)
    if kind is not None and kind.casefold() not in ("user", "group"):
        raise PolicyError(f"member type {kind!r} is not User or Group")
    if (kind or "").casefold() == "user" or (kind is None and user and not group):
        if not user:
            raise UnknownPrincipalError(f"member {ident!r}: no user with that id in tenant {tenant!r}")
        return USER_PREFIX + ident
    if (kind or "").casefold() == "group" or (kind is None and group and not user):
        if not group:
            raise UnknownPrincipalError(f"member {ident!r}: no group with that id in tenant {tenant!r}")
        return GROUP_PREFIX + ident
    if user and group:
        raise PolicyError(f"member {ident!r} is the id of a user and of a group: give its type")
    raise UnknownPrincipalError(f"member {ident!r}: no user or group with that id in tenant {tenant!r}")


def _users_below(tp: TenantPolicy, direct: set[str]) -> set[str]:
    users = {m[len(USER_PREFIX) :] for m in direct if m.startswith(USER_PREFIX)}
    for m in direct:
        if m.startswith(GROUP_PREFIX):
            users |= tp.group_users(m[len(GROUP_PREFIX) :])
    return users


def _guard(tp: TenantPolicy, gid: str, old: set[str], new: set[str], denied: set[str]) -> None:
    """Refuse emptying a deny-holding group, or taking more than half of its members."""
    removed = old - new
    if not removed:
        return
    acl = _acl_denied(tp, denied)
    if not any(_denies_itself(tp, g, acl) for g in {gid} | tp.groups_of(GROUP_PREFIX + gid, 0.0)):
        return
    shown = tp.shown(GROUP_PREFIX + gid)
    if _users_below(tp, old) and not _users_below(tp, new):
        why = f"it removes every member of {shown}, which holds a deny: its members would lose it"
    elif 2 * len(removed) > len(old):
        why = f"it removes {len(removed)} of the {len(old)} members of {shown}, which holds a deny (more than half)"
    else:
        return
    raise MassRemovalError(f"provisioning refused: {why}; nothing was applied. Start the server with --allow-mass-removal if it is right")


def _group_change(tp: TenantPolicy, tenant: str, gid: str, ident: tuple[str | None, str | None], old: set[str], new: set[str], stored: tuple[Extras, float]) -> Change:
    """The change that makes group ``gid`` labelled ``ident[0]`` with direct members ``new``
    (``stored``: the group's stored extras, and now)."""
    key = GROUP_PREFIX + gid
    added, removed = sorted(new - old), sorted(old - new)
    previous, now = stored
    nested = any(m.startswith(GROUP_PREFIX) for m in added + removed)
    users = tp.group_users(gid) | _users_below(tp, set(added) | set(removed))
    more = {"c": previous[1].get("c", now), "m": now}
    ops: list[Op] = [*(Edge(False, tenant, m, key) for m in removed), Ident(False, tenant, key)]
    ops += [Edge(True, tenant, m, key) for m in added] + [_ident(ident_record(key, tenant, ident[0], False, ident[1], more))]
    return Change.of("group", {tenant}, ops, None if nested else set(), None if nested else users)


def _ident(row: dict[str, Any]) -> Op:
    """The typed addition of a stored identity row."""
    return op_of(tuple(row[k] for k in ("ptype", "v0", "v1", "v2", "v3", "v4", "v5")), True)
