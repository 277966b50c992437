"""Which role rules select a class of rows: the key co-visibility placement
groups classes by (placement/covis.py).

Rows with equal policy-relevant attributes form a visibility class; two
classes selected by the same attribute rules (the same roles' allows and
the same roles' denies) are visible to exactly the same users through
roles, whatever the role hierarchy, assignments and groups say. So the
sorted set of ``+role`` / ``-role`` tokens of the attribute rules that
select a class's attributes is a co-visibility key. Rules on every row
(``*``) select every class alike and rules on one document (``doc:…``)
select rows, not classes: neither is in the key. A row's ACL is, one
token per index key of it (``@allow:user:bob``, ``@folder:/eng``…), where
placement takes ACLs (``group_by="visibility+acl"``: the ACL is then part of
the class key, catalog/allocation.py), and classes whose ACLs name the same principals
are visible to the same users through ACLs too. The key only places rows;
it never decides visibility, so a policy that changes after a class was
placed costs search speed (a partly visible group), never exactness.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ..domain.acl import Acl
from ..domain.selectors import Selector, parse_selector


class Signer:
    """``signer(tenant, attrs, acl)`` → the sorted tokens of the rules selecting
    ``attrs`` under the policy as this process holds it, and of ``acl``'s
    entries (None if the policy changed while read)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, dict[tuple[str, str], set[str]], list[tuple[Selector, str]]]] = {}

    def __call__(self, tenant: str, attrs: Mapping[str, Any], acl: Acl | None = None) -> tuple[str, ...] | None:
        rules = self._rules(tenant)
        if rules is None:
            return None
        exact, globs = rules
        tokens: set[str] = set()
        for attr, values in attrs.items():
            for v in [values] if isinstance(values, str) else values if isinstance(values, (list, tuple)) else [str(values)]:
                tokens |= exact.get((attr, v), set())
        tokens.update(tok for sel, tok in globs if sel.matches("", attrs))
        if acl is not None:
            tokens.update(f"{attr}:{value}" for attr, value in acl.index_keys())
        return tuple(sorted(tokens))

    def _rules(self, tenant: str) -> tuple[dict[tuple[str, str], set[str]], list[tuple[Selector, str]]] | None:
        version = self.policy.version
        with self._lock:
            hit = self._cache.get(tenant)
            if hit is not None and hit[0] == version:
                return hit[1], hit[2]
        tp = self.policy.tenant(tenant)
        for _ in range(3):  # another thread may change the policy while it is read: read again
            try:
                exact: dict[tuple[str, str], set[str]] = {}
                globs: list[tuple[Selector, str]] = []
                for sign, table in (("+", tp.allow), ("-", tp.deny)):
                    for role, selectors in list(table.items()):
                        for text in list(selectors):
                            sel = parse_selector(text)
                            if sel.kind != "attr":
                                continue
                            if sel.is_glob:
                                globs.append((sel, sign + role))
                            else:
                                exact.setdefault((sel.attr, sel.value), set()).add(sign + role)
            except RuntimeError:
                continue
            with self._lock:
                self._cache[tenant] = (version, exact, globs)
            return exact, globs
        return None
