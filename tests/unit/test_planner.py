"""The planner alone (search/planner.py), no Milvus: every plan's expression,
evaluated over the tenant's rows, selects exactly the visible rows (exact
plans) or a superset of them (over-fetch plans), in whatever partitions the
plan names; "sees nothing" and "sees everything" are told apart from a filter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from permrag.placement.layout import Grouping
from permrag.search.planner import LITE, SERVER, AllowAll, DenyAll, Filter, Planner

from ..conftest import examples


def selected(plan: Filter, vclass_of: dict[int, int], grouping: Grouping | None) -> set[int]:
    """The rows of the tenant a plan lets through: its partitions, then its
    expression (Milvus' filter syntax for these forms is Python's)."""
    code = compile(plan.expr, "<plan>", "eval") if plan.expr else None
    out = set()
    for row, vclass in vclass_of.items():
        if plan.groups and (grouping is None or grouping.of(vclass) not in plan.groups):
            continue
        if code is None or eval(code, {"__builtins__": {}}, {"row_id": row, "vclass": vclass}):
            out.add(row)
    return out


@st.composite
def tenants(draw):
    """Rows in classes of contiguous blocks (as permission-aware IDs give them),
    with gaps (other tenants' IDs), and a visible set made of whole classes
    plus and minus a few single rows."""
    n_classes = draw(st.integers(1, 12))
    vclass_of: dict[int, int] = {}
    classes: dict[int, BitMap] = {}
    at = 0
    for c in range(n_classes):
        for _ in range(draw(st.integers(1, 3))):  # a class's blocks
            at += draw(st.integers(0, 40))  # a gap: IDs of no row of this tenant
            size = draw(st.integers(1, 60))
            for r in range(at, at + size):
                vclass_of[r] = c
                classes.setdefault(c, BitMap()).add(r)
            at += size
    rows = BitMap(vclass_of)
    whole = draw(st.sets(st.sampled_from(sorted(classes)), max_size=n_classes))
    visible = BitMap()
    for c in whole:
        visible |= classes[c]
    ids = sorted(rows)
    visible |= BitMap(draw(st.sets(st.sampled_from(ids), max_size=8)))
    visible -= BitMap(draw(st.sets(st.sampled_from(ids), max_size=8)))
    return vclass_of, rows, classes, visible


@pytest.mark.parametrize("model", [LITE, SERVER], ids=["lite", "server"])
@pytest.mark.parametrize("partitions", [None, 4])
@settings(max_examples=examples(150), deadline=None)
@given(world=tenants())
def test_every_plan_selects_exactly_the_visible_rows_or_a_superset(model, partitions, world) -> None:
    vclass_of, rows, classes, visible = world
    grouping = Grouping(partitions) if partitions else None
    plan = Planner(model).plan(visible, rows, "t", classes, grouping)
    want = set(visible & rows)
    if not want:
        assert isinstance(plan, DenyAll)
        return
    if want == set(rows):
        assert isinstance(plan, AllowAll) and plan.visible == len(rows)
        return
    assert isinstance(plan, Filter) and plan.visible == len(want)
    got = selected(plan, vclass_of, grouping)
    if plan.exact:
        assert got == want, plan.describe()
    else:
        assert want <= got, plan.describe()
        assert plan.fetch_limit(10) >= 10
    # every form the planner weighs, not only the cheapest it chose (on small
    # tenants the cost models often prefer an over-fetching scan)
    planner = Planner(model)
    forms = planner._options("t", visible & rows, rows, classes, ())
    if grouping is not None:
        forms += planner._grouped("t", visible & rows, rows, classes, grouping)
    for form in forms:
        got = selected(form, vclass_of, grouping)
        assert got == want if form.exact else want <= got, form.describe()
        assert form.candidates == len(got) or not form.exact, form.describe()
        # the rows the search walks (its groups', or the tenant's): an ANN search widens by visible / scope
        walked = [r for r, c in vclass_of.items() if not form.groups or (grouping is not None and grouping.of(c) in form.groups)]
        assert form.scope == len(walked), form.describe()


def test_rows_outside_the_tenant_never_widen_a_plan() -> None:
    """A visible set may name IDs the tenant does not hold (another tenant's
    rows): the plan is of the tenant's visible rows only."""
    rows = BitMap(range(100, 200))
    vclass_of = dict.fromkeys(rows, 0)
    plan = Planner(LITE).plan(BitMap(range(0, 150)), rows, "t", {0: rows})
    assert isinstance(plan, Filter) and plan.visible == 50
    got = selected(plan, vclass_of, None)
    assert got == set(range(100, 150)) if plan.exact else set(range(100, 150)) <= got
    assert isinstance(Planner(LITE).plan(BitMap(range(0, 100)), rows, "t"), DenyAll)


def test_an_ann_search_widens_with_the_share_its_filter_admits() -> None:
    """backends/schema.dense_search_params: no filter searches as a silo does;
    a caller who may see a share s of the rows widens HNSW's ef and IVF's nprobe
    by 1/s², bounded (EF_MAX, every list); FLAT takes no search parameter."""
    from permrag.backends.schema import EF_MAX, INDEX_BUILD, dense_search_params

    assert dense_search_params("FLAT", 10, 0.001) == {"metric_type": "COSINE"}
    assert dense_search_params("HNSW", 10)["params"] == {"ef": 64}
    assert dense_search_params("HNSW", 100)["params"] == {"ef": 200}
    assert dense_search_params("HNSW", 10, 0.5)["params"] == {"ef": 256}
    assert dense_search_params("HNSW", 10, 0.0)["params"] == {"ef": EF_MAX}
    assert dense_search_params("IVF_FLAT", 10)["params"] == {"nprobe": 32}
    assert dense_search_params("IVF_FLAT", 10, 0.75)["params"] == {"nprobe": 57}
    assert dense_search_params("IVF_FLAT", 10, 0.01)["params"] == {"nprobe": INDEX_BUILD["IVF_FLAT"]["nlist"]}
    efs = [dense_search_params("HNSW", 10, s)["params"]["ef"] for s in (1.0, 0.8, 0.5, 0.2)]
    assert efs == sorted(efs) and len(set(efs)) == len(efs)


def test_only_an_ann_set_searched_without_a_residual_filter_skips_in_process_ranking() -> None:
    """search/execute.indexed_alone: with HNSW or IVF, everything visible, or class
    groups of visible rows alone, go to the index as a silo's would; a residual
    filter, a superset, FLAT, or a plan ranked in process do not."""
    from types import SimpleNamespace

    from permrag.search.execute import indexed_alone
    from permrag.search.planner import in_process

    rows = BitMap(range(0, 400))
    classes = {c: BitMap(range(c * 100, c * 100 + 100)) for c in range(4)}
    planner, grouping = Planner(SERVER), Grouping(4)
    (alone,) = planner._grouped("t", classes[0] | classes[1], rows, classes, grouping)
    assert isinstance(alone, Filter) and alone.strategy == "groups" and alone.scope == 200 and not alone.expr
    forms = planner._grouped("t", classes[0] | BitMap(range(100, 150)), rows, classes, grouping)
    mixed = min((f for f in forms if f.exact), key=lambda f: f.cost_ms)
    scan = next(f for f in forms if not f.exact)
    assert mixed.expr and mixed.scope == 200 and scan.scope == 200
    hnsw, ivf, flat = (SimpleNamespace(index=i) for i in ("HNSW", "IVF_FLAT", "FLAT"))
    for ann in (hnsw, ivf):
        assert indexed_alone(alone, ann) and indexed_alone(AllowAll("t", 400), ann)
        assert not indexed_alone(mixed, ann) and not indexed_alone(scan, ann) and not indexed_alone(in_process("t", 200), ann)
    assert not indexed_alone(alone, flat) and not indexed_alone(AllowAll("t", 400), flat)
    assert not indexed_alone(alone, object())  # a backend that names no index: FLAT
