"""``permrag policy check``: rules that can never matter, and why."""

from __future__ import annotations

from typing import Any

from pyroaring import BitMap

from ..domain.names import kind_prefix, show_time
from ..policy import Policy, TenantPolicy
from ..policy.principals import exists
from .acls import label_denies
from .compiler import Compiler


def lint(policy: Policy, compiler: Compiler, tenant: str) -> list[dict[str, Any]]:
    """Findings for one tenant: dict(kind, role, selector, message).

    * ``no-match``: a rule's selector selects no row of the catalog;
    * ``shadowed``: every row an allow rule selects is denied to the role
      (by its own deny rules or those of roles it inherits);
    * ``empty-role``: a role with no rules that inherits nothing;
    * ``unused-role``: a role that no user holds, directly or through others;
    * ``expired``: a rule, assignment or membership whose expiry has passed
      (it counts for nothing; remove it to keep exports short);
    * ``unknown-principal``: a user, group or role that a document's or a
      folder's ACL names but the tenant does not know (not synced yet, or a
      typo in a source system): it names nobody, so its allow grants nothing
      and its deny holds for no one (see ``principal`` and ``where``);
    * ``principal-like-user``: a user whose id looks like a principal
      (``group:contractors``, ``user:bob``, ``usr:dave``), stored before
      assignments refused them: a phantom holding what the group or user it
      looks like was meant to hold (see ``principal``).

    Unknown roles and cycles cannot be stored (grant, assign and import refuse
    them), so a stored policy never has them. Call it under the state lock
    (``PermRAG.lint`` does) so that policy and bitmaps are of one version.
    """
    tp = policy.tenant(tenant)
    findings: list[dict[str, Any]] = []
    held: set[str] = set()
    for u in tp.users():
        held |= tp.roles_of_user(u)
    for agent in tp.agents():
        held |= tp.roles_of_user(agent, agent=True)
    for role in sorted(tp.roles):
        deny = BitMap.union(BitMap(), *(compiler.role_rows(r, tenant)[1] for r in tp.inherited(role)))
        rules = [r for r in tp.rules() if r[0] == role]
        for _, sel, eft in rules:
            rows = compiler.selector_rows(sel, tenant)
            if not rows:
                findings.append({"kind": "no-match", "role": role, "selector": sel, "message": f"{eft} {sel} of role {role!r} selects no row"})
            elif eft == "allow" and rows.issubset(deny):
                findings.append({"kind": "shadowed", "role": role, "selector": sel, "message": f"allow {sel} of role {role!r} is wholly overridden by deny rules"})
        if not rules and not tp.parents.get(role):
            findings.append({"kind": "empty-role", "role": role, "selector": None, "message": f"role {role!r} has no rules and inherits nothing"})
        if role not in held:
            findings.append({"kind": "unused-role", "role": role, "selector": None, "message": f"no user holds role {role!r}"})
    findings += unknown_principals(tp, compiler, tenant)
    for u in sorted(u for u in tp.users() if kind_prefix(u) is not None):
        held_by_u = sorted(tp.roles_of_user(u))
        msg = f"user {u!r} is named like a principal, not a user: it holds {held_by_u} itself, and the group or user it looks like holds nothing; unassign it and assign the one meant"
        findings.append({"kind": "principal-like-user", "role": None, "selector": None, "principal": "user:" + u, "message": msg})
    now = compiler.clock()
    for key, t in sorted(tp.expires.items()):
        if t <= now:
            what = f"{key[3]} {key[2]} of role {key[1]!r}" if key[0] == "p" else f"{key[1]} → {key[2]}"
            findings.append({"kind": "expired", "role": key[1] if key[0] == "p" else None, "selector": key[2] if key[0] == "p" else None, "message": f"{what} expired at {show_time(t)}"})
    return findings


def unknown_principals(tp: TenantPolicy, compiler: Compiler, tenant: str) -> list[dict[str, Any]]:
    """A finding per principal that a document or folder ACL names and that names nobody.

    Where it is the label of a user or group (a sidecar naming
    ``group:contractors`` for ``group:g-123``), the finding says so
    (``label_of``): its deny entries hold for those ids (``deny_applied``,
    access/acls.py); its allow entries grant nothing until they name the id."""
    acls = compiler.acls(tenant)
    where: dict[str, list[str]] = {}
    effects: dict[str, set[str]] = {}
    for effect, by in (("allow", acls.allow), ("deny", acls.deny)):
        for p, rows in by.items():
            where.setdefault(p, []).append(f"{effect} of {len(rows)} row(s)")
            effects.setdefault(p, set()).add(effect)
    for path, f in sorted(tp.folders.items()):
        for effect, entries in (("allow", f.allow), ("deny", f.deny)):
            for p in entries:
                where.setdefault(p, []).append(f"{effect} of folder {path}")
                effects.setdefault(p, set()).add(effect)
    unknown = sorted(p for p in where if not exists(tp, p))
    labelled = label_denies(tp, unknown)
    out = []
    for p in unknown:
        kind = p.partition(":")[0]
        message = f"{p} names no {kind} of the tenant, yet the ACLs name it ({'; '.join(where[p])})"
        ids = labelled.get(p, ())
        if ids:
            message += _label_advice(tp, ids, effects[p])
        out.append(
            {
                "kind": "unknown-principal",
                "role": None,
                "selector": None,
                "principal": p,
                "where": where[p],
                "label_of": list(ids),
                "deny_applied": bool(ids) and "deny" in effects[p],
                "message": message,
            }
        )
    return out


def _label_advice(tp: TenantPolicy, ids: tuple[str, ...], effects: set[str]) -> str:
    """'did you mean …' for a principal that is the label of ``ids``, and what its entries do."""
    shown = " or ".join(tp.shown(k) for k in ids)
    advice = f"; did you mean {shown}?"
    if "deny" in effects:
        advice += f" Its deny is applied to {', '.join(ids)} by label"
        advice += " (every id with that label: fail closed)." if len(ids) > 1 else "."
    if "allow" in effects:
        advice += " Its allow is not applied (an allow never follows a label): name the id."
    return advice
