"""Who may read what, answered at the stored versions.

:class:`Access` keeps this process's policy and catalog in step with the
database and answers every permission question after checking that they
are: each call first reads the stored policy and catalog versions (one small
query) and reloads what another process changed, so a revoke committed in any
process holds for the next answer in every process — a search, ``visible``,
``can_read``, ``explain``, ``who_can_see`` or a plan.

It also resolves names to rows: an external id is a row, or a document made
of chunk rows (``<id>#<n>`` whose parent is ``<id>``); a document is readable
when every one of its chunks is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from pyroaring import FrozenBitMap
from sqlalchemy import Engine

from ..catalog import DEFAULT_TENANT, Catalog, DocumentRecord, RowRecord
from ..domain.names import Held, check_text
from ..errors import (
    ArgumentError,
    NotReadableError,
    UnknownRowError,
    UnknownSubjectError,
    UnknownTenantError,
)
from ..policy import Policy
from ..policy.model import AGENT_PREFIX, USER_PREFIX
from ..storage import db, direct
from .compiler import Compiler, Snapshot
from .explain import Explanation, delegated, explain_document, explain_row
from .lint import lint

Record = RowRecord | DocumentRecord
MAX_ENDS = 64  # expiries looked ahead for who_can_see's ends


def _sees(compiler: Compiler, kind: str, name: str, tenant: str, ids: Sequence[int]) -> bool:
    view = {"users": compiler.visible, "groups": compiler.group_visible, "roles": compiler.role_visible, "agents": compiler.agent_visible}[kind](name, tenant)
    return all(i in view for i in ids)


def check_principal(what: str, name: object) -> str:
    """A user or tenant a caller asks about: any non-empty string UTF-8 can hold.

    A name that could never be stored (surrounding spaces, control
    characters, too long) is not an error here: it is simply unknown, and an
    unknown user sees nothing.
    """
    if not isinstance(name, str) or not name:
        raise ArgumentError(f"{what} must be a non-empty string, not {name!r}")
    return check_text(what, name, ArgumentError)


def check_agents(agent: object) -> tuple[str, ...]:
    """The agents a delegated request names: None (no agent), one agent id, or a
    chain of them (RFC 8693 nested ``act``: the current actor first), each of
    which must be allowed. Like a user, an agent that could never be stored is
    simply unknown (it sees nothing)."""
    if agent is None:
        return ()
    chain = [agent] if isinstance(agent, str) else agent
    if not isinstance(chain, (list, tuple)) or not chain:
        raise ArgumentError(f"agent must be an agent id or a non-empty list of them, not {agent!r}")
    return tuple(check_principal("agent", a) for a in chain)


class Access:
    """Permission answers for one store (policy + catalog + compiler)."""

    def __init__(self, engine: Engine, policy: Policy, catalog: Catalog, compiler: Compiler, lock: threading.RLock, audit: Any = None) -> None:
        self.engine = engine
        self.audit = audit  # the audit log (audit.AuditLog): can_read records a check
        self.policy = policy
        self.catalog = catalog
        self.compiler = compiler
        self.lock = lock

    # ------------------------------------------------------------------ versions
    def versions(self) -> dict[str, int]:
        """The stored versions (one read; another process may have moved them)."""
        quick = direct.for_engine(self.engine)
        if quick is not None:
            return quick.counters()
        with db.reading(self.engine, "reading the policy version") as conn:
            return db.read_counters(conn)

    def refresh(self) -> bool:
        """Reload what another process changed; True if anything was reloaded."""
        counters = self.versions()
        changed = False
        if counters["catalog_version"] != self.catalog.version:
            with self.lock:
                if counters["catalog_version"] != self.catalog.version:
                    self.catalog.load()
                    changed = True
        if counters["policy_version"] > self.policy.version:
            # by logged deltas (policy/deltas.py), read without the state lock
            changed = self.policy.catch_up(counters["policy_version"]) or changed
        elif counters["policy_version"] < self.policy.version:
            changed = self.policy.catch_up() or changed  # the store went back (a restore): reload
        return changed

    def check_tenant_known(self, tenant: str) -> None:
        """Raise :class:`UnknownTenantError` for a tenant with neither rows nor policy."""
        check_principal("tenant", tenant)
        self._tenant_known(tenant)

    def _tenant_known(self, tenant: str) -> None:
        """:meth:`check_tenant_known` of a name checked already."""
        if tenant != DEFAULT_TENANT and not self.catalog.has_tenant(tenant) and not self.policy.has_tenant(tenant):
            raise UnknownTenantError(f"unknown tenant {tenant!r}: it has no rows and no policy")

    def check_user_known(self, user: str, tenant: str) -> None:
        """Raise :class:`UnknownSubjectError` for a user who holds no role in the
        tenant. (The library lets unknown users see nothing; a tool that names
        a user — the CLI — reports a typo instead.)"""
        self.refresh()
        self.check_tenant_known(tenant)
        if not self.is_known(user, tenant):
            raise UnknownSubjectError(f"unknown user {user!r} in tenant {tenant!r} (holds no role, is in no group, no ACL names it; would see nothing)")

    def check_agent_known(self, agent: str, tenant: str) -> None:
        """Raise :class:`UnknownSubjectError` for an agent that holds no role, is in no
        group and is named by no ACL in the tenant (a tool that names one reports a typo)."""
        check_principal("agent", agent)
        self.refresh()
        self.check_tenant_known(tenant)
        with self.lock:
            key = AGENT_PREFIX + agent
            if self.policy.tenant(tenant).known(key) or self.policy.tenant(tenant).member_of.get(key) or key in self.compiler.acls(tenant).principals():
                return
        raise UnknownSubjectError(f"unknown agent {agent!r} in tenant {tenant!r} (holds no role, is in no group, no ACL names it; would see nothing)")

    def agent_visible(self, agent: str, tenant: str) -> FrozenBitMap:
        """Rows agent ``agent`` may read in ``tenant`` — what it can add to a user's view, never more."""
        check_principal("agent", agent)
        check_principal("tenant", tenant)
        self.refresh()
        return self.compiler.agent_visible(agent, tenant)

    def is_known(self, user: str, tenant: str) -> bool:
        """Whether ``user`` holds a role, is in a group, or is named by an ACL entry."""
        with self.lock:
            tp = self.policy.tenant(tenant)
            if tp.user_roles.get(user) or tp.member_of.get(USER_PREFIX + user):
                return True
            return USER_PREFIX + user in self.compiler.acls(tenant).principals()

    def denied_principals(self, tenant: str) -> set[str]:
        """Principals some document or folder ACL of ``tenant`` denies (at the stored versions)."""
        self.refresh()
        with self.lock:
            return set(self.compiler.acls(tenant).deny)

    # ------------------------------------------------------------------ bitmaps
    def snapshot(self, user: str, tenant: str, agent: object = None) -> Snapshot:
        """The caller's bitmap and the versions it belongs to (after a sync); with
        ``agent`` (an id or a chain), the rows the user *and* every agent may read."""
        check_principal("user", user)
        check_principal("tenant", tenant)
        return self.snapshot_of(user, tenant, check_agents(agent))

    def snapshot_of(self, user: str, tenant: str, agents: tuple[str, ...]) -> Snapshot:
        """:meth:`snapshot` of names the caller checked already (the search path
        checks its arguments once, search/searcher.py); ``agents``: as
        :func:`check_agents` returns them."""
        self.refresh()
        self._tenant_known(tenant)
        return self.compiler.snapshot(user, tenant, agents)

    def snapshots(self, users: Sequence[str], tenant: str, agent: object = None) -> list[Snapshot]:
        """Snapshots of several users (each through ``agent``, if given), all of one version."""
        for u in users:
            check_principal("user", u)
        agents = check_agents(agent)
        self.refresh()
        self.check_tenant_known(tenant)
        with self.lock:
            return [self.compiler.snapshot(u, tenant, agents) for u in users]

    def visible(self, user: str, tenant: str) -> FrozenBitMap:
        check_principal("user", user)
        check_principal("tenant", tenant)
        self.refresh()
        return self.compiler.visible(user, tenant)

    # ------------------------------------------------------------------ rows and documents
    def find(self, external_id: str, tenant: str) -> Record | None:
        """The row, or the document of several chunks, called ``external_id``."""
        if not isinstance(external_id, str) or not external_id:
            raise ArgumentError(f"external id must be a non-empty string, not {external_id!r}")
        rows = self.catalog.rows.document(external_id, tenant)
        if not rows:
            return None
        if rows[0].external_id == external_id:
            return rows[0]
        return DocumentRecord(external_id, tenant, tuple(rows))

    def row(self, external_id: str, tenant: str) -> Record:
        rec = self.find(external_id, tenant)
        if rec is None:
            raise UnknownRowError(f"no row {external_id!r} in tenant {tenant!r} (nor a document of that name)")
        return rec

    def row_ids(self, rec: Record) -> list[int]:
        return rec.row_ids if isinstance(rec, DocumentRecord) else [rec.row_id]

    def can_read(self, user: str, external_id: str, tenant: str, agent: object = None) -> bool:
        """Whether ``user`` (through ``agent``, if given) may read the row or document; False also
        when it does not exist. Audited as a ``check`` (the answer is a serve: it tells what exists)."""
        agents = check_agents(agent)
        ok = self.readable(user, external_id, tenant, quiet=True, agent=agents or None) is not None
        if self.audit is not None:
            self.audit.record("check", user, tenant, self.policy.version, {"external_id": external_id, "readable": ok}, agents=agents)
        return ok

    def readable(self, user: str, external_id: str, tenant: str, *, snapshot: Snapshot | None = None, quiet: bool = False, agent: object = None) -> Record | None:
        """The record if ``user`` (through ``agent``) may read it; else :class:`NotReadableError`
        (or None when ``quiet``) — the same for a hidden and a missing row."""
        check_principal("user", user)
        check_principal("tenant", tenant)
        snap = snapshot
        if snap is None:
            agents = check_agents(agent)
            self.refresh()
            snap = self.compiler.snapshot(user, tenant, agents)
        rec = self.find(external_id, tenant) if isinstance(external_id, str) and external_id else None
        if rec is not None and all(r in snap.visible for r in self.row_ids(rec)):
            return rec
        if quiet:
            return None
        raise NotReadableError(f"no row {external_id!r} that {user!r} may read in tenant {tenant!r}")

    # ------------------------------------------------------------------ explanations
    def explain(self, user: str, external_id: str, tenant: str, agent: object = None) -> Explanation:
        """Whether ``user`` may read the row or document, and the path and rule that decide it;
        with ``agent`` (an id or a chain), the user's and each agent's, readable only if all are."""
        check_principal("user", user)
        agents = check_agents(agent)
        parts = [self._explain(user, external_id, tenant, "user"), *(self._explain(a, external_id, tenant, "agent") for a in agents)]
        return delegated(parts) if agents else parts[0]

    def _explain(self, name: str, external_id: str, tenant: str, kind: str) -> Explanation:
        """One principal's explanation (``kind``: user or agent)."""
        self.refresh()
        rec = self.row(external_id, tenant)

        def live(ids: Sequence[int]) -> dict[int, RowRecord]:
            have = self.catalog.tenant(tenant).rows
            return {i: r for i, r in self.catalog.rows.records(ids).items() if i in have}

        with self.lock:
            tp = self.policy.tenant(tenant)
            now = self.compiler.clock()
            lineage = self.catalog.tenant(tenant).derived
            if isinstance(rec, DocumentRecord):
                return explain_document(tp, live, name, rec.external_id, rec.chunks, now, lineage, kind=kind)
            return explain_row(tp, live, name, rec, now, lineage, kind=kind)

    def who_can_see(self, external_id: str, tenant: str) -> dict[str, list[Held]]:
        """The users, groups and roles that may read a row or document (every chunk of it) now.

        Users are every user the tenant knows — assigned a role, in a group,
        or named by an ACL — who can read it, however they reach it (through
        nested groups included). A group or role is listed when a member
        holding only it could read it; ``groups`` is there when the tenant
        has groups, ``agents`` (what each agent may read for a user who may)
        when it has agents. Each name carries ``expires_at``: when an expiry stored
        now ends its reading (None: none does)."""
        self.refresh()
        ids = self.row_ids(self.row(external_id, tenant))
        with self.lock:
            tp = self.policy.tenant(tenant)
            named = {p[len(USER_PREFIX) :] for p in self.compiler.acls(tenant).principals() if p.startswith(USER_PREFIX)}
            acl_agents = {p[len(AGENT_PREFIX) :] for p in self.compiler.acls(tenant).principals() if p.startswith(AGENT_PREFIX)}
            subjects = {"users": sorted(tp.users() | named), "roles": sorted(tp.roles), "groups": sorted(tp.groups()), "agents": sorted(tp.agents() | acl_agents)}
            now = {kind: [n for n in names if _sees(self.compiler, kind, n, tenant, ids)] for kind, names in subjects.items()}
            ends = self._ends(tenant, ids, now)
        out = {kind: [Held(n, ends.get((kind, n))) for n in names] for kind, names in now.items()}
        if not tp.groups():
            del out["groups"]
        if not subjects["agents"]:
            del out["agents"]  # ``agents`` is there when the tenant has agents
        return out

    def _ends(self, tenant: str, ids: Sequence[int], now: dict[str, list[str]]) -> dict[tuple[str, str], float]:
        """(kind, name) → the first expiry at which it stops reading ``ids`` (under the state lock)."""
        left = {(kind, n) for kind, names in now.items() for n in names}
        out: dict[tuple[str, str], float] = {}
        tp, t = self.policy.tenant(tenant), self.compiler.clock()
        for _ in range(MAX_ENDS):
            later = [x for x in (tp.next_expiry(t), self.compiler.at(t).acls(tenant).until) if x is not None]
            if not left or not later:
                break
            t = min(later)
            then = self.compiler.at(t)
            for kind, n in sorted(left):
                if not _sees(then, kind, n, tenant, ids):
                    out[(kind, n)] = t
                    left.discard((kind, n))
        return out

    def lint(self, tenant: str) -> list[dict[str, Any]]:
        self.refresh()
        with self.lock:
            return lint(self.policy, self.compiler, tenant)
