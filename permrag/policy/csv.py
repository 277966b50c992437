"""The policy as casbin CSV: export and an all-or-nothing import.

::

    # permrag policy, version 12
    # role, auditor, default
    p, auditor, default, *, read, allow
    g, auditor, staff, default          (role auditor inherits role staff)
    g, user:auditor, viewer, default    (user auditor holds role viewer)
    g, user:ann, group:eng, default     (user ann is in group eng)
    g, group:eng, group:staff, default  (group eng is in group staff)
    g, group:eng, viewer, default, 2027-01-01T00:00:00Z   (group eng holds viewer until then)
    acl, /eng/specs, default, group:eng, allow             (a folder's ACL entry)
    noinherit, /eng/specs, default                         (the folder ignores its parent's ACL)
    ident, user:00u1a, default, ann@example.com, inactive   (the provider's label; the user is deactivated)

A ``p`` line's 7th field and a ``g`` line's 5th are an expiry (ISO 8601);
casbin itself reads neither (``rag.enforcer()`` drops expired lines).
An import never reactivates a user: ``ident`` lines set labels and add
deactivations; only an identity sync lists a user active again.

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
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..domain.acl import folder_path
from ..domain.names import check, check_id, check_role, check_tenant, kind_prefix, principal, show_time
from ..domain.selectors import parse_selector
from ..errors import PermragError, PolicyCSVError, PolicyError, RoleCycleError
from .changes import set_expiry, tenant_ops
from .csv_check import edge, expires, require_known
from .model import AGENT_PREFIX, GROUP_PREFIX, USER_PREFIX, Folder, TenantPolicy
from .persist import FOLDER_ACL, IDENT, NO_INHERIT, ident_row, stamp
from .records import Change, Ident, Op, RoleDef, op_of

NO_INHERIT_LINE = "noinherit"  # the line type in files (stored as NO_INHERIT)

ACTION = "read"
COLUMNS = ("ptype", "v0", "v1", "v2", "v3", "v4", "v5")
EFFECTS = ("allow", "deny")
ROLE_PREFIX = "role:"


def _field(value: str) -> str:
    if any(ch in value for ch in ',"') or value != value.strip() or value.startswith("#"):
        return '"' + value.replace('"', '""') + '"'
    return value


def _line(fields: Iterable[str]) -> str:
    return ", ".join(_field(f) for f in fields) + "\n"


def render(version: int, tenants: dict[str, TenantPolicy], now: float) -> str:
    """The file; what has expired by ``now`` is left out, so that an import of it
    (which refuses past expiries) takes it back as it is."""
    out = io.StringIO()

    def ended(tp: TenantPolicy, key: tuple[str, ...]) -> bool:
        return not tp.live(key, now)

    out.write(f"# permrag policy, version {version}\n")
    for t in sorted(tenants):
        tp = tenants[t]
        for role in sorted(tp.roles):
            out.write("# " + _line(["role", role, t]))
        for role, sel, eft in (r for r in tp.rules() if not ended(tp, ("p", *r))):
            out.write(_line(["p", role, t, sel, ACTION, eft, *_until(tp, ("p", role, sel, eft))]))
        for role in sorted(tp.parents):
            for parent in sorted(p for p in tp.parents[role] if not ended(tp, ("g", role, p))):
                out.write(_line(["g", _role(role), _role(parent), t, *_until(tp, ("g", role, parent))]))
        for user in sorted(tp.user_roles):
            for role in sorted(r for r in tp.user_roles[user] if not ended(tp, ("g", USER_PREFIX + user, r))):
                out.write(_line(["g", USER_PREFIX + user, _role(role), t, *_until(tp, ("g", USER_PREFIX + user, role))]))
        for group in sorted(tp.group_roles):
            for role in sorted(r for r in tp.group_roles[group] if not ended(tp, ("g", GROUP_PREFIX + group, r))):
                out.write(_line(["g", GROUP_PREFIX + group, _role(role), t, *_until(tp, ("g", GROUP_PREFIX + group, role))]))
        for agent in sorted(tp.agent_roles):
            for role in sorted(r for r in tp.agent_roles[agent] if not ended(tp, ("g", AGENT_PREFIX + agent, r))):
                out.write(_line(["g", AGENT_PREFIX + agent, _role(role), t, *_until(tp, ("g", AGENT_PREFIX + agent, role))]))
        for member in sorted(tp.member_of):
            for group in sorted(g for g in tp.member_of[member] if not ended(tp, ("g", member, GROUP_PREFIX + g))):
                out.write(_line(["g", member, GROUP_PREFIX + group, t, *_until(tp, ("g", member, GROUP_PREFIX + group))]))
        for path in sorted(tp.folders):
            f = tp.folders[path]
            for eft, entries in (("allow", f.allow), ("deny", f.deny)):
                for who, until in sorted((w, u) for w, u in entries.items() if u is None or u > now):  # ids are unique: sorted by id
                    out.write(_line([FOLDER_ACL, path, t, who, eft, *([show_time(until)] if until is not None else [])]))
            if not f.inherit:
                out.write(_line([NO_INHERIT_LINE, path, t]))
        # every group, and every user or group a folder ACL names, is declared (an ident line, maybe
        # without a label): an import refuses memberships and ACL entries naming nobody it knows
        named = {who for f in tp.folders.values() for who in (*f.allow, *f.deny) if who.startswith((USER_PREFIX, GROUP_PREFIX, AGENT_PREFIX))}
        for key in sorted(set(tp.labels) | {USER_PREFIX + u for u in tp.inactive} | {GROUP_PREFIX + g for g in tp.groups()} | named):
            off = key.startswith(USER_PREFIX) and key[len(USER_PREFIX) :] in tp.inactive
            out.write(_line([IDENT, key, t, tp.labels.get(key, ""), *(["inactive"] if off else [])]))
    return out.getvalue()


def _role(role: str) -> str:
    """A role as a ``g`` line's subject or object: ``role:<name>`` when its name holds a colon."""
    return ROLE_PREFIX + role if kind_prefix(role) is not None else role


def _until(tp: TenantPolicy, key: tuple[str, ...]) -> list[str]:
    t = tp.expires.get(key)
    return [] if t is None else [show_time(t)]


@dataclass
class Parsed:
    roles: list[tuple[int, str, str]] = field(default_factory=list)  # (line, tenant, role)
    rules: list[tuple[int, str, str, str, str, float | None]] = field(default_factory=list)  # (line, role, tenant, selector, effect, until)
    edges: list[tuple[int, str, str, str, float | None]] = field(default_factory=list)  # (line, subject as written, object, tenant, until)
    folders: list[tuple[int, str, str, str, str, float | None]] = field(default_factory=list)  # (line, folder, tenant, principal, effect, until)
    no_inherit: list[tuple[int, str, str]] = field(default_factory=list)  # (line, folder, tenant)
    idents: list[tuple[str, str, str | None, bool]] = field(default_factory=list)  # (user:<id> / group:<id>, tenant, label, deactivated)

    def tenants(self) -> set[str]:
        return {t for _, t, _ in self.roles} | {r[2] for r in self.rules} | {e[3] for e in self.edges} | {f[2] for f in self.folders} | {n[2] for n in self.no_inherit} | {i[1] for i in self.idents}


def _fields(name: str, lineno: int, text: str) -> list[str]:
    try:
        fields = next(csv.reader([text], skipinitialspace=True, strict=True))
    except (csv.Error, StopIteration) as exc:
        raise PolicyCSVError(name, lineno, f"not valid CSV ({exc})") from None
    return [f.strip() for f in fields]


def read(path: str | os.PathLike[str]) -> str:
    """A policy file's text (UTF-8), or :class:`PolicyError` saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"cannot read policy file {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror or exc}") from None


def parse(name: str, text: str, only_tenant: str | None, now: float | None) -> Parsed:
    """The lines of a policy file, each checked on its own; an expiry at or
    before ``now`` is refused (None: past expiries allowed)."""
    out = Parsed()
    # Split on "\n" only: str.splitlines() would also split on U+2028,
    # U+0085 … which names cannot hold, but a hand-written file might.
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            if stripped.startswith("#"):
                _comment(name, lineno, stripped[1:].strip(), out, only_tenant)
                continue
            fields = _fields(name, lineno, stripped)
            ptype, rest = fields[0], fields[1:]
            if ptype == "p":
                out.rules.append((lineno, *_rule(rest, now)))
                tenant = out.rules[-1][2]
            elif ptype == "g":
                out.edges.append((lineno, *edge(rest, now)))
                tenant = out.edges[-1][3]
            elif ptype == FOLDER_ACL:
                if len(rest) not in (4, 5):
                    raise PolicyError(f"an acl line needs folder, tenant, principal, allow|deny[, expires]; got {len(rest)} fields")
                tenant = check_tenant(rest[1], PolicyError)
                if rest[3] not in EFFECTS:
                    raise PolicyError(f"effect must be 'allow' or 'deny', not {rest[3]!r}")
                until = expires(rest[4], now) if len(rest) == 5 else None
                out.folders.append((lineno, folder_path(rest[0], PolicyError), tenant, principal(rest[2], PolicyError), rest[3], until))
            elif ptype == IDENT:
                out.idents.append(_ident(rest))
                tenant = rest[1]
            elif ptype == NO_INHERIT_LINE:
                if len(rest) != 2:
                    raise PolicyError(f"a noinherit line needs folder, tenant; got {len(rest)} fields")
                tenant = check_tenant(rest[1], PolicyError)
                out.no_inherit.append((lineno, folder_path(rest[0], PolicyError), tenant))
            else:
                raise PolicyError(f"unknown rule type {ptype!r} (expected p, g, acl, noinherit or ident)")
            _only(tenant, only_tenant)
        except PolicyCSVError:
            raise
        except PermragError as exc:
            raise PolicyCSVError(name, lineno, str(exc)) from None
    return out


def _rule(rest: list[str], now: float | None) -> tuple[str, str, str, str, float | None]:
    """``p, role, tenant, selector, read[, allow|deny[, expires]]`` → (role, tenant, selector, effect, until)."""
    if len(rest) not in (4, 5, 6):
        raise PolicyError(f"a p line needs role, tenant, selector, action[, effect[, expires]]; got {len(rest)} fields")
    role, tenant = check_role(rest[0], PolicyError), check_tenant(rest[1], PolicyError)
    act, eft = rest[3], rest[4] if len(rest) >= 5 else "allow"
    if act != ACTION:
        raise PolicyError(f"action must be {ACTION!r}, not {act!r}")
    if eft not in EFFECTS:
        raise PolicyError(f"effect must be 'allow' or 'deny', not {eft!r}")
    until = expires(rest[5], now) if len(rest) == 6 else None
    return role, tenant, str(parse_selector(rest[2])), eft, until


def _comment(name: str, lineno: int, body: str, out: Parsed, only_tenant: str | None) -> None:
    """A ``# role, <role>, <tenant>`` line declares a role; other comments are skipped."""
    if body.startswith("role,"):
        fields = _fields(name, lineno, body)
        if len(fields) != 3:
            raise PolicyError(f"a role line needs role, tenant; got {len(fields) - 1} fields")
        tenant = check_tenant(fields[2], PolicyError)
        out.roles.append((lineno, tenant, check_role(fields[1], PolicyError)))
        _only(tenant, only_tenant)


def _ident(rest: list[str]) -> tuple[str, str, str | None, bool]:
    """``ident, user:<id>|group:<id>|agent:<id>, tenant, label[, inactive]`` (an agent's: no label, declares it)."""
    if len(rest) not in (3, 4) or (len(rest) == 4 and rest[3] != "inactive"):
        raise PolicyError("an ident line needs user:<id>, group:<id> or agent:<id>, tenant, label (may be empty)[, inactive]")
    key = rest[0]
    if not key.startswith((USER_PREFIX, GROUP_PREFIX, AGENT_PREFIX)):
        raise PolicyError(f"an ident line names user:<id>, group:<id> or agent:<id>, not {key!r}")
    if key.startswith(AGENT_PREFIX) and rest[2]:
        raise PolicyError(f"an agent has no label: leave the label of {key!r} empty")
    check_id(key.split(":", 1)[0], key.split(":", 1)[1], PolicyError)
    if len(rest) == 4 and not key.startswith(USER_PREFIX):
        raise PolicyError(f"only a user can be inactive, not {key!r}")
    label = check("label", rest[2], error=PolicyError) if rest[2] else None
    return key, check_tenant(rest[1], PolicyError), label, len(rest) == 4


def _apply_idents(parsed: Parsed, states: dict[str, TenantPolicy], rows: dict[str, list[dict[str, Any]]]) -> None:
    """Labels as the file says; deactivations added, never lifted (only a sync reactivates)."""
    for key, t, label, off in parsed.idents:
        tp = states[t]
        was_off = key.startswith(USER_PREFIX) and key[len(USER_PREFIX) :] in tp.inactive
        if tp.labels.get(key) == label and was_off >= off:
            continue
        if label is None:
            tp.labels.pop(key, None)
        else:
            tp.labels[key] = label
        if off:
            tp.inactive.add(key[len(USER_PREFIX) :])
        rows["ident"].append(ident_row(key, t, label, off or was_off))


def _only(tenant: str, only: str | None) -> None:
    if only is not None and tenant != only:
        raise PolicyError(f"tenant {tenant!r} is not {only!r}")


def apply(name: str, parsed: Parsed, states: dict[str, TenantPolicy]) -> dict[str, list[dict[str, Any]]]:
    """Apply ``parsed`` to ``states`` (copies), validating as it goes; the rows to insert."""
    declared: dict[str, set[str]] = {t: set(tp.roles) for t, tp in states.items()}
    for _, t, role in parsed.roles:
        declared[t].add(role)
    for _, role, t, *_ in parsed.rules:
        declared[t].add(role)
    for _, subject, obj, t, _ in parsed.edges:
        if not obj.startswith(GROUP_PREFIX):
            declared[t].add(obj)
        if subject.startswith(ROLE_PREFIX):
            declared[t].add(subject[len(ROLE_PREFIX) :])
    rows: dict[str, list[dict[str, Any]]] = {"roles": [], "p": [], "g": [], "ident": []}
    for t in sorted(declared):
        for role in sorted(declared[t] - states[t].roles):
            states[t].roles.add(role)
            rows["roles"].append({"tenant": t, "name": role})
    for _, role, t, sel, eft, until in parsed.rules:
        rules = states[t].allow if eft == "allow" else states[t].deny
        if sel not in rules.get(role, ()):
            rules[role].add(sel)
            set_expiry(states[t], ("p", role, sel, eft), until)
            rows["p"].append({"ptype": "p", "v0": role, "v1": t, "v2": sel, "v3": ACTION, "v4": eft, "v5": stamp(until)})
    for _lineno, folder, t, who, eft, until in parsed.folders:
        f = states[t].folders.setdefault(folder, Folder())
        entries = f.allow if eft == "allow" else f.deny
        if who not in entries:
            entries[who] = until
            rows["g"].append({"ptype": FOLDER_ACL, "v0": folder, "v1": t, "v2": who, "v3": eft, "v4": stamp(until), "v5": None})
    for _lineno, folder, t in parsed.no_inherit:
        f = states[t].folders.setdefault(folder, Folder())
        if f.inherit:
            f.inherit = False
            rows["g"].append({"ptype": NO_INHERIT, "v0": folder, "v1": t, "v2": "", "v3": None, "v4": None, "v5": None})
    _edges(name, parsed, states, declared, rows)
    return rows


def _edges(name: str, parsed: Parsed, states: dict[str, TenantPolicy], declared: dict[str, set[str]], rows: dict[str, list[dict[str, Any]]]) -> None:
    """Apply the file's ``g`` lines (memberships, group roles, agents', users' roles, inheritance)."""
    for lineno, subject, role, t, until in parsed.edges:
        tp = states[t]
        try:
            if role.startswith(GROUP_PREFIX) or subject.startswith(GROUP_PREFIX):
                _group_edge(tp, subject, role, t, until, rows)
            elif subject.startswith(AGENT_PREFIX):
                _agent_edge(tp, subject, role, t, until, rows)
            elif subject.startswith(USER_PREFIX) or not (subject.startswith(ROLE_PREFIX) or subject in declared[t]):
                user = subject[len(USER_PREFIX) :] if subject.startswith(USER_PREFIX) else subject
                check("user", user, error=PolicyError)
                if role in tp.user_roles.get(user, ()):
                    continue
                tp.check_assign(user, role)
                tp.add_user(user, role)
                set_expiry(tp, ("g", USER_PREFIX + user, role), until)
                rows["g"].append({"ptype": "g", "v0": USER_PREFIX + user, "v1": role, "v2": t, "v3": stamp(until), "v4": None, "v5": None})
            else:
                child = subject[len(ROLE_PREFIX) :] if subject.startswith(ROLE_PREFIX) else subject
                check_role(child, PolicyError)
                if role in tp.parents.get(child, ()):
                    continue
                tp.check_inherit(child, role)
                tp.add_inherit(child, role)
                set_expiry(tp, ("g", child, role), until)
                rows["g"].append({"ptype": "g", "v0": child, "v1": role, "v2": t, "v3": stamp(until), "v4": None, "v5": None})
        except (RoleCycleError, PolicyError) as exc:
            raise PolicyCSVError(name, lineno, str(exc)) from None


def _agent_edge(tp: TenantPolicy, subject: str, role: str, t: str, until: float | None, rows: dict[str, list[dict[str, Any]]]) -> None:
    """``g, agent:<id>, role``: an agent holds a role."""
    agent = subject[len(AGENT_PREFIX) :]
    if role in tp.agent_roles.get(agent, ()):
        return
    tp.check_assign(subject, role)
    tp.add_agent(agent, role)
    set_expiry(tp, ("g", subject, role), until)
    rows["g"].append({"ptype": "g", "v0": subject, "v1": role, "v2": t, "v3": stamp(until), "v4": None, "v5": None})


def _group_edge(tp: TenantPolicy, subject: str, obj: str, t: str, until: float | None, rows: dict[str, list[dict[str, Any]]]) -> None:
    """A ``g`` line about a group: membership (object ``group:<g>``) or a group holding a role."""
    if obj.startswith(GROUP_PREFIX):
        group = obj[len(GROUP_PREFIX) :]
        member = subject if subject.startswith((GROUP_PREFIX, AGENT_PREFIX)) else USER_PREFIX + check("user", subject.removeprefix(USER_PREFIX), error=PolicyError)
        if group in tp.member_of.get(member, ()):
            return
        tp.check_member(member, group)
        tp.add_member(member, group)
    else:
        group = check("group", subject[len(GROUP_PREFIX) :], error=PolicyError)
        if obj not in tp.roles:
            raise PolicyError(f"unknown role {obj!r}")
        if obj in tp.group_roles.get(group, ()):
            return
        tp.check_group_role(group, obj)
        tp.add_group_role(group, obj)
        member = subject
    set_expiry(tp, ("g", member, obj), until)
    rows["g"].append({"ptype": "g", "v0": member, "v1": obj, "v2": t, "v3": stamp(until), "v4": None, "v5": None})


def import_change(name: str, parsed: Parsed, tenants: set[str], current: dict[str, TenantPolicy], replace: bool, counted: list[int], allow_unknown: bool = False) -> Change | None:
    """The change an import makes, validated against the stored policy (``current``)."""
    if not allow_unknown:
        require_known(name, parsed, current)
    states = {t: (current[t].identity_only() if replace else current[t].copy()) for t in tenants}
    rows = apply(name, parsed, states)
    _apply_idents(parsed, states, rows)
    counted[0] = sum(len(r) for r in rows.values())
    if not counted[0] and not replace:
        return None
    ops: list[Op] = [op for t in sorted(tenants) for op in tenant_ops(current[t], t)] if replace else []
    ops += [Ident(False, r["v1"], r["v0"]) for r in rows["ident"]]  # one row per id: the file's replaces the stored one
    ops += [RoleDef(True, r["tenant"], r["name"]) for r in rows["roles"]]
    ops += [op_of(tuple(r[k] for k in COLUMNS), True) for r in rows["p"] + rows["g"] + rows["ident"]]
    return Change.of("import", tenants, ops, None, None)
