"""``permrag policy check``: rules that can never matter, and why."""

from __future__ import annotations

from typing import Any

from pyroaring import BitMap

from ..names import show_time
from ..policy import Policy, TenantPolicy
from ..policy.principals import exists
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
      and its deny holds for no one (see ``principal`` and ``where``).

    Unknown roles and cycles cannot be stored (grant, assign and import refuse
    them), so a stored policy never has them. Call it under the state lock
    (``PermRAG.lint`` does) so that policy and bitmaps are of one version.
    """
    tp = policy.tenant(tenant)
    findings: list[dict[str, Any]] = []
    held: set[str] = set()
    for u in tp.users():
        held |= tp.roles_of_user(u)
    for role in sorted(tp.roles):
        deny = BitMap.union(BitMap(), *(compiler.role_rows(r, tenant)[1] for r in tp.inherited(role)))
        rules = [r for r in tp.rules() if r[0] == role]
        for _, sel, eft in rules:
            rows = compiler.selector_rows(sel, tenant)
            if not rows:
                findings.append({"kind": "no-match", "role": role, "selector": sel, "message": f"{eft} {sel} of role {role!r} selects no row"})
            elif eft == "allow" and rows.issubset(deny):
                findings.append(
                    {"kind": "shadowed", "role": role, "selector": sel, "message": f"allow {sel} of role {role!r} is wholly overridden by deny rules"}
                )
        if not rules and not tp.parents.get(role):
            findings.append({"kind": "empty-role", "role": role, "selector": None, "message": f"role {role!r} has no rules and inherits nothing"})
        if role not in held:
            findings.append({"kind": "unused-role", "role": role, "selector": None, "message": f"no user holds role {role!r}"})
    findings += unknown_principals(tp, compiler, tenant)
    now = compiler.clock()
    for key, t in sorted(tp.expires.items()):
        if t <= now:
            what = f"{key[3]} {key[2]} of role {key[1]!r}" if key[0] == "p" else f"{key[1]} → {key[2]}"
            findings.append({"kind": "expired", "role": key[1] if key[0] == "p" else None, "selector": key[2] if key[0] == "p" else None,
                             "message": f"{what} expired at {show_time(t)}"})
    return findings


def unknown_principals(tp: TenantPolicy, compiler: Compiler, tenant: str) -> list[dict[str, Any]]:
    """A finding per principal that a document or folder ACL names and that names nobody."""
    acls = compiler.acls(tenant)
    where: dict[str, list[str]] = {}
    for effect, by in (("allow", acls.allow), ("deny", acls.deny)):
        for p, rows in by.items():
            where.setdefault(p, []).append(f"{effect} of {len(rows)} row(s)")
    for path, f in sorted(tp.folders.items()):
        for effect, entries in (("allow", f.allow), ("deny", f.deny)):
            for p in entries:
                where.setdefault(p, []).append(f"{effect} of folder {path}")
    out = []
    for p in sorted(where):
        if not exists(tp, p):
            kind = p.partition(":")[0]
            out.append({"kind": "unknown-principal", "role": None, "selector": None, "principal": p, "where": where[p],
                        "message": f"{p} names no {kind} of the tenant, yet the ACLs name it ({'; '.join(where[p])})"})
    return out
