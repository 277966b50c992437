"""The policy store: roles, assignments and rules with casbin semantics.

Rules are casbin rules of ``policies/model.conf`` (RBAC with domains, tenant =
domain, allow and deny effects) and persist through SQLAlchemy in the same
database as the catalog:

* ``p, <role>, <tenant>, <selector>, read, allow|deny``
* ``g, <subject>, <role>, <tenant>`` — a user or a role holds a role.

Every change is validated before anything is written, is written in one
transaction together with a bump of the policy version, and only then applied
to the in-memory state, and reported to listeners (the compiler) with the
tenant and the subjects whose visibility it may change.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sqlalchemy import Engine, and_, delete, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from . import db
from .catalog import DEFAULT_TENANT, check_tenant
from .errors import (
    BackendError,
    CatalogError,
    PolicyCSVError,
    PolicyError,
    RoleCycleError,
    SelectorError,
    UnknownRoleError,
    UnknownSubjectError,
)
from .selectors import parse_selector

log = logging.getLogger(__name__)

MODEL_PATH = Path(__file__).resolve().parent / "model.conf"
ACTION = "read"
EFFECTS = ("allow", "deny")
# casbin's role manager (max_hierarchy_level=10) finds a role at most 9 links
# above a user (measured: a 10-link chain enforces False). Deeper chains would
# make casbin and the compiler disagree, so refuse them.
MAX_DEPTH = 9

Listener = Callable[[str, "set[str] | None"], None]


@dataclass
class TenantPolicy:
    """One tenant's roles, rules and assignment graph."""

    roles: set[str] = field(default_factory=set)
    allow: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    deny: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    parents: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # subject → its roles
    children: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # role → its subjects

    def implicit_roles(self, subject: str) -> set[str]:
        """Every role ``subject`` holds, directly or through the hierarchy."""
        seen: set[str] = set()
        stack = list(self.parents.get(subject, ()))
        while stack:
            r = stack.pop()
            if r not in seen:
                seen.add(r)
                stack.extend(self.parents.get(r, ()))
        return seen

    def descendants(self, subject: str) -> set[str]:
        """``subject`` and every subject that holds it, transitively."""
        seen = {subject}
        stack = [subject]
        while stack:
            for c in self.children.get(stack.pop(), ()):
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return seen

    def users(self) -> set[str]:
        return {s for s in self.parents if s not in self.roles and self.parents[s]}

    def _height_above(self, role: str) -> int:
        return 1 + max((self._height_above(p) for p in self.parents.get(role, ())), default=0)

    def _height_below(self, subject: str) -> int:
        return max((1 + self._height_below(c) for c in self.children.get(subject, ())), default=0)

    def check_edge(self, subject: str, role: str) -> None:
        """Raise if ``subject → role`` would close a cycle or exceed MAX_DEPTH."""
        if subject == role or subject in self.implicit_roles(role):
            raise RoleCycleError(f"assigning {subject!r} to {role!r} would make a role cycle")
        depth = self._height_below(subject) + self._height_above(role)
        if depth > MAX_DEPTH:
            raise RoleCycleError(f"assigning {subject!r} to {role!r} makes the hierarchy {depth} deep (at most {MAX_DEPTH})")

    def add_edge(self, subject: str, role: str) -> None:
        self.parents[subject].add(role)
        self.children[role].add(subject)

    def remove_edge(self, subject: str, role: str) -> None:
        self.parents[subject].discard(role)
        self.children[role].discard(subject)

    def rules(self) -> Iterator[tuple[str, str, str]]:
        """(role, selector, effect) for every rule."""
        for role in sorted(self.allow):
            for sel in sorted(self.allow[role]):
                yield role, sel, "allow"
        for role in sorted(self.deny):
            for sel in sorted(self.deny[role]):
                yield role, sel, "deny"


def check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not name or name != name.strip() or len(name) > 256:
        raise PolicyError(f"{what} {name!r} must be a non-empty string of at most 256 characters")
    if any(ord(c) < 32 for c in name):
        raise PolicyError(f"{what} {name!r} contains a control character")
    return name


def _tenant(tenant: object) -> str:
    try:
        return check_tenant(tenant)
    except CatalogError as exc:
        raise PolicyError(str(exc)) from None


class Policy:
    """Roles, assignments and rules; ``rag.policy``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.version = 0
        self._tenants: dict[str, TenantPolicy] = {}
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ state
    def load(self, *, if_changed: bool = False) -> bool:
        """(Re)load every rule from the database; True if anything was read.

        Read and swap happen under the lock that every change holds while it
        writes, so a load can never put back a state older than a change this
        process has already applied (a thread that read the rules before a
        concurrent change and swapped them in after it would). ``if_changed``
        skips the read when the stored version equals the one in memory.
        """
        c = db.casbin_rule.c
        with self._lock:
            with self.engine.connect() as conn:
                version = db.read_counter(conn, "policy_version")
                if if_changed and version == self.version:
                    return False
                tenants: dict[str, TenantPolicy] = defaultdict(TenantPolicy)
                for tenant, name in conn.execute(select(db.roles.c.tenant, db.roles.c.name)):
                    tenants[tenant].roles.add(name)
                for ptype, v0, v1, v2, v3, v4 in conn.execute(select(c.ptype, c.v0, c.v1, c.v2, c.v3, c.v4)):
                    if ptype == "p":
                        (tenants[v1].allow if v4 == "allow" else tenants[v1].deny)[v0].add(v2)
                    elif ptype == "g":
                        tenants[v2].add_edge(v0, v1)
            self._tenants = dict(tenants)
            self.version = version
            self._notify(None, None)
        return True

    @property
    def lock(self) -> threading.RLock:
        """Held by every change until its listeners ran (see PermRAG.snapshot)."""
        return self._lock

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(tenant, subjects)`` after every change (``None`` = everything)."""
        self._listeners.append(listener)

    def has_tenant(self, tenant: str) -> bool:
        return tenant in self._tenants

    def tenant(self, tenant: str) -> TenantPolicy:
        return self._tenants.get(tenant) or TenantPolicy()

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    # ------------------------------------------------------------------ reading
    def roles(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        return sorted(self.tenant(tenant).roles)

    def has_role(self, role: str, tenant: str = DEFAULT_TENANT) -> bool:
        return role in self.tenant(tenant).roles

    def rules(self, role: str | None = None, tenant: str = DEFAULT_TENANT) -> list[tuple[str, str, str]]:
        """(role, selector, effect) rules of the tenant, or of one role."""
        return [r for r in self.tenant(tenant).rules() if role is None or r[0] == role]

    def roles_of(self, subject: str, tenant: str = DEFAULT_TENANT, *, implicit: bool = False) -> list[str]:
        tp = self.tenant(tenant)
        return sorted(tp.implicit_roles(subject) if implicit else tp.parents.get(subject, ()))

    def members(self, role: str, tenant: str = DEFAULT_TENANT) -> list[str]:
        return sorted(self.tenant(tenant).children.get(role, ()))

    def users(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        return sorted(self.tenant(tenant).users())

    # ------------------------------------------------------------------ changes
    def add_role(self, role: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Create a role; False if it already exists."""
        role, tenant = check_name("role", role), _tenant(tenant)
        if role in self.tenant(tenant).roles:
            return False

        def write(conn: Connection) -> None:
            conn.execute(db.roles.insert().values(tenant=tenant, name=role))

        self._commit(write, tenant, {role}, lambda tp: tp.roles.add(role))
        return True

    def remove_role(self, role: str, tenant: str = DEFAULT_TENANT) -> None:
        """Delete a role with its rules and every assignment to or from it."""
        tenant = _tenant(tenant)
        tp = self._need_role(role, tenant)
        affected = tp.descendants(role)
        c = db.casbin_rule.c

        def write(conn: Connection) -> None:
            conn.execute(delete(db.roles).where(db.roles.c.tenant == tenant, db.roles.c.name == role))
            conn.execute(delete(db.casbin_rule).where(c.ptype == "p", c.v0 == role, c.v1 == tenant))
            conn.execute(
                delete(db.casbin_rule).where(c.ptype == "g", c.v2 == tenant, (c.v0 == role) | (c.v1 == role))
            )

        def apply(tp: TenantPolicy) -> None:
            tp.roles.discard(role)
            tp.allow.pop(role, None)
            tp.deny.pop(role, None)
            for sub in list(tp.children.get(role, ())):
                tp.remove_edge(sub, role)
            for parent in list(tp.parents.get(role, ())):
                tp.remove_edge(role, parent)
            tp.children.pop(role, None)
            tp.parents.pop(role, None)

        self._commit(write, tenant, affected, apply)

    def assign(self, subject: str, role: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Give ``subject`` (a user or a role) ``role``; False if it already has it."""
        subject, tenant = check_name("subject", subject), _tenant(tenant)
        tp = self._need_role(role, tenant)
        if role in tp.parents.get(subject, ()):
            return False
        tp.check_edge(subject, role)
        affected = tp.descendants(subject)

        def write(conn: Connection) -> None:
            conn.execute(db.casbin_rule.insert().values(ptype="g", v0=subject, v1=role, v2=tenant))

        self._commit(write, tenant, affected, lambda tp: tp.add_edge(subject, role))
        return True

    def unassign(self, subject: str, role: str, tenant: str = DEFAULT_TENANT) -> None:
        """Take ``role`` away from ``subject``."""
        tenant = _tenant(tenant)
        tp = self.tenant(tenant)
        if role not in tp.parents.get(subject, ()):
            raise UnknownSubjectError(f"{subject!r} does not hold role {role!r} in tenant {tenant!r}")
        affected = tp.descendants(subject)
        c = db.casbin_rule.c

        def write(conn: Connection) -> None:
            conn.execute(
                delete(db.casbin_rule).where(c.ptype == "g", c.v0 == subject, c.v1 == role, c.v2 == tenant)
            )

        self._commit(write, tenant, affected, lambda tp: tp.remove_edge(subject, role))

    def grant(self, role: str, selector: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Allow ``role`` to read the rows ``selector`` selects; False if already allowed."""
        return self._add_rule(role, selector, "allow", tenant)

    def deny(self, role: str, selector: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Forbid ``role`` (and everyone holding it) the rows ``selector`` selects."""
        return self._add_rule(role, selector, "deny", tenant)

    def revoke(self, role: str, selector: str, tenant: str = DEFAULT_TENANT) -> None:
        """Remove the allow and deny rules of ``role`` for ``selector``."""
        tenant = _tenant(tenant)
        tp = self._need_role(role, tenant)
        sel = str(parse_selector(selector))
        if sel not in tp.allow.get(role, ()) and sel not in tp.deny.get(role, ()):
            raise PolicyError(f"role {role!r} has no rule for {sel!r} in tenant {tenant!r}")
        c = db.casbin_rule.c

        def write(conn: Connection) -> None:
            conn.execute(delete(db.casbin_rule).where(c.ptype == "p", c.v0 == role, c.v1 == tenant, c.v2 == sel))

        def apply(tp: TenantPolicy) -> None:
            tp.allow.get(role, set()).discard(sel)
            tp.deny.get(role, set()).discard(sel)

        self._commit(write, tenant, tp.descendants(role), apply)

    def _add_rule(self, role: str, selector: str, effect: str, tenant: str) -> bool:
        tenant = _tenant(tenant)
        tp = self._need_role(role, tenant)
        sel = str(parse_selector(selector))
        rules = tp.allow if effect == "allow" else tp.deny
        if sel in rules.get(role, ()):
            return False

        def write(conn: Connection) -> None:
            conn.execute(db.casbin_rule.insert().values(ptype="p", v0=role, v1=tenant, v2=sel, v3=ACTION, v4=effect))

        def apply(tp: TenantPolicy) -> None:
            (tp.allow if effect == "allow" else tp.deny)[role].add(sel)

        self._commit(write, tenant, tp.descendants(role), apply)
        return True

    def _need_role(self, role: str, tenant: str) -> TenantPolicy:
        tp = self.tenant(tenant)
        if role not in tp.roles:
            raise UnknownRoleError(f"unknown role {role!r} in tenant {tenant!r}")
        return tp

    def _commit(
        self,
        write: Callable[[Connection], None],
        tenant: str | None,
        affected: set[str] | None,
        apply: Callable[[TenantPolicy], None] | None,
    ) -> None:
        with self._lock:
            try:
                with self.engine.begin() as conn:
                    write(conn)
                    version = db.bump(conn, "policy_version")
            except SQLAlchemyError as exc:
                raise BackendError(f"policy store write failed: {exc}") from exc
            if version != self.version + 1:
                # Another process changed the policy meanwhile: reload all.
                self.load()
                return
            if tenant is not None and apply is not None:
                apply(self._tenants.setdefault(tenant, TenantPolicy()))
            self.version = version
            # Still under the lock: a reader that takes it (PermRAG.snapshot)
            # sees either the old version with the old bitmaps or the new
            # version with caches already invalidated, never a mix.
            self._notify(tenant, affected)

    def _notify(self, tenant: str | None, affected: set[str] | None) -> None:
        for listener in self._listeners:
            listener(tenant, affected)

    # ------------------------------------------------------------------ CSV
    def export_csv(self, path: str | os.PathLike[str] | None = None, tenant: str | None = None) -> str:
        """Write the policy as casbin CSV (all tenants, or one); returns the text."""
        out = io.StringIO()
        out.write(f"# permrag policy, version {self.version}\n")
        tenants = [tenant] if tenant is not None else self.tenants()
        for t in tenants:
            tp = self.tenant(t)
            for role, sel, eft in tp.rules():
                out.write(_csv_line(["p", role, t, sel, ACTION, eft]))
            for sub in sorted(tp.parents):
                for role in sorted(tp.parents[sub]):
                    out.write(_csv_line(["g", sub, role, t]))
            for role in sorted(tp.roles):
                if role not in tp.allow and role not in tp.deny and not tp.children.get(role) and not tp.parents.get(role):
                    out.write(f"# role, {role}, {t}\n")
        text = out.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def import_csv(
        self, path: str | os.PathLike[str], tenant: str | None = None, *, replace: bool = False
    ) -> int:
        """Add the rules of a casbin CSV file; all or nothing. Returns how many rules.

        ``tenant`` (optional) requires every line to be in that tenant.
        ``replace`` first removes every role, rule and assignment of the
        tenants the file names (or of ``tenant``).
        """
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policy file {name}: {exc}") from exc
        roles, prules, grules = _parse_csv(name, text, tenant)
        tenants = {t for t, _ in roles} | ({tenant} if tenant and replace else set())
        # Validate against a scratch copy of the state the import would produce.
        scratch: dict[str, TenantPolicy] = {}
        for t in tenants:
            cur = TenantPolicy() if replace else _copy(self.tenant(t))
            scratch[t] = cur
        for t, r in roles:
            scratch[t].roles.add(r)
        for lineno, sub, role, t in grules:
            tp = scratch[t]
            if role in tp.parents.get(sub, ()):
                continue
            try:
                tp.check_edge(sub, role)
            except RoleCycleError as exc:
                raise PolicyCSVError(name, lineno, str(exc)) from None
            tp.add_edge(sub, role)
        c = db.casbin_rule.c

        def write(conn: Connection) -> None:
            if replace:
                for t in tenants:
                    conn.execute(delete(db.roles).where(db.roles.c.tenant == t))
                    conn.execute(delete(db.casbin_rule).where(and_(c.ptype == "p", c.v1 == t)))
                    conn.execute(delete(db.casbin_rule).where(and_(c.ptype == "g", c.v2 == t)))
            have_roles = set() if replace else {(t, r) for t in tenants for r in self.tenant(t).roles}
            new_roles = [{"tenant": t, "name": r} for t, r in sorted(roles - have_roles)]
            if new_roles:
                conn.execute(db.roles.insert(), new_roles)
            ps = []
            for _, role, t, sel, eft in prules:
                cur = self.tenant(t)
                if not replace and sel in (cur.allow if eft == "allow" else cur.deny).get(role, ()):
                    continue
                ps.append({"ptype": "p", "v0": role, "v1": t, "v2": sel, "v3": ACTION, "v4": eft})
            gs = []
            for _, sub, role, t in grules:
                if not replace and role in self.tenant(t).parents.get(sub, ()):
                    continue
                gs.append({"ptype": "g", "v0": sub, "v1": role, "v2": t, "v3": None, "v4": None})
            rows = list({tuple(sorted(d.items())): d for d in ps + gs}.values())
            if rows:
                conn.execute(db.casbin_rule.insert(), rows)

        self._commit(write, None, None, None)
        self.load()
        return len(prules) + len(grules)


def _copy(tp: TenantPolicy) -> TenantPolicy:
    out = TenantPolicy(roles=set(tp.roles))
    for s, ps in tp.parents.items():
        for p in ps:
            out.add_edge(s, p)
    return out


def _csv_field(value: str) -> str:
    if any(ch in value for ch in ',"') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_line(fields: Iterable[str]) -> str:
    return ", ".join(_csv_field(f) for f in fields) + "\n"


def _parse_csv(
    name: str, text: str, only_tenant: str | None
) -> tuple[set[tuple[str, str]], list[tuple[int, str, str, str, str]], list[tuple[int, str, str, str]]]:
    roles: set[tuple[str, str]] = set()
    prules: list[tuple[int, str, str, str, str]] = []
    grules: list[tuple[int, str, str, str]] = []
    lines = text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            parts = [p.strip() for p in stripped[1:].split(",")]
            if len(parts) == 3 and parts[0] == "role":  # a role with no rules (export keeps it)
                roles.add((parts[2], parts[1]))
            continue
        try:
            fields = next(csv.reader([stripped], skipinitialspace=True, strict=True))
        except csv.Error as exc:
            raise PolicyCSVError(name, lineno, f"not valid CSV ({exc})") from None
        fields = [f.strip() for f in fields]
        ptype, rest = fields[0], fields[1:]
        try:
            if ptype == "p":
                if len(rest) not in (4, 5):
                    raise PolicyError(f"a p line needs role, tenant, selector, action[, effect]; got {len(rest)} fields")
                role, tenant, sel, act = (check_name("role", rest[0]), _tenant(rest[1]), rest[2], rest[3])
                eft = rest[4] if len(rest) == 5 else "allow"
                if act != ACTION:
                    raise PolicyError(f"action must be {ACTION!r}, not {act!r}")
                if eft not in EFFECTS:
                    raise PolicyError(f"effect must be 'allow' or 'deny', not {eft!r}")
                sel = str(parse_selector(sel))
                prules.append((lineno, role, tenant, sel, eft))
                roles.add((tenant, role))
            elif ptype == "g":
                if len(rest) != 3:
                    raise PolicyError(f"a g line needs subject, role, tenant; got {len(rest)} fields")
                sub, role, tenant = check_name("subject", rest[0]), check_name("role", rest[1]), _tenant(rest[2])
                grules.append((lineno, sub, role, tenant))
                roles.add((tenant, role))
            else:
                raise PolicyError(f"unknown rule type {ptype!r} (expected 'p' or 'g')")
            if only_tenant is not None and tenant != only_tenant:
                raise PolicyError(f"tenant {tenant!r} is not {only_tenant!r}")
        except (PolicyError, SelectorError) as exc:
            raise PolicyCSVError(name, lineno, str(exc)) from None
    return roles, prules, grules
