"""Checks a policy import makes on what a file names (policy/csv.py).

An import is typed input, so the admin-input rules hold for it as for the
calls: a principal is never misspelt (``usr:dave`` is not a user, ``Group:x``
not a role, ``user:group:eng`` not a user id), an expiry in the past is
refused unless allowed, and a membership or ACL line naming a group, user or
role that neither the store nor the file knows is refused — with the closest
known name — unless allowed.
"""

from __future__ import annotations

import difflib
from typing import Any

from ..domain.names import check, check_id, check_role, check_tenant, expiry, kind_prefix, show_time
from ..errors import PolicyCSVError, PolicyError
from .model import AGENT_PREFIX, GROUP_PREFIX, ROLE_PREFIX, USER_PREFIX, TenantPolicy
from .principals import exists, names


def expires(value: str, now: float | None) -> float | None:
    """A line's expiry; one at or before ``now`` is refused: an import is typed input."""
    until = expiry(value, "expires", PolicyError)
    if now is not None and until is not None and until <= now:
        raise PolicyError(f"expires {show_time(until)} is in the past: the line would import access that never holds; drop the line, or allow_expired=True (--allow-expired) imports it as it is")
    return until


def subject_of(text: str) -> str:
    """A ``g`` line's subject: ``user:<id>``, ``group:<id>``, ``agent:<id>``, ``role:<name>`` or a bare
    user id or role name — never a misspelt kind (``usr:dave``, ``Group:eng``)."""
    text = check("subject", text, max_len=len(USER_PREFIX) + 256, error=PolicyError)
    for prefix in (USER_PREFIX, GROUP_PREFIX, AGENT_PREFIX):
        if text.startswith(prefix):
            return prefix + check_id(prefix[:-1], text[len(prefix) :], PolicyError)
    if text.startswith(ROLE_PREFIX):
        return ROLE_PREFIX + check_role(text[len(ROLE_PREFIX) :], PolicyError)
    head = kind_prefix(text)
    if head is not None:
        raise PolicyError(f"subject {text!r} starts with {head!r}, which is no kind: write user:<id>, group:<id>, agent:<id>, role:<name> or a bare name")
    return text


def edge(rest: list[str], now: float | None) -> tuple[str, str, str, float | None]:
    """``g, subject, role|role:<name>|group:<id>, tenant[, expires]`` → (subject, object, tenant, until)."""
    if len(rest) not in (3, 4):
        raise PolicyError(f"a g line needs subject, role or group:<id>, tenant[, expires]; got {len(rest)} fields")
    subject, obj = subject_of(rest[0]), rest[1]
    if obj.startswith(GROUP_PREFIX):
        obj = GROUP_PREFIX + check_id("group", obj[len(GROUP_PREFIX) :], PolicyError)
    elif obj.startswith(ROLE_PREFIX):
        obj = check_role(obj[len(ROLE_PREFIX) :], PolicyError)
    elif kind_prefix(obj) is not None:
        raise PolicyError(f"{obj!r} is neither a role nor group:<id> (a misspelt kind?); a role whose name holds a colon is role:<name>")
    else:
        obj = check_role(obj, PolicyError)
    return subject, obj, check_tenant(rest[2], PolicyError), expires(rest[3], now) if len(rest) == 4 else None


def _declared(parsed: Any) -> dict[str, set[str]]:
    """Per tenant, the principals the file itself declares: ident lines, ``g``
    subjects, roles (declared, with rules, or held) — not the groups it only
    puts members in, nor those its ACL lines name."""
    out: dict[str, set[str]] = {}
    for key, t, _, _ in parsed.idents:
        out.setdefault(t, set()).add(key)
    for _, t, role in parsed.roles:
        out.setdefault(t, set()).add(ROLE_PREFIX + role)
    for _, role, t, *_ in parsed.rules:
        out.setdefault(t, set()).add(ROLE_PREFIX + role)
    for _, subject, obj, t, _ in parsed.edges:
        bare = not subject.startswith((USER_PREFIX, GROUP_PREFIX, ROLE_PREFIX, AGENT_PREFIX))
        out.setdefault(t, set()).update([USER_PREFIX + subject, ROLE_PREFIX + subject] if bare else [subject])
        if not obj.startswith(GROUP_PREFIX):
            out[t].add(ROLE_PREFIX + obj)
    return out


def require_known(name: str, parsed: Any, current: dict[str, TenantPolicy]) -> None:
    """Every group a membership puts someone in, and every principal an ACL line
    names, is known to the store or declared by the file; else the line's
    error names the closest known one: a typo (``group:contractor``) would
    name nobody, and a deny naming nobody fails open."""
    declared = _declared(parsed)
    named = [(n, t, obj) for n, _, obj, t, _ in parsed.edges if obj.startswith(GROUP_PREFIX)]
    for lineno, t, key in named + [(n, t, who) for n, _, t, who, _, _ in parsed.folders]:
        mine = declared.get(t, set())
        if key in mine or exists(current[t], key):
            continue
        kind, _, what = key.partition(":")
        near = difflib.get_close_matches(what, sorted(names(current[t], kind) | {k.partition(":")[2] for k in mine if k.startswith(kind + ":")}), n=1)
        advice = f"did you mean {kind}:{near[0]}?" if near else f"the tenant has no {kind} of a similar name"
        raise PolicyCSVError(name, lineno, f"unknown {kind} {what!r} in tenant {t!r}: neither the store nor the file knows it; {advice} (allow_unknown=True / --allow-unknown imports it as it is)")
