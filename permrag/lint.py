"""``permrag policy check``: rules that can never matter, and why."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyroaring import BitMap

if TYPE_CHECKING:
    from .core import PermRAG


def lint(rag: "PermRAG", tenant: str) -> list[dict[str, Any]]:
    """Findings for one tenant: dict(kind, role, selector, message).

    * ``no-match``: a rule's selector selects no row of the catalog;
    * ``shadowed``: every row an allow rule selects is denied to the role
      (by its own deny rules or those of roles it inherits);
    * ``empty-role``: a role with no rules that inherits nothing;
    * ``unused-role``: a role that no user holds, directly or through others.

    Unknown roles and cycles cannot be stored (grant, assign and import refuse
    them), so a stored policy never has them.
    """
    p, comp = rag.policy, rag.compiler
    tp = p.tenant(tenant)
    findings: list[dict[str, Any]] = []
    held = set()
    for u in tp.users():
        held |= tp.implicit_roles(u)
    for role in sorted(tp.roles):
        ancestors = tp.implicit_roles(role) | {role}
        deny = BitMap.union(BitMap(), *(comp.role_rows(r, tenant)[1] for r in ancestors))
        for _, sel, eft in p.rules(role, tenant):
            rows = comp.selector_rows(sel, tenant)
            if not rows:
                findings.append({"kind": "no-match", "role": role, "selector": sel, "message": f"{eft} {sel} of role {role!r} selects no row"})
            elif eft == "allow" and rows.issubset(deny):
                findings.append(
                    {"kind": "shadowed", "role": role, "selector": sel, "message": f"allow {sel} of role {role!r} is wholly overridden by deny rules"}
                )
        if not p.rules(role, tenant) and not tp.parents.get(role):
            findings.append({"kind": "empty-role", "role": role, "selector": None, "message": f"role {role!r} has no rules and inherits nothing"})
        if role not in held:
            findings.append({"kind": "unused-role", "role": role, "selector": None, "message": f"no user holds role {role!r}"})
    return findings
