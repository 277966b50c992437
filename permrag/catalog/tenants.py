"""Tenant numbers: each tenant's rows live in a Milvus collection of their own.

A tenant's number is allocated the first time rows of it are prepared and
never changes; the search backend names the tenant's collection by it (the
tenant's name itself, which may hold any character, never reaches Milvus).
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from ..errors import BackendError
from ..storage import db


class TenantRegistry:
    """tenant name ↔ tenant number, cached (numbers never change)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._numbers: dict[str, int] = {}
        self._lock = threading.Lock()

    def number(self, tenant: str) -> int | None:
        """The tenant's number, or None if no row of it was ever prepared."""
        with self._lock:
            if tenant in self._numbers:
                return self._numbers[tenant]
        t = db.tenants.c
        with db.reading(self.engine, "reading tenants") as conn:
            row = conn.execute(select(t.no).where(t.tenant == tenant)).first()
        if row is None:
            return None
        with self._lock:
            self._numbers[tenant] = int(row[0])
        return int(row[0])

    def ensure(self, tenant: str) -> int:
        """The tenant's number, allocated if new (safe against a concurrent allocation)."""
        no = self.number(tenant)
        if no is not None:
            return no
        try:
            with db.transaction(self.engine, "registering a tenant") as conn:
                no = db.bump(conn, "next_tenant_no") - 1
                conn.execute(db.tenants.insert().values(tenant=tenant, no=no))
        except IntegrityError:  # another process registered it first
            pass
        got = self.number(tenant)
        if got is None:  # pragma: no cover - our insert or the other one committed
            raise BackendError(f"tenant {tenant!r} could not be registered")
        return got

    def all(self) -> dict[str, int]:
        t = db.tenants.c
        with db.reading(self.engine, "reading tenants") as conn:
            found = {name: int(no) for name, no in conn.execute(select(t.tenant, t.no))}
        with self._lock:
            self._numbers.update(found)
        return found
