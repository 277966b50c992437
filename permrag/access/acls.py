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

ACL entries name ids (``group:g-123``). A **deny** entry ``user:X`` /
``group:X`` where no user or group has the id X but one has the provider's
label X (a file-share sidecar naming ``group:contractors``) also denies to
that id — to every id labelled X when several are (fail closed: a deny by
label can only narrow access). An **allow** is never resolved by label: a
name the provider controls must not widen access; it stays unknown
(``permrag policy check`` lists both). :attr:`TenantAcls.by_label` records
what each such deny was applied to, and :meth:`TenantAcls.stale` tells the
compiler to rebuild when a sync renames, adds or removes the label (or the
id appears).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroaring import BitMap, FrozenBitMap

from ..catalog.index import TenantIndex
from ..domain.acl import ALLOW_KEY, DENY_KEY, EXPIRING, FOLDER_KEY, split_expiring
from ..policy import TenantPolicy
from ..policy.model import GROUP_PREFIX, USER_PREFIX, parent_folder

EMPTY = FrozenBitMap()


def label_denies(tp: TenantPolicy, principals: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Deny principal → the principals it applies to by label: for each
    ``user:X`` / ``group:X`` among ``principals`` that names no id of the
    tenant, every ``user:<id>`` / ``group:<id>`` whose label is X (sorted;
    several: all of them, fail closed). Principals with no such label are left out."""
    wanted = {p for p in principals if p.startswith((USER_PREFIX, GROUP_PREFIX)) and not tp.known(p)}
    if not wanted:
        return {}
    out: dict[str, list[str]] = defaultdict(list)
    for key, label in tp.labels.items():
        named = key.partition(":")[0] + ":" + label
        if named in wanted:
            out[named].append(key)
    return {p: tuple(sorted(keys)) for p, keys in out.items()}


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


def _deny_by_label(deny: dict[str, FrozenBitMap], by_label: dict[str, tuple[str, ...]]) -> None:
    """Add each deny by label's rows to the ids it names by label (in place)."""
    extra: dict[str, list[FrozenBitMap]] = defaultdict(list)
    for named, keys in by_label.items():
        for key in keys:
            extra[key].append(deny[named])
    for key, bms in extra.items():
        deny[key] = FrozenBitMap.union(*bms, *([deny[key]] if key in deny else []))


@dataclass(frozen=True)
class TenantAcls:
    """principal → rows allowed / denied to it by ACLs, at one moment."""

    allow: dict[str, FrozenBitMap]
    deny: dict[str, FrozenBitMap]
    until: float | None  # the next expiry of a document or folder ACL entry after the moment built
    # the user/group principals the ACLs deny (as named), and those applied by label: name → ids
    deny_named: frozenset[str] = frozenset()
    by_label: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, idx: TenantIndex, tp: TenantPolicy, now: float) -> TenantAcls:
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
        named = frozenset(p for p in deny if p.startswith((USER_PREFIX, GROUP_PREFIX)))
        by_label = label_denies(tp, named)
        _deny_by_label(deny, by_label)
        return cls(allow, deny, min(times, default=None), named, by_label)

    def stale(self, tp: TenantPolicy) -> bool:
        """Whether the policy's labels (or ids) now resolve the denies by label otherwise."""
        return label_denies(tp, self.deny_named) != self.by_label

    def rows(self, principals: Iterable[str]) -> tuple[BitMap, BitMap]:
        """(allowed, denied) rows for a caller holding ``principals``."""
        ps = list(principals)
        return (
            BitMap.union(BitMap(), *(self.allow[p] for p in ps if p in self.allow)),
            BitMap.union(BitMap(), *(self.deny[p] for p in ps if p in self.deny)),
        )

    def principals(self) -> set[str]:
        return set(self.allow) | set(self.deny)
