"""Strings from outside — tenants, attribute values, external ids, selectors,
user and role names, queries — can never widen a filter.

No string from outside is ever written into a Milvus expression: a tenant is
pinned by its own collection (named by a number the catalog allocates), and
everything else becomes bitmaps of integer row IDs before Milvus sees it; a
query is search data, never expression text. So:

* a hypothesis fuzz of the planner, for hostile tenants and random visible
  sets, checks that every expression is made of integers and keywords only;
* on Milvus Lite, hostile tenants' rows land in their own collections, and
  each collection holds exactly its tenant's rows;
* end to end, hostile names everywhere still give exactly the permitted rows.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroaring import BitMap, FrozenBitMap

from permrag import CatalogError, PermRAG
from permrag.domain.names import check_tenant
from permrag.embed import HashEncoder
from permrag.search import LITE, SERVER, Planner

from ..conftest import examples

HOSTILE = [
    'a" or row_id >= 0 or "',
    '" || tenant != "',
    "a' or 1 == 1 or '",
    "back\\",
    '\\"',
    '\\\\" or true or "\\\\',
    "tenant == tenant",
    'x" and not (row_id in [1]) or "',
    "ünï cödé 中文 租户 🙂",
    "%s %d {0} ${x} `rm`",
    "row_id > 0",
    "q" * 256,
]
NASTY_CHARS = st.sampled_from(list("\"\\'`()[]{}=<>!&|%$#,. ") + ["or", "and", "not", " in ", "row_id", "vclass", "中", "é", "🙂"])
tenants = st.one_of(
    st.sampled_from(HOSTILE),
    st.lists(st.one_of(NASTY_CHARS, st.text(min_size=1, max_size=3)), min_size=1, max_size=40).map("".join),
)


def _valid(t: str) -> bool:
    try:
        check_tenant(t)
        return True
    except CatalogError:
        return False


INT_ONLY = re.compile(r"^(?:[ \[\](),0-9]|row_id|vclass|in|and|or|not|>=|<=|==|<|>)*$")


@settings(max_examples=examples(400), deadline=None)
@given(tenant=tenants.filter(_valid), data=st.data())
def test_plans_hold_only_integers_and_keywords(tenant, data):
    rows = BitMap(range(100, 100 + data.draw(st.integers(2, 400))))
    picked = data.draw(st.lists(st.sampled_from(list(rows)), min_size=1, max_size=len(rows)))
    classes = {1: BitMap(r for r in rows if r % 3 == 0), 2: BitMap(r for r in rows if r % 3 != 0)}
    for model in (LITE, SERVER):
        plan = Planner(model).plan(FrozenBitMap(picked), rows, tenant, classes)
        expr = getattr(plan, "expr", "")
        assert INT_ONLY.match(expr), expr


# ---------------------------------------------------------------- on Milvus Lite
@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    rag = PermRAG.open(tmp_path_factory.mktemp("inj") / "home", encoder=HashEncoder(32))
    docs = []
    for n, t in enumerate(HOSTILE + ["plain"]):
        for i in range(5):
            docs.append({"external_id": f"{n}-{i}", "tenant": t, "text": f"budget note {n} {i}", "attrs": {"k": "v"}})
    rag.add_documents(docs)
    yield rag
    rag.close()


def test_hostile_tenants_get_collections_holding_exactly_their_rows(hostile_store):
    rag = hostile_store
    numbers = set()
    for t in HOSTILE + ["plain"]:
        want = set(rag.catalog.tenant_rows(t))
        assert len(want) == 5
        no = rag.catalog.tenants.number(t)
        numbers.add(no)
        assert rag.backend.all_ids(no) == want, t
        assert rag.backend.name(no) == f"permrag_t{no}"
    assert len(numbers) == len(HOSTILE) + 1


@settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenant=tenants.filter(_valid))
def test_fuzzed_tenants_reach_only_their_own_rows(hostile_store, tenant):
    rag = hostile_store
    no = rag.catalog.tenants.number(tenant)
    got = rag.backend.all_ids(no) if no is not None else set()
    assert got == set(rag.catalog.tenant_rows(tenant))


# ---------------------------------------------------------------- end to end
HOSTILE_VALUES = ['v" or row_id >= 0 or "', "x*", "a\\", "中文", "' or '1'='1", "dept:hr", "*"]


def test_hostile_names_everywhere_still_give_exactly_the_permitted_rows(tmp_path):
    rag = PermRAG.open(tmp_path / "home", encoder=HashEncoder(64))
    tenant = 'acme" or tenant != "'
    docs = [
        {
            "external_id": f'doc" or row_id > 0 or "{i}',
            "tenant": tenant,
            "text": f"hostile budget text {i} " + HOSTILE_VALUES[i % len(HOSTILE_VALUES)],
            "attrs": {"dept": HOSTILE_VALUES[i % len(HOSTILE_VALUES)], "lvl": str(i % 3)},
        }
        for i in range(70)
    ]
    docs += [{"external_id": f"o{i}", "tenant": "other", "text": f"hostile budget text {i}", "attrs": {"dept": "*"}} for i in range(30)]
    rag.add_documents(docs)
    role, user = 'r" or "1"="1', "u' or 1=1 --"
    rag.policy.add_role(role, tenant=tenant)
    rag.policy.grant(role, 'dept:v" or row_id >= 0 or "', tenant=tenant)
    rag.policy.grant(role, "dept:a\\", tenant=tenant)
    rag.policy.deny(role, "lvl:2", tenant=tenant)
    rag.policy.assign(user, role, tenant=tenant)
    permitted = {d["external_id"] for d in docs if d["tenant"] == tenant and d["attrs"]["dept"] in ('v" or row_id >= 0 or "', "a\\") and d["attrs"]["lvl"] != "2"}
    assert {r.external_id for r in rag.rows(rag.visible(user, tenant))} == permitted
    assert 5 < len(permitted) < 70
    for query in ['" or row_id >= 0 or "', "budget \\", "hostile' OR 1=1", "中文 budget", "x" * 5000, "* ) or (", "budget"]:
        for mode in ("dense", "keyword", "hybrid"):
            hits = rag.search(query, user=user, tenant=tenant, k=100, mode=mode)
            got = {h.external_id for h in hits}
            assert got <= permitted, (query, mode, got - permitted)
            if mode == "dense":
                assert got == permitted  # k covers every permitted row: all of them, nothing else
    # a user whose name looks like a selector or an expression sees nothing
    for stranger in ['" or "1"="1', "*", "dept:*", role + " "]:
        assert rag.search("budget", user=stranger, tenant=tenant, k=50, mode="dense") == []
    rag.close()
