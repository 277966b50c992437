"""casbin itself, over the same rules: a SQLAlchemy adapter and an enforcer.

permrag answers "which rows" with compiled bitmaps; casbin answers "may this
user read this row" one request at a time. Both read the rules this adapter
reads, and the tests hold the bitmaps to casbin's answers.
"""

from __future__ import annotations

import time
from typing import Any

import casbin
from casbin import persist
from sqlalchemy import Engine, select

from ..catalog import RowRecord
from ..policy import MODEL_PATH, USER_PREFIX, parse_selector
from ..policy.persist import IDENT, INACTIVE
from ..storage import db


def selector_match(row: RowRecord, tenant: str, selector: str) -> bool:
    """casbin function ``selectorMatch(r.obj, r.dom, p.sel)``."""
    return row.tenant == tenant and parse_selector(selector).matches(row.external_id, row.attrs, row.parent)


class SQLAdapter(persist.Adapter):  # type: ignore[misc]
    """Loads casbin rules from ``permrag_casbin_rule`` (read-only: changes go
    through :class:`permrag.policy.Policy`, which bumps the version).

    casbin knows roles, groups (``g`` edges like any other) and rules; it
    knows neither time nor ACLs, so rules and edges expired at ``now`` are
    left out, their expiry field dropped, and folder ACL rows skipped:
    document and folder ACLs are checked against their own reference in
    the tests. A deactivated user's edges are left out: it holds nothing."""

    def __init__(self, engine: Engine, now: float | None = None) -> None:
        self.engine = engine
        self.now = now

    def load_policy(self, model: casbin.Model) -> None:
        c = db.casbin_rule.c
        now = time.time() if self.now is None else self.now
        with db.reading(self.engine, "reading casbin rules") as conn:
            recs = list(conn.execute(select(c.ptype, c.v0, c.v1, c.v2, c.v3, c.v4, c.v5).order_by(c.id)))
        inactive = {(rec.v0, rec.v1) for rec in recs if rec.ptype == IDENT and rec.v3 == INACTIVE}
        for rec in recs:
            if rec.ptype == "p":
                values, until = [rec.v0, rec.v1, rec.v2, rec.v3, rec.v4], rec.v5
            elif rec.ptype == "g" and (rec.v0, rec.v2) not in inactive:
                values, until = [rec.v0, rec.v1, rec.v2], rec.v3
            else:
                continue
            if until is not None and float(until) <= now:
                continue
            model.model[rec.ptype[0]][rec.ptype].policy.append(values)


class UserEnforcer(casbin.Enforcer):  # type: ignore[misc]
    """A casbin enforcer whose requests name users as permrag does: ``enforce("alice", …)``
    asks for the *user* alice (stored as ``user:alice``), never a role called alice."""

    def enforce(self, *rvals: Any) -> bool:
        if rvals and isinstance(rvals[0], str):
            rvals = (USER_PREFIX + rvals[0], *rvals[1:])
        return bool(super().enforce(*rvals))


def build_enforcer(engine: Engine, now: float | None = None) -> casbin.Enforcer:
    """A casbin enforcer over the stored rules as they stand at ``now``, with ``selectorMatch`` registered."""
    enforcer = UserEnforcer(str(MODEL_PATH), SQLAdapter(engine, now))
    enforcer.add_function("selectorMatch", selector_match)
    return enforcer
