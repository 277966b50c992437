"""Co-visibility placement: classes that the same role rules select share a
class group (a Milvus partition, backends/layout.py).

A grouped collection keeps a row of class ``c`` in partition ``g<c mod N>``.
Handed out in order of first appearance, class IDs spread classes over the
groups regardless of who sees them, so a role that sees half the rows finds
about half of every group visible and its search scans every partition with
a residual filter: no faster than a flat collection. Placed by
co-visibility, a new class gets the ID ``c ≡ g (mod N)`` of the group ``g``
its *signature* owns — the role rules that select it under the policy of the
moment (policy/signature.py) — so a role's rows fill whole groups and its
search names them with no filter, as over a silo of its own.

* The first ``N`` distinct signatures of a tenant get a group each; a later
  one shares the group of the most similar known signature (Jaccard over the
  tokens). The mapping is stored (``permrag_class_groups``) in the
  transaction that allocates the class, which already holds the row-ID
  counter's lock: one allocation at a time across processes, so a signature
  never gets two groups. (A mapping whose class never got a live row is
  harmless: it only reserves a group.)
* Class IDs skip at most ``N - 1`` numbers per new class; they are 64-bit.
* Placement never decides visibility: a plan checks every class against the
  caller's bitmap (search/planner.py) and every hit is verified. A policy
  that changes after a class was placed leaves it where it is (a row never
  moves): that class's group becomes partly visible, a residual filter runs
  there, and answers stay exact.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.engine import Connection

from .. import db
from .allocation import class_key

Signer = Callable[[str, Mapping[str, Any]], "Sequence[str] | None"]


class Placement:
    """Class IDs by co-visibility for a store whose collections have ``groups`` groups."""

    def __init__(self, groups: int, signer: Signer) -> None:
        if groups <= 0:
            raise ValueError("co-visibility placement needs groups > 0")
        self.groups = groups
        self.signer = signer

    def class_id(self, conn: Connection, tenant: str, attrs: Mapping[str, Any]) -> int | None:
        """A fresh class ID in the group of ``attrs``' signature (None: place as usual)."""
        tokens = self.signer(tenant, attrs)
        if tokens is None:
            return None
        g = self.group(conn, tenant, tuple(tokens))
        cur = db.read_counter(conn, "next_class_id")
        cid = cur + (g - cur) % self.groups
        db.bump(conn, "next_class_id", cid + 1 - cur)
        return cid

    def group(self, conn: Connection, tenant: str, tokens: tuple[str, ...]) -> int:
        """The group of a signature, assigned (and stored) on first sight."""
        t = db.class_groups.c
        key = class_key(["covis", list(tokens)])
        row = conn.execute(select(t.grp).where(t.tenant == tenant, t.signature == key)).first()
        if row is not None:
            return int(row[0]) % self.groups
        known = [(int(g) % self.groups, set(json.loads(toks))) for g, toks in conn.execute(select(t.grp, t.tokens).where(t.tenant == tenant))]
        used = {g for g, _ in known}
        free = [g for g in range(self.groups) if g not in used]
        if free:
            g = free[0]
        else:  # every group taken: the nearest signature's (ties: the lower group)
            mine = set(tokens)
            g = min(known, key=lambda k: (-_jaccard(mine, k[1]), k[0]))[0]
        conn.execute(db.class_groups.insert().values(tenant=tenant, signature=key, grp=g, tokens=json.dumps(list(tokens))))
        return g


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
