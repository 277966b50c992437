"""The exposure report: who was served rows they may no longer read, and how
they could read them then.

Every serve is in the audit log with its user, tenant, policy version and the
row IDs it returned (``search``, ``recommend``, ``fetch``). The policy change
log (policy/deltas.py) keeps, per version, the rule rows each change added and
removed, so the policy as it stood at any retained version is the stored
policy with the later changes undone. The report takes the audited serves
(of one document, one user, or since a time), keeps the rows the user may not
read under the reference policy — the current one, or the one at ``version``
— and for each gives the path that allowed it when it was served, the first
later version that ended that access (``ended_version``, ``ended_at``) and
``late``: the serve happened after that change had committed (a stale
answer — what the consistency contract exists to prevent).

Rows are judged with the catalog as it is now (a row since deleted is not
reported: nobody may read it); what a row's attributes were when it was served
is not kept. Versions older than the retained history give ``path=None``
(``decision="history pruned"``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pyroaring import FrozenBitMap
from sqlalchemy import select

from ..catalog import DEFAULT_TENANT, DocumentRecord, RowRecord
from ..errors import ArgumentError, UnknownRowError
from ..policy import TenantPolicy
from ..policy.deltas import policy_at, read_log
from ..storage import db
from .compiler import Compiler
from .explain import explain_row

SERVES = ("search", "recommend", "fetch")
MAX_STEPS = 500  # later versions of the tenant looked at for the one that ended an access


@dataclass(frozen=True)
class Exposure:
    """One row served to a user who may not read it under the reference policy."""

    time: float
    event: str
    user: str
    agent: str | None
    tenant: str
    external_id: str
    row_id: int
    served_version: int
    decision: str  # how the row was readable when served (explain's decision), or "history pruned"
    path: str | None  # the explanation at the served version
    ended_version: int | None
    ended_at: float | None
    late: bool  # served after the change that ended the access had committed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _AtVersion:
    """A policy as it was at one version: what :class:`Compiler` reads."""

    def __init__(self, version: int, tenants: dict[str, TenantPolicy]) -> None:
        self.version = version
        self._tenants = tenants

    def tenant(self, tenant: str) -> TenantPolicy:
        return self._tenants.get(tenant) or TenantPolicy()

    def tenants(self) -> list[str]:
        return sorted(self._tenants)


def _rows(value: Any) -> Iterator[int]:
    if isinstance(value, list):
        for v in value:
            yield from _rows(v)
    elif isinstance(value, int) and not isinstance(value, bool):
        yield value


def check_filters(document: object, user: object, since: object, version: object) -> None:
    if document is not None and (not isinstance(document, str) or not document):
        raise ArgumentError(f"document must be a non-empty external id, not {document!r}")
    if user is not None and (not isinstance(user, str) or not user):
        raise ArgumentError(f"user must be a non-empty string, not {user!r}")
    if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since)):
        raise ArgumentError(f"since must be epoch seconds, not {since!r}")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ArgumentError(f"version must be a policy version (an integer >= 0), not {version!r}")


class Report:
    """One exposure report's state: the policies at the versions it needs, cached."""

    def __init__(self, access: Any, tenant: str) -> None:
        self.access = access
        self.tenant = tenant
        self._policies: dict[int, TenantPolicy | None] = {}
        self._views: dict[tuple[int, str, float], FrozenBitMap] = {}
        self._later: dict[tuple[int, int], list[tuple[int, float]]] = {}

    def policy(self, version: int) -> TenantPolicy | None:
        if version not in self._policies:
            with db.reading(self.access.engine, "reading the policy history") as conn:
                self._policies[version] = policy_at(conn, self.tenant, version)
        return self._policies[version]

    def visible(self, version: int, user: str, at: float) -> FrozenBitMap | None:
        tp = self.policy(version)
        if tp is None:
            return None
        key = (version, user, at)
        if key not in self._views:
            frozen = _AtVersion(version, {self.tenant: tp})
            with self.access.lock:
                self._views[key] = Compiler(self.access.catalog, frozen, self.access.lock, lambda: at, listen=False).visible(user, self.tenant)  # type: ignore[arg-type]
        return self._views[key]

    def ended(self, user: str, row: int, served: int, upto: int) -> tuple[int | None, float | None]:
        """The first version after ``served`` under which ``user`` no longer reads ``row``."""
        key = (served, upto)
        if key not in self._later:
            with db.reading(self.access.engine, "reading the policy history") as conn:
                self._later[key] = [(d.version, d.ts) for d in read_log(conn, served, upto) if self.tenant in d.tenants][:MAX_STEPS]
        for version, ts in self._later[key]:
            view = self.visible(version, user, ts)
            if view is not None and row not in view:
                return version, ts
        return None, None

    def explain(self, user: str, rec: RowRecord, version: int, at: float) -> tuple[str, str | None]:
        tp = self.policy(version)
        if tp is None:
            return "history pruned", None

        def live(ids: Sequence[int]) -> dict[int, RowRecord]:
            records: dict[int, RowRecord] = self.access.catalog.rows.records(ids)
            return records

        with self.access.lock:
            lineage = self.access.catalog.tenant(self.tenant).derived
            e = explain_row(tp, live, user, rec, at, lineage)
        return e.decision, str(e)


def serves(access: Any, tenant: str, user: str | None, since: float | None) -> list[Any]:
    """Audited serves of ``tenant`` (of ``user``, since ``since``), oldest first."""
    if access.audit is not None:
        access.audit.flush()
    a = db.audit.c
    q = select(a.ts, a.event, a.user, a.agent, a.tenant, a.policy_version, a.detail).where(a.tenant == tenant, a.event.in_(SERVES)).order_by(a.id)
    if user is not None:
        q = q.where(a.user == user)
    if since is not None:
        q = q.where(a.ts >= since)
    with db.reading(access.engine, "reading the audit log") as conn:
        return list(conn.execute(q).all())


def exposure(access: Any, *, document: str | None = None, user: str | None = None, since: float | None = None, tenant: str = DEFAULT_TENANT, version: int | None = None) -> list[Exposure]:
    """Audited serves of rows the user may not read under the current policy
    (or the one at ``version``), with the path that allowed each then (see the module docstring)."""
    check_filters(document, user, since, version)
    access.refresh()
    access.check_tenant_known(tenant)
    wanted: set[int] | None = None
    if document is not None:
        rec = access.find(document, tenant)
        if rec is None:
            raise UnknownRowError(f"no row {document!r} in tenant {tenant!r} (nor a document of that name)")
        wanted = set(rec.row_ids if isinstance(rec, DocumentRecord) else [rec.row_id])
    report = Report(access, tenant)
    now_version = access.policy.version
    ref_version = now_version if version is None else version
    if version is not None and version > now_version:
        raise ArgumentError(f"policy version {version} is not one this store has had (it is at {now_version})")
    if version is not None and report.policy(version) is None:
        raise ArgumentError(f"policy version {version} is older than the retained policy history (policy_history_days)")
    clock = access.compiler.clock()
    live_rows = access.catalog.tenant(tenant).rows
    out: list[Exposure] = []
    for ts, event, who, agent, _t, served, detail in serves(access, tenant, user, since):
        rows = [r for r in dict.fromkeys(_rows(json.loads(detail or "{}").get("rows", []))) if r in live_rows and (wanted is None or r in wanted)]
        if not rows or who is None or served is None:
            continue
        ref = access.compiler.visible(who, tenant) if version is None else report.visible(ref_version, who, clock)
        if ref is None:  # (the reference version was checked above: it can be rebuilt)
            continue
        recs = access.catalog.rows.records([r for r in rows if r not in ref])
        for rid, rec in recs.items():
            decision, path = report.explain(who, rec, int(served), ts)
            ended, ended_at = report.ended(who, rid, int(served), ref_version)
            out.append(Exposure(ts, event, who, agent, tenant, rec.external_id, rid, int(served), decision, path, ended, ended_at, ended_at is not None and ts > ended_at))
    return out
