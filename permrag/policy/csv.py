"""The policy as casbin CSV: export and an all-or-nothing import.

::

    # permrag policy, version 12
    # role, auditor, default
    p, auditor, default, *, read, allow
    g, auditor, staff, default          (role auditor inherits role staff)
    g, user:auditor, viewer, default    (user auditor holds role viewer)

Every role is declared on a ``# role`` line (casbin skips them as comments),
so a ``g`` line's subject is a role exactly when the file declares it (or the
store already has it), and export writes users as ``user:<id>``: export →
import is the identity for every accepted name, including users called like
roles. Names may hold any character but controls and line separators
(names.py), and fields are quoted as CSV needs, so a name can never split a
line or smuggle a rule. Files written by hand may leave users bare (``g,
alice, eng, t``): a subject that no line declares as a role is a user.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import PermragError, PolicyCSVError, PolicyError, RoleCycleError
from ..names import check, check_role, check_tenant
from sqlalchemy import and_, delete
from sqlalchemy.engine import Connection

from .. import db
from .model import USER_PREFIX, Change, TenantPolicy
from .selectors import parse_selector

ACTION = "read"
EFFECTS = ("allow", "deny")
ROLE_PREFIX = "role:"


def _field(value: str) -> str:
    if any(ch in value for ch in ',"') or value != value.strip() or value.startswith("#"):
        return '"' + value.replace('"', '""') + '"'
    return value


def _line(fields: Iterable[str]) -> str:
    return ", ".join(_field(f) for f in fields) + "\n"


def render(version: int, tenants: dict[str, TenantPolicy]) -> str:
    out = io.StringIO()
    out.write(f"# permrag policy, version {version}\n")
    for t in sorted(tenants):
        tp = tenants[t]
        for role in sorted(tp.roles):
            out.write("# " + _line(["role", role, t]))
        for role, sel, eft in tp.rules():
            out.write(_line(["p", role, t, sel, ACTION, eft]))
        for role in sorted(tp.parents):
            for parent in sorted(tp.parents[role]):
                out.write(_line(["g", role, parent, t]))
        for user in sorted(tp.user_roles):
            for role in sorted(tp.user_roles[user]):
                out.write(_line(["g", USER_PREFIX + user, role, t]))
    return out.getvalue()


@dataclass
class Parsed:
    roles: list[tuple[int, str, str]] = field(default_factory=list)  # (line, tenant, role)
    rules: list[tuple[int, str, str, str, str]] = field(default_factory=list)  # (line, role, tenant, selector, effect)
    edges: list[tuple[int, str, str, str]] = field(default_factory=list)  # (line, subject as written, role, tenant)

    def tenants(self) -> set[str]:
        return {t for _, t, _ in self.roles} | {t for _, _, t, _, _ in self.rules} | {t for *_, t in self.edges}


def _fields(name: str, lineno: int, text: str) -> list[str]:
    try:
        fields = next(csv.reader([text], skipinitialspace=True, strict=True))
    except (csv.Error, StopIteration) as exc:
        raise PolicyCSVError(name, lineno, f"not valid CSV ({exc})") from None
    return [f.strip() for f in fields]


def parse(name: str, text: str, only_tenant: str | None) -> Parsed:
    """The lines of a policy file, each checked on its own."""
    out = Parsed()
    # Split on "\n" only: str.splitlines() would also split on U+2028,
    # U+0085 … which names cannot hold, but a hand-written file might.
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            if stripped.startswith("#"):
                body = stripped[1:].strip()
                if body.startswith("role,"):
                    fields = _fields(name, lineno, body)
                    if len(fields) != 3:
                        raise PolicyError(f"a role line needs role, tenant; got {len(fields) - 1} fields")
                    tenant = check_tenant(fields[2], PolicyError)
                    out.roles.append((lineno, tenant, check_role(fields[1], PolicyError)))
                    _only(tenant, only_tenant)
                continue
            fields = _fields(name, lineno, stripped)
            ptype, rest = fields[0], fields[1:]
            if ptype == "p":
                if len(rest) not in (4, 5):
                    raise PolicyError(f"a p line needs role, tenant, selector, action[, effect]; got {len(rest)} fields")
                role, tenant = check_role(rest[0], PolicyError), check_tenant(rest[1], PolicyError)
                act, eft = rest[3], rest[4] if len(rest) == 5 else "allow"
                if act != ACTION:
                    raise PolicyError(f"action must be {ACTION!r}, not {act!r}")
                if eft not in EFFECTS:
                    raise PolicyError(f"effect must be 'allow' or 'deny', not {eft!r}")
                out.rules.append((lineno, role, tenant, str(parse_selector(rest[2])), eft))
            elif ptype == "g":
                if len(rest) != 3:
                    raise PolicyError(f"a g line needs subject, role, tenant; got {len(rest)} fields")
                subject = check("subject", rest[0], max_len=len(USER_PREFIX) + 256, error=PolicyError)
                role, tenant = check_role(rest[1], PolicyError), check_tenant(rest[2], PolicyError)
                out.edges.append((lineno, subject, role, tenant))
            else:
                raise PolicyError(f"unknown rule type {ptype!r} (expected 'p' or 'g')")
            _only(tenant, only_tenant)
        except PolicyCSVError:
            raise
        except PermragError as exc:
            raise PolicyCSVError(name, lineno, str(exc)) from None
    return out


def _only(tenant: str, only: str | None) -> None:
    if only is not None and tenant != only:
        raise PolicyError(f"tenant {tenant!r} is not {only!r}")


def apply(name: str, parsed: Parsed, states: dict[str, TenantPolicy]) -> dict[str, list[dict]]:
    """Apply ``parsed`` to ``states`` (copies), validating as it goes; the rows to insert."""
    declared: dict[str, set[str]] = {t: set(tp.roles) for t, tp in states.items()}
    for _, t, role in parsed.roles:
        declared[t].add(role)
    for _, role, t, _, _ in parsed.rules:
        declared[t].add(role)
    for _, subject, role, t in parsed.edges:
        declared[t].add(role)
        if subject.startswith(ROLE_PREFIX):
            declared[t].add(subject[len(ROLE_PREFIX) :])
    rows: dict[str, list[dict]] = {"roles": [], "p": [], "g": []}
    for t in sorted(declared):
        for role in sorted(declared[t] - states[t].roles):
            states[t].roles.add(role)
            rows["roles"].append({"tenant": t, "name": role})
    for _, role, t, sel, eft in parsed.rules:
        rules = states[t].allow if eft == "allow" else states[t].deny
        if sel not in rules.get(role, ()):
            rules[role].add(sel)
            rows["p"].append({"ptype": "p", "v0": role, "v1": t, "v2": sel, "v3": ACTION, "v4": eft, "v5": None})
    for lineno, subject, role, t in parsed.edges:
        tp = states[t]
        try:
            if subject.startswith(USER_PREFIX) or not (subject.startswith(ROLE_PREFIX) or subject in declared[t]):
                user = subject[len(USER_PREFIX) :] if subject.startswith(USER_PREFIX) else subject
                check("user", user, error=PolicyError)
                if role in tp.user_roles.get(user, ()):
                    continue
                tp.check_assign(user, role)
                tp.add_user(user, role)
                rows["g"].append({"ptype": "g", "v0": USER_PREFIX + user, "v1": role, "v2": t, "v3": None, "v4": None, "v5": None})
            else:
                child = subject[len(ROLE_PREFIX) :] if subject.startswith(ROLE_PREFIX) else subject
                check_role(child, PolicyError)
                if role in tp.parents.get(child, ()):
                    continue
                tp.check_inherit(child, role)
                tp.add_inherit(child, role)
                rows["g"].append({"ptype": "g", "v0": child, "v1": role, "v2": t, "v3": None, "v4": None, "v5": None})
        except (RoleCycleError, PolicyError) as exc:
            raise PolicyCSVError(name, lineno, str(exc)) from None
    return rows


def import_change(
    name: str, parsed: Parsed, tenants: set[str], current: dict[str, TenantPolicy], replace: bool, counted: list[int]
) -> Change | None:
    """The change an import makes, validated against the stored policy (``current``)."""
    states = {t: (TenantPolicy() if replace else current[t].copy()) for t in tenants}
    rows = apply(name, parsed, states)
    counted[0] = len(rows["p"]) + len(rows["g"]) + len(rows["roles"])
    if not counted[0] and not replace:
        return None
    c = db.casbin_rule.c

    def write(conn: Connection) -> None:
        if replace:
            for t in tenants:
                conn.execute(delete(db.roles).where(db.roles.c.tenant == t))
                conn.execute(delete(db.casbin_rule).where(and_(c.ptype == "p", c.v1 == t)))
                conn.execute(delete(db.casbin_rule).where(and_(c.ptype == "g", c.v2 == t)))
        if rows["roles"]:
            conn.execute(db.roles.insert(), rows["roles"])
        if rows["p"] + rows["g"]:
            conn.execute(db.casbin_rule.insert(), rows["p"] + rows["g"])

    return Change(write, lambda s: s.update(states), tenants, None, None)
