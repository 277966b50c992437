"""The versioned policy: transactional changes with casbin semantics.

Rules persist as casbin rules of ``model.conf`` through SQLAlchemy, in the
same database as the catalog:

* ``p, <role>, <tenant>, <selector>, read, allow|deny``
* ``g, <role>, <parent role>, <tenant>`` — a role inherits a role;
* ``g, user:<id>, <role>, <tenant>`` — a user holds a role.

**Every change runs against the stored policy, not this process's copy.**
Its transaction first bumps the policy version (``db.bump``: the row lock on
PostgreSQL, the write lock on SQLite, so writers in all processes queue
there); if the version it took is not this copy's plus one, another process
changed the policy since, and the copy catches up (by the logged deltas,
policy/deltas.py) inside the same transaction. Only then is the change
validated (unknown role, cycle, depth, already present) and built: a
:class:`~permrag.policy.records.Change`, data — its kind, the typed rows it
removes and adds, and whose caches it touches. policy/writes.py writes it;
the rows it removed and added are logged under the version and applied to
this copy exactly as every other process applies them. So a deny is never
skipped, a revoke of a rule granted elsewhere is found, and two processes
cannot build a cycle between them. A change that turns out to change nothing,
or fails validation, rolls back and leaves the version where it was.

Changes hold the state lock (shared with the catalog and the compiler) from
before their transaction until listeners (the compiler's cache invalidation)
have run, so a reader under that lock sees either the old version with old
bitmaps or the new version with the caches already invalidated.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..domain.names import Held, check, check_role, check_tenant, expiry
from ..domain.selectors import parse_selector
from ..errors import PolicyError, UnknownSubjectError
from ..storage import db
from .agents import AgentPolicy
from .changes import edge_change, role_ops
from .changes import need_role as _need_role
from .csv import import_change as csv_import_change
from .csv import parse as csv_parse
from .csv import read as csv_read
from .csv import render as csv_render
from .deltas import Following, record
from .model import USER_PREFIX, TenantPolicy
from .persist import apply_rows, read_all
from .principals import listing, require_future, user_id
from .records import Change, Delta, Edge, RoleDef, Rule
from .writes import write

log = logging.getLogger(__name__)

MODEL_PATH = Path(__file__).resolve().parent / "model.conf"
ACTION = "read"
DEFAULT_TENANT = "default"

Listener = Callable[["str | None", "set[str] | None", "set[str] | None"], None]


class _NoChange(Exception):
    """Raised inside a change's transaction when it would change nothing."""


def _tenant(tenant: object) -> str:
    return check_tenant(tenant, PolicyError)


def _user(user: object) -> str:
    return user_id(user)


class Policy(AgentPolicy, Following):
    """Roles, assignments and rules of every tenant (and agents: policy/agents.py); ``rag.policy``."""

    def __init__(self, engine: Engine, lock: threading.RLock | None = None, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock  # the store's clock: expiries in the past are refused, listings leave out what has expired
        self.version = 0
        self._tenants: dict[str, TenantPolicy] = {}
        self._listeners: list[Listener] = []
        self.lock = lock or threading.RLock()

    # ------------------------------------------------------------------ state
    def load(self) -> None:
        """Reload every rule from the database (under the state lock)."""
        with self.lock:
            for _ in range(10):
                with db.reading(self.engine, "reading the policy") as conn:
                    version = db.read_counter(conn, "policy_version")
                    tenants = read_all(conn)
                    if db.read_counter(conn, "policy_version") == version:
                        break
            self._tenants, self.version = tenants, version
            self._notify(None, None, None)

    def refresh(self) -> bool:
        """Catch up with what another process changed (policy/deltas.py); True if anything did."""
        return self.catch_up()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(tenant, roles, users)`` after every change (``None`` = everything)."""
        self._listeners.append(listener)

    def _notify(self, tenant: str | None, roles: set[str] | None, users: set[str] | None) -> None:
        for listener in self._listeners:
            listener(tenant, roles, users)

    # ------------------------------------------------------------------ reading
    # has_tenant / tenant / tenants answer from this process's copy (callers
    # sync first); the named queries below refresh it from the store first.
    def has_tenant(self, tenant: str) -> bool:
        return tenant in self._tenants

    def tenant(self, tenant: str) -> TenantPolicy:
        return self._tenants.get(tenant) or TenantPolicy()

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def roles(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        self.refresh()
        return sorted(self.tenant(tenant).roles)

    def has_role(self, role: str, tenant: str = DEFAULT_TENANT) -> bool:
        self.refresh()
        return role in self.tenant(tenant).roles

    def rules(self, role: str | None = None, tenant: str = DEFAULT_TENANT) -> list[tuple[str, str, str]]:
        """(role, selector, effect) rules of the tenant, or of one role."""
        self.refresh()
        return [r for r in self.tenant(tenant).rules() if role is None or r[0] == role]

    def roles_of(self, user: str, tenant: str = DEFAULT_TENANT, *, implicit: bool = False) -> list[Held]:
        """The roles a *user* holds now (assigned, each with its assignment's ``expires_at``; or with ``implicit`` also inherited);
        ``[]`` for a user the identity provider deactivated: they hold nothing (the assignments stay, and reactivation restores them)."""
        self.refresh()
        tp, now = self.tenant(tenant), self.clock()
        return [] if user in tp.inactive else listing(((r, ("g", USER_PREFIX + user, r)) for r in tp.roles_of_user(user, implicit=implicit, now=now)), tp, now)

    def parents_of(self, role: str, tenant: str = DEFAULT_TENANT, *, implicit: bool = False) -> list[str]:
        """The roles a *role* inherits (directly, or with ``implicit`` transitively)."""
        self.refresh()
        tp = self.tenant(tenant)
        return sorted(tp.inherited(role) - {role} if implicit else tp.parents.get(role, set()))

    def members(self, role: str, tenant: str = DEFAULT_TENANT) -> list[Held]:
        """Users assigned ``role`` directly and now (each with its ``expires_at``)."""
        self.refresh()
        tp = self.tenant(tenant)
        return listing(((u, ("g", USER_PREFIX + u, role)) for u in tp.role_users.get(role, set())), tp, self.clock())

    def heirs(self, role: str, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Roles that inherit ``role`` directly."""
        self.refresh()
        return sorted(self.tenant(tenant).children.get(role, set()))

    def has_user(self, user: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Whether ``user`` holds any role in ``tenant``."""
        self.refresh()
        return bool(self.tenant(tenant).user_roles.get(user))

    def users(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Users with at least one role in ``tenant``."""
        self.refresh()
        return sorted(self.tenant(tenant).users())

    # ------------------------------------------------------------------ the one way to change
    def _change(self, tenants: set[str], make: Callable[..., Change | None], *, reads: bool = False) -> bool:
        """Validate and apply one change against the stored policy (see the module docstring)."""
        with self.lock:
            behind: list[Delta] | None = []  # what another process changed since this copy (None: reloaded whole)
            try:
                with db.transaction(self.engine, "policy change") as conn:
                    version = db.bump(conn, "policy_version")
                    if version != self.version + 1:
                        behind = self._behind(conn, version - 1)
                    current = {t: self._tenants.get(t) or TenantPolicy() for t in tenants}
                    change = make(current, conn) if reads else make(current)
                    if change is None:
                        raise _NoChange
                    delta = record(conn, version, change, write(conn, change), time.time())
            except _NoChange:
                self._announce(behind)
                return False
            except IntegrityError as exc:
                self._announce(behind)
                raise PolicyError(f"policy change conflicts with the stored policy: {str(exc.orig).splitlines()[0]}") from None
            except BaseException:
                self._announce(behind)
                raise
            apply_rows(self._tenants, delta.removed, delta.added, delta.tenants)  # what the store did, as every other process applies it
            self.version = version
            self._announce(behind)
            roles, users = (None if v is None else set(v) for v in (change.roles, change.users))
            for t in sorted(change.tenants):
                self._notify(t, roles, users)
            return True

    def _one(self, tenant: str, make: Callable[[TenantPolicy], Change | None]) -> bool:
        return self._change({tenant}, lambda cur: make(cur[tenant]))

    def _one_reading(self, tenant: str, make: Callable[[TenantPolicy, Connection], Change | None]) -> bool:
        """:meth:`_one` for a change that reads the store in its transaction (a version check, stored extras)."""
        return self._change({tenant}, lambda cur, conn: make(cur[tenant], conn), reads=True)

    # ------------------------------------------------------------------ changes
    def add_role(self, role: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Create a role; False if it already exists."""
        role, tenant = check_role(role, PolicyError), _tenant(tenant)

        def make(tp: TenantPolicy) -> Change | None:
            if role in tp.roles:
                return None
            return Change.of("add_role", {tenant}, [RoleDef(True, tenant, role)], {role})

        return self._one(tenant, make)

    def remove_role(self, role: str, tenant: str = DEFAULT_TENANT) -> None:
        """Delete a role with its rules, its inheritance and its assignments."""
        tenant = _tenant(tenant)

        def make(tp: TenantPolicy) -> Change:
            _need_role(tp, role, tenant)
            roles, users = tp.holders(role)
            return Change.of("remove_role", {tenant}, role_ops(tp, tenant, role), roles, users)

        self._one(tenant, make)

    def assign(self, subject: str, role: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Give ``subject`` ``role``; False if it already holds it.

        ``subject`` names a role when the tenant has a role of that name (the
        role then inherits ``role``), else a user. For names that come from an
        identity provider — which may equal a role's name — use
        :meth:`assign_user`, and :meth:`inherit` for role inheritance.
        """
        tenant = _tenant(tenant)
        name = check("subject", subject, error=PolicyError)

        def make(tp: TenantPolicy) -> Change | None:
            return self._inherit(tp, name, role, tenant) if name in tp.roles else self._assign_user(tp, user_id(name), role, tenant)

        return self._one(tenant, make)

    def assign_user(self, user: str, role: str, tenant: str = DEFAULT_TENANT, *, expires_at: object = None) -> bool:
        """Give user ``user`` ``role`` (``user`` is always a user id, whatever roles exist),
        until ``expires_at`` if given (epoch seconds, aware datetime or ISO 8601)."""
        user, tenant = _user(user), _tenant(tenant)
        until = require_future(expiry(expires_at, "expires_at", PolicyError), self.clock(), "expires_at")
        return self._one(tenant, lambda tp: self._assign_user(tp, user, role, tenant, until))

    def inherit(self, role: str, parent: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Make ``role`` inherit ``parent`` (both roles); False if it already does."""
        tenant = _tenant(tenant)
        return self._one(tenant, lambda tp: self._inherit(tp, role, parent, tenant))

    def _assign_user(self, tp: TenantPolicy, user: str, role: str, tenant: str, until: float | None = None) -> Change | None:
        _need_role(tp, role, tenant)
        user = tp.resolve(USER_PREFIX, user)
        key = ("g", USER_PREFIX + user, role)
        held = role in tp.user_roles.get(user, ())
        if held and tp.expires.get(key) == until:
            return None
        if not held:
            tp.check_assign(user, role)
        return edge_change(tenant, key, held, until, set(), {user})

    def _inherit(self, tp: TenantPolicy, role: str, parent: str, tenant: str) -> Change | None:
        _need_role(tp, role, tenant)
        _need_role(tp, parent, tenant)
        if parent in tp.parents.get(role, ()):
            return None
        tp.check_inherit(role, parent)
        roles, users = tp.holders(role)
        return Change.of("inherit", {tenant}, [Edge(True, tenant, role, parent)], roles, users)

    def unassign(self, subject: str, role: str, tenant: str = DEFAULT_TENANT) -> None:
        """Take ``role`` away from ``subject`` (a role that inherits it, else a user)."""
        tenant = _tenant(tenant)

        def make(tp: TenantPolicy) -> Change:
            if subject in tp.roles and role in tp.parents.get(subject, ()):
                return self._uninherit(tp, subject, role, tenant)
            return self._unassign_user(tp, subject, role, tenant)

        self._one(tenant, make)

    def unassign_user(self, user: str, role: str, tenant: str = DEFAULT_TENANT) -> None:
        """Take ``role`` away from user ``user``."""
        tenant = _tenant(tenant)
        self._one(tenant, lambda tp: self._unassign_user(tp, user, role, tenant))

    def uninherit(self, role: str, parent: str, tenant: str = DEFAULT_TENANT) -> None:
        """Stop ``role`` inheriting ``parent``."""
        tenant = _tenant(tenant)
        self._one(tenant, lambda tp: self._uninherit(tp, role, parent, tenant))

    def _unassign_user(self, tp: TenantPolicy, user: str, role: str, tenant: str) -> Change:
        user = tp.resolve(USER_PREFIX, user if tp.user_roles.get(user) else user_id(user))  # a stored phantom (user:bob) may be cleaned up
        if role not in tp.user_roles.get(user, ()):
            raise UnknownSubjectError(f"user {user!r} does not hold role {role!r} in tenant {tenant!r}")
        return Change.of("unassign_user", {tenant}, [Edge(False, tenant, USER_PREFIX + user, role)], set(), {user})

    def _uninherit(self, tp: TenantPolicy, role: str, parent: str, tenant: str) -> Change:
        if parent not in tp.parents.get(role, ()):
            raise UnknownSubjectError(f"role {role!r} does not inherit {parent!r} in tenant {tenant!r}")
        roles, users = tp.holders(role)
        return Change.of("uninherit", {tenant}, [Edge(False, tenant, role, parent)], roles, users)

    def grant(self, role: str, selector: str, tenant: str = DEFAULT_TENANT, *, expires_at: object = None) -> bool:
        """Allow ``role`` to read the rows ``selector`` selects (until ``expires_at``); False if already allowed."""
        return self._add_rule(role, selector, "allow", tenant, expires_at)

    def deny(self, role: str, selector: str, tenant: str = DEFAULT_TENANT, *, expires_at: object = None) -> bool:
        """Forbid ``role`` (and everyone holding it) the rows ``selector`` selects (until ``expires_at``)."""
        return self._add_rule(role, selector, "deny", tenant, expires_at)

    def revoke(self, role: str, selector: str, tenant: str = DEFAULT_TENANT) -> None:
        """Remove the allow and deny rules of ``role`` for ``selector``."""
        tenant = _tenant(tenant)
        sel = str(parse_selector(selector))

        def make(tp: TenantPolicy) -> Change:
            _need_role(tp, role, tenant)
            effects = [eft for eft, by in (("allow", tp.allow), ("deny", tp.deny)) if sel in by.get(role, ())]
            if not effects:
                raise PolicyError(f"role {role!r} has no rule for {sel!r} in tenant {tenant!r}")
            roles, users = tp.holders(role)
            return Change.of("revoke", {tenant}, [Rule(False, tenant, role, sel, eft) for eft in effects], roles, users)

        self._one(tenant, make)

    def _add_rule(self, role: str, selector: str, effect: str, tenant: str, expires_at: object = None) -> bool:
        tenant = _tenant(tenant)
        sel = str(parse_selector(selector))
        until = require_future(expiry(expires_at, "expires_at", PolicyError), self.clock(), "expires_at")
        key = ("p", role, sel, effect)

        def make(tp: TenantPolicy) -> Change | None:
            _need_role(tp, role, tenant)
            held = sel in (tp.allow if effect == "allow" else tp.deny).get(role, ())
            if held and tp.expires.get(key) == until:
                return None
            roles, users = tp.holders(role)
            gone = [Rule(False, tenant, role, sel, effect)] if held else []
            return Change.of("grant" if effect == "allow" else "deny", {tenant}, [*gone, Rule(True, tenant, role, sel, effect, until)], roles, users)

        return self._one(tenant, make)

    # ------------------------------------------------------------------ CSV
    def export_csv(self, path: str | os.PathLike[str] | None = None, tenant: str | None = None) -> str:
        """The policy as casbin CSV (all tenants, or one); written to ``path`` if given."""
        self.refresh()
        with self.lock:
            names = [tenant] if tenant is not None else self.tenants()
            text = csv_render(self.version, {t: self.tenant(t) for t in names}, self.clock())
        if path is not None:
            try:
                Path(path).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise PolicyError(f"cannot write policy file {path}: {exc.strerror or exc}") from None
        return text

    def import_csv(self, path: str | os.PathLike[str], tenant: str | None = None, *, replace: bool = False, **allow: bool) -> int:
        """Add the rules of a casbin CSV file, all or nothing; returns how many lines took effect.

        ``tenant`` (optional) requires every line to be in that tenant.
        ``replace`` first removes every role, rule and assignment of the
        tenants the file names (and of ``tenant``). A line whose expiry has
        passed is refused unless ``allow_expired=True``; a membership in, or
        an ACL line naming, a group, user or role that neither the store nor
        the file knows is refused unless ``allow_unknown=True`` (csv_check.py).
        """
        return self.import_text(csv_read(path), name=str(path), tenant=tenant, replace=replace, **allow)

    def import_text(self, text: str, *, name: str = "<policy>", tenant: str | None = None, replace: bool = False, allow_expired: bool = False, allow_unknown: bool = False) -> int:
        """:meth:`import_csv` for CSV text already in memory."""
        parsed = csv_parse(name, text, tenant, None if allow_expired else self.clock())
        tenants = parsed.tenants() | ({tenant} if tenant else set())
        counted: list[int] = [0]
        self._change(tenants, lambda current: csv_import_change(name, parsed, tenants, current, replace, counted, allow_unknown))
        return counted[0]
