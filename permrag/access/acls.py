"""Document and folder ACLs of one tenant, as bitmaps per principal.

The catalog's inverted index files every document's rows under its own ACL
entries (``@allow`` / ``@deny`` → principal, expiring ones under
``@allow~`` / ``@deny~``) and under its folder (``@folder``, only for
documents that inherit). Folder ACLs live in the policy. :class:`TenantAcls`
joins the two: for each principal, the rows its entries allow and deny —
own entries, plus every inheriting document below a folder whose effective
ACL names it. A folder's effective ACL is its own entries plus, unless it
breaks inheritance, its parent's effective ACL, up to ``/``.

It is built for one moment (``now``): expired entries are left out, and
:attr:`TenantAcls.until` says when the next one expires, so the compiler
rebuilds then (no cron).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from pyroaring import BitMap, FrozenBitMap

from ..acl import ALLOW_KEY, DENY_KEY, EXPIRING, FOLDER_KEY, split_expiring
from ..catalog.index import TenantIndex
from ..policy import TenantPolicy
from ..policy.model import parent_folder

EMPTY = FrozenBitMap()


def effective_folder(tp: TenantPolicy, path: str, now: float) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """A folder's effective (allow, deny): principal → the folders whose entries grant it (nearest first)."""
    allow: dict[str, list[str]] = defaultdict(list)
    deny: dict[str, list[str]] = defaultdict(list)
    here: str | None = path
    while here is not None:
        own = tp.folders.get(here)
        if own is not None:
            for entries, out in ((own.allow, allow), (own.deny, deny)):
                for who, t in entries.items():
                    if t is None or t > now:
                        out[who].append(here)
            if not own.inherit:
                break
        here = parent_folder(here)
    return allow, deny


@dataclass(frozen=True)
class TenantAcls:
    """principal → rows allowed / denied to it by ACLs, at one moment."""

    allow: dict[str, FrozenBitMap]
    deny: dict[str, FrozenBitMap]
    until: float | None  # the next expiry of a document or folder ACL entry after the moment built

    @classmethod
    def build(cls, idx: TenantIndex, tp: TenantPolicy, now: float) -> "TenantAcls":
        # Documents' own permanent entries are the index's bitmaps as they
        # are (no copy: 1M documents file ~100k principals); only principals
        # that also gain rows from expiring entries or folders get a union.
        allow: dict[str, FrozenBitMap] = dict(idx.values(ALLOW_KEY))
        deny: dict[str, FrozenBitMap] = dict(idx.values(DENY_KEY))
        extra_allow: dict[str, list[FrozenBitMap]] = defaultdict(list)
        extra_deny: dict[str, list[FrozenBitMap]] = defaultdict(list)
        times: list[float] = []
        for base, extra in ((ALLOW_KEY, extra_allow), (DENY_KEY, extra_deny)):
            for value, bm in idx.values(base + EXPIRING).items():
                t, who = split_expiring(value)
                if t > now:
                    extra[who].append(bm)
                    times.append(t)
        if tp.folders:
            for path, bm in idx.values(FOLDER_KEY).items():
                fa, fd = effective_folder(tp, path, now)
                for who in fa:
                    extra_allow[who].append(bm)
                for who in fd:
                    extra_deny[who].append(bm)
        for out, extra in ((allow, extra_allow), (deny, extra_deny)):
            for who, bms in extra.items():
                merged = BitMap.union(BitMap(), *bms, *([out[who]] if who in out else []))
                merged.run_optimize()
                out[who] = FrozenBitMap(merged)
        return cls(allow, deny, min(times, default=None))

    def rows(self, principals: Iterable[str]) -> tuple[BitMap, BitMap]:
        """(allowed, denied) rows for a caller holding ``principals``."""
        ps = list(principals)
        return (
            BitMap.union(BitMap(), *(self.allow[p] for p in ps if p in self.allow)),
            BitMap.union(BitMap(), *(self.deny[p] for p in ps if p in self.deny)),
        )

    def principals(self) -> set[str]:
        return set(self.allow) | set(self.deny)
