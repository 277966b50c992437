"""Visible bitmap → the cheapest exact Milvus filter (or an honest superset).

A plan is one of three values, never ``None`` (a caller must be able to tell
"sees nothing" from "cannot express"):

* :class:`DenyAll` — the caller sees nothing here: no search is made;
* :class:`AllowAll` — the caller sees the whole tenant: only the partition key;
* :class:`Filter` — a filter expression, either *exact* (it selects exactly
  the visible rows of the tenant) or a *superset* (more rows, so the search
  over-fetches and the verify step discards the rest).

The tenant is pinned by the collection itself (each tenant's rows live in a
collection of their own, backends/milvus.py), so an expression holds only
integers: no name from outside ever reaches Milvus' expression parser. Runs
are taken in *tenant space*: two runs of visible IDs with no hidden row of the
tenant between them are one range, because other tenants' (and unallocated)
IDs in the gap are not in the collection anyway. Permission-aware row IDs make
most visible sets a handful of such ranges. Rows not yet published (or being
deleted) may sit inside a range; the verify step drops them and the search
asks for more (search/execute.py).

Forms: ``vclass in [...]`` for the visibility classes wholly inside the visible
set, plus ranges / IDs for the rest ("classes"); ID ranges from runs
("ranges"); and the complement of either ("not-…") when the hidden side is
smaller. OR-chains are built as balanced trees: a 2.3 server rejects a long
left-deep chain ("unsupported expr proto node") and accepts a balanced tree
of many more terms.

**Class groups.** Where the tenant's collection keeps rows in partitions by
visibility-class group (placement/layout.py), a plan may name the groups that
hold visible rows: no filter at all when they hold nothing else, else a
residual filter in any of the forms above, taken over the named groups' rows
only. On Milvus Lite that is the only way under the cost of a pass over every
row; the cost model weighs it against whole-collection filters on a server.

What each form costs depends on the backend: on Milvus Lite a search costs a
fixed overhead plus a scan of the rows that pass the filter (so a narrower
filter is *cheaper* than none), plus a price per range term and per listed
ID; on a 2.3 server listed IDs are answered from the primary-key index and
range terms are cheap. The planner prices each exact form with the backend's :class:`CostModel`, and
falls back to a superset of at most ``max_terms`` ranges (merged across the
smallest gaps) when no exact form fits; the search then over-fetches in
proportion and verifies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from pyroaring import AbstractBitMap, BitMap

from ..backends import Grouping
from ..catalog import as_array


@dataclass(frozen=True)
class CostModel:
    """Estimated cost (ms) of one search on one backend, by what it touches.

    ``scope`` is the rows of the partitions searched (the whole tenant
    collection unless the plan names class groups): Milvus Lite makes a
    Python pass over each of them, twice as dear when any filter is given
    (``filter_ms_per_1k``); ``partition_ms`` is paid per named partition.
    search/calibrate.py measures these per store instead of trusting the
    defaults below: on a larger store the rates that grow with the
    collection dominate the fixed costs."""

    name: str
    base_ms: float
    scan_ms_per_1k_rows: float  # rows that pass the filter
    range_term_ms: float
    id_ms: float
    range_fixed_ms: float = 0.0  # paid once when any range term is present
    field_ms_per_1k_rows: float = 0.0  # a non-primary-key term is evaluated on every row in scope
    scope_ms_per_1k: float = 0.0  # every row of the searched partitions, filter or not
    filter_ms_per_1k: float = 0.0  # every row in scope, when there is a filter
    partition_ms: float = 0.0  # per named partition
    max_terms: int = 64
    max_ids: int = 20_000

    def cost(self, candidates: int, terms: int, ids: int, field_rows: int = 0, *, scope: int = 0, filtered: bool = True, partitions: int = 0) -> float:
        fixed = self.range_fixed_ms if terms else 0.0
        return (
            self.base_ms
            + self.scan_ms_per_1k_rows * candidates / 1000
            + fixed
            + self.range_term_ms * terms
            + self.id_ms * ids
            + self.field_ms_per_1k_rows * field_rows / 1000
            + self.scope_ms_per_1k * scope / 1000
            + (self.filter_ms_per_1k * scope / 1000 if filtered else 0.0)
            + self.partition_ms * partitions
        )


# Defaults from this project's benchmark machine, used until a store is
# calibrated (search/calibrate.py). On Milvus Lite any filter is a pass over
# every row in scope, so naming partitions is the only way under that pass.
# On a 2.3 server `row_id in [...]` is answered from the primary-key index
# while `vclass in [...]` is evaluated row by row, whatever the list's length.
LITE = CostModel(
    "milvus-lite",
    base_ms=1.5,
    scan_ms_per_1k_rows=0.0,
    range_term_ms=0.3,
    id_ms=0.1,  # per listed ID
    field_ms_per_1k_rows=0.05,
    scope_ms_per_1k=0.5,
    filter_ms_per_1k=0.9,
    partition_ms=0.15,
)
SERVER = CostModel(
    "milvus-server",
    base_ms=3.0,
    scan_ms_per_1k_rows=0.08,
    range_term_ms=0.2,
    id_ms=0.0045,
    range_fixed_ms=30.0,
    field_ms_per_1k_rows=0.06,
    scope_ms_per_1k=0.01,
    partition_ms=0.02,
)


@dataclass(frozen=True)
class DenyAll:
    tenant: str
    reason: str = "no visible rows"
    kind: str = "deny-all"
    exact: bool = True

    def describe(self) -> str:
        return f"deny-all in tenant {self.tenant!r}: {self.reason}; no search is made"


@dataclass(frozen=True)
class AllowAll:
    tenant: str
    visible: int
    kind: str = "allow-all"
    exact: bool = True
    expr: str = ""  # the tenant's collection holds only its rows: no filter

    def fetch_limit(self, k: int) -> int:
        return k

    def describe(self) -> str:
        return f"allow-all in tenant {self.tenant!r} ({self.visible} rows): no filter"


@dataclass(frozen=True)
class Filter:
    tenant: str
    expr: str
    strategy: str  # "classes", "ranges", "ids", their "not-" forms, "groups", or the supersets "superset" / "scan"
    exact: bool
    visible: int
    candidates: int  # rows of the tenant the expression lets through
    terms: int
    ids: int
    cost_ms: float
    kind: str = field(default="filter")
    groups: tuple[int, ...] = ()  # class groups (partitions) searched; () = the whole collection
    scope: int = 0  # rows the search walks (the named groups' rows; 0: the tenant's), of which ``visible`` count

    def fetch_limit(self, k: int) -> int:
        """How many hits to ask for so that k visible ones are likely among them."""
        if self.exact:
            return k
        ratio = self.candidates / max(1, self.visible)
        return int(math.ceil(k * ratio * 1.5)) + 10

    def describe(self) -> str:
        head = "exact" if self.exact else f"superset ({self.candidates} candidates for {self.visible} visible; over-fetch and verify)"
        expr = self.expr if len(self.expr) <= 300 else self.expr[:300] + f"… ({len(self.expr)} chars)"
        where = f" in {len(self.groups)} class group(s)" if self.groups else ""
        return f"{self.strategy} filter{where}, {head}, {self.terms} range terms + {self.ids} ids, est. {self.cost_ms:.1f} ms: {expr or '(none)'}"


Plan = DenyAll | AllowAll | Filter

IN_PROCESS = "in-process"  # the strategy of a dense search ranked in process (search/in_process.py)


def in_process(tenant: str, visible: int) -> Filter:
    """The plan of a dense search whose visible set is ranked in process: no
    filter form is chosen (choosing one can cost more than the search
    itself), and Milvus is never asked to filter."""
    return Filter(tenant, "", IN_PROCESS, True, visible, visible, 0, 0, 0.0)


def _tenant_runs(tenant_arr: np.ndarray, sub_arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of ``sub`` in tenant space: (first IDs, last IDs, hidden rows in each gap after a run)."""
    if sub_arr.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    pos = np.searchsorted(tenant_arr, sub_arr)
    breaks = np.flatnonzero(np.diff(pos) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [len(pos) - 1]))
    gaps = pos[starts[1:]] - pos[ends[:-1]] - 1
    return sub_arr[starts].astype(np.int64), sub_arr[ends].astype(np.int64), gaps


def balanced_or(parts: list[str]) -> str:
    """``a or b or c …`` as a balanced tree of parenthesised pairs."""
    if len(parts) == 1:
        return parts[0]
    mid = len(parts) // 2
    return f"({balanced_or(parts[:mid])} or {balanced_or(parts[mid:])})"


def _terms(firsts: np.ndarray, lasts: np.ndarray, classes: list[int] | None = None) -> tuple[list[str], int, int]:
    """Expression parts for classes, single IDs and ranges; (parts, range terms, listed items)."""
    parts = []
    if classes:
        parts.append(f"vclass in [{', '.join(map(str, sorted(classes)))}]")
    singles = [int(a) for a, b in zip(firsts, lasts) if a == b]
    if singles:
        parts.append(f"row_id in [{', '.join(map(str, singles))}]")
    ranges = [(int(a), int(b)) for a, b in zip(firsts, lasts) if a != b]
    parts.extend(f"(row_id >= {a} and row_id <= {b})" for a, b in ranges)
    return parts, len(ranges), len(singles) + len(classes or ())


def _terms_expr(firsts: np.ndarray, lasts: np.ndarray) -> tuple[str, int, int]:
    parts, terms, ids = _terms(firsts, lasts)
    return balanced_or(parts), terms, ids


SCAN_DENSITY = 20  # a filterless over-fetch is considered when at least 1 in 20 rows in scope is visible


class Planner:
    """Plans for one backend's cost model."""

    def __init__(self, model: CostModel = LITE) -> None:
        self.model = model

    def plan(
        self,
        visible: AbstractBitMap,
        tenant_rows: AbstractBitMap,
        tenant: str,
        classes: Mapping[int, AbstractBitMap] | None = None,
        grouping: Grouping | None = None,
    ) -> Plan:
        """The cheapest exact plan (or a superset): over the whole collection,
        or — where the collection is grouped (placement/layout.py) — over the
        class groups that hold visible rows, with a residual filter only if
        those groups hold hidden rows too."""
        vis = visible if visible.issubset(tenant_rows) else BitMap(visible) & BitMap(tenant_rows)
        n_vis, n_all = len(vis), len(tenant_rows)
        if n_vis == 0:
            return DenyAll(tenant, "the caller may read no row of this tenant")
        if n_vis == n_all:
            return AllowAll(tenant, n_vis)
        options = self._options(tenant, vis, tenant_rows, classes, ())
        if grouping is not None and classes:
            options += self._grouped(tenant, vis, tenant_rows, classes, grouping)
        return min(options, key=lambda f: f.cost_ms)

    def _grouped(self, tenant: str, vis: AbstractBitMap, tenant_rows: AbstractBitMap, classes: Mapping[int, AbstractBitMap], grouping: Grouping) -> list[Filter]:
        """Plans over the groups that hold visible rows."""
        by_group: dict[int, list[int]] = {}
        for cid in classes:
            by_group.setdefault(grouping.of(cid), []).append(cid)
        named: list[int] = []
        scope = BitMap()
        for g, cids in by_group.items():
            rows = BitMap.union(*(classes[c] for c in cids)) if len(cids) > 1 else BitMap(classes[cids[0]])
            if rows.intersect(vis):
                named.append(g)
                scope |= rows
        covered = sum(len(classes[c]) for c in classes)
        if covered != len(tenant_rows) or not vis.issubset(scope):
            return []  # rows outside every class: only a whole-collection plan finds them
        groups = tuple(sorted(named))
        if len(scope) == len(vis):
            cost = self.model.cost(len(vis), 0, 0, scope=len(scope), filtered=False, partitions=len(groups))
            return [Filter(tenant, "", "groups", True, len(vis), len(vis), 0, 0, cost, groups=groups, scope=len(scope))]
        in_scope = {c: classes[c] for g in groups for c in by_group[g]}
        return self._options(tenant, vis, scope, in_scope, groups)

    def _options(self, tenant: str, vis: AbstractBitMap, scope_rows: AbstractBitMap, classes: Mapping[int, AbstractBitMap] | None, groups: tuple[int, ...]) -> list[Filter]:
        """Every exact form that fits the budget over ``scope_rows`` (the
        rows searched), or else one superset of at most ``max_terms`` ranges."""
        n_vis, n_all = len(vis), len(scope_rows)
        t_arr = as_array(scope_rows)
        hidden = BitMap(scope_rows) - vis
        m = self.model
        options: list[Filter] = []

        def add(strategy: str, parts: list[str], terms: int, ids: int) -> None:
            if terms > m.max_terms or ids > m.max_ids or not parts:
                return
            body = balanced_or(parts)
            expr = f"not ({body})" if strategy.startswith("not") else body
            field_rows = n_all if "classes" in strategy else 0
            cost = m.cost(n_vis, terms, ids, field_rows, scope=n_all, partitions=len(groups))
            options.append(Filter(tenant, expr, strategy, True, n_vis, n_vis, terms, ids, cost, groups=groups, scope=n_all))

        vf, vl, v_gaps = _tenant_runs(t_arr, as_array(vis))
        hf, hl, _ = _tenant_runs(t_arr, as_array(hidden))
        add("ranges", *_terms(vf, vl))
        add("not-ranges", *_terms(hf, hl))
        # Plain ID lists: on a server `row_id in [...]` is a primary-key lookup.
        if n_vis <= m.max_ids:
            add("ids", [f"row_id in [{', '.join(map(str, as_array(vis).tolist()))}]"], 0, n_vis)
        if 0 < len(hidden) <= m.max_ids:
            add("not-ids", [f"row_id in [{', '.join(map(str, as_array(hidden).tolist()))}]"], 0, len(hidden))
        if classes:
            inside, outside = [], []
            vis_rest, hid_rest = BitMap(), BitMap()
            for cid, rows in classes.items():
                seen = rows.intersection_cardinality(vis)
                if seen == len(rows):
                    inside.append(cid)
                elif seen == 0:
                    outside.append(cid)
                else:
                    vis_rest |= rows & vis
                    hid_rest |= rows - vis
            if inside:
                f, l_, _ = _tenant_runs(t_arr, as_array(vis_rest))
                add("classes", *_terms(f, l_, inside))
            if outside:
                f, l_, _ = _tenant_runs(t_arr, as_array(hid_rest))
                add("not-classes", *_terms(f, l_, outside))
        if n_vis * SCAN_DENSITY >= n_all:
            # No filter at all, over-fetching in proportion: a dense visible
            # set scattered over every class (document ACLs) costs hundreds of
            # IDs or ranges, but a filterless search of a few times k rows is
            # far cheaper than evaluating that long a filter.
            cost = m.cost(n_all, 0, 0, scope=n_all, filtered=False, partitions=len(groups))
            options.append(Filter(tenant, "", "scan", False, n_vis, n_all, 0, 0, cost, groups=groups, scope=n_all))
        return options or [self._superset(tenant, vf, vl, v_gaps, n_vis, n_all, groups)]

    def _superset(self, tenant: str, firsts: np.ndarray, lasts: np.ndarray, gaps: np.ndarray, n_vis: int, scope: int, groups: tuple[int, ...]) -> Filter:
        """Merge the runs across the smallest gaps until at most max_terms remain."""
        m = self.model
        n_merge = len(firsts) - m.max_terms
        merge = np.zeros(len(gaps), dtype=bool)
        merge[np.argsort(gaps, kind="stable")[:n_merge]] = True
        keep_start = np.concatenate(([True], ~merge))
        keep_end = np.concatenate((~merge, [True]))
        f2, l2 = firsts[keep_start], lasts[keep_end]
        extra = int(gaps[merge].sum())
        body, terms, ids = _terms_expr(f2, l2)
        candidates = n_vis + extra
        cost = m.cost(candidates, terms, ids, scope=scope, partitions=len(groups))
        return Filter(tenant, body, "superset", False, n_vis, candidates, terms, ids, cost, groups=groups, scope=scope)
