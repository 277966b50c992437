"""Strings from outside — tenants, attribute values, external ids, selectors,
user and role names, queries — can never widen a filter.

Only the tenant is ever written into a Milvus expression (as a string
literal); everything else becomes bitmaps of integer row IDs before Milvus
sees it, and a query is search data, never expression text. So:

* a hypothesis fuzz of the expression builder parses every generated
  expression with an independent reader of Milvus' string-literal grammar and
  checks that the tenant comes back unchanged and nothing but integers and
  keywords follow it;
* on Milvus Lite, hostile tenants' expressions select exactly their rows;
* end to end, hostile names everywhere still give exactly the permitted rows.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroaring import BitMap, FrozenBitMap

from permrag import CatalogError, PermRAG
from permrag.catalog import check_tenant
from permrag.embed import HashEncoder
from permrag.planner import LITE, SERVER, Planner, tenant_expr

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
NASTY_CHARS = st.sampled_from(list('"\\\'`()[]{}=<>!&|%$#,. ') + ["or", "and", "not", " in ", "row_id", "vclass", "中", "é", "🙂"])
tenants = st.one_of(
    st.sampled_from(HOSTILE),
    st.lists(st.one_of(NASTY_CHARS, st.text(min_size=1, max_size=3)), min_size=1, max_size=40).map("".join),
)


def _valid(t: str) -> bool:
    try:
        check_tenant(t)
        t.encode("utf-8")
        return True
    except (CatalogError, UnicodeEncodeError):
        return False


def read_literal(expr: str, start: int) -> tuple[str, int]:
    """Milvus' double-quoted string literal at ``expr[start]``: its value and
    the index after the closing quote. Written from the grammar (Plan.g4):
    any char but ``"``, ``\\``, CR or LF, or a backslash escape."""
    assert expr[start] == '"', expr
    out, i = [], start + 1
    simple = {'"': '"', "\\": "\\", "'": "'", "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}
    while True:
        c = expr[i]
        if c == '"':
            return "".join(out), i + 1
        assert c not in "\r\n", "raw line break inside a literal"
        if c == "\\":
            out.append(simple[expr[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1


INT_ONLY = re.compile(r"^ and (not )?\((?:[ \[\](),0-9]|row_id|vclass|in|and|or|not|>=|<=|==|<|>)*\)$")


@settings(max_examples=400, deadline=None)
@given(tenant=tenants.filter(_valid), data=st.data())
def test_expression_builder_keeps_every_tenant_a_single_literal(tenant, data):
    expr = tenant_expr(tenant)
    assert expr.startswith("tenant == ")
    value, end = read_literal(expr, len("tenant == "))
    assert value == tenant and end == len(expr)

    # every plan: the same literal, then only integers and keywords
    rows = BitMap(range(100, 100 + data.draw(st.integers(2, 400))))
    picked = data.draw(st.lists(st.sampled_from(list(rows)), min_size=1, max_size=len(rows)))
    classes = {1: BitMap(r for r in rows if r % 3 == 0), 2: BitMap(r for r in rows if r % 3 != 0)}
    for model in (LITE, SERVER):
        plan = Planner(model).plan(FrozenBitMap(picked), rows, tenant, classes)
        if not hasattr(plan, "expr"):
            continue
        value, end = read_literal(plan.expr, len("tenant == "))
        assert value == tenant
        rest = plan.expr[end:]
        assert rest == "" or INT_ONLY.match(rest), rest


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


def _rows_matching(rag: PermRAG, expr: str) -> set[int]:
    store = rag._store()
    got = store.client().query(store.collection, filter=expr, output_fields=["row_id"], limit=16384)
    return {int(g["row_id"]) for g in got}


def test_hostile_tenants_select_exactly_their_rows_in_milvus(hostile_store):
    rag = hostile_store
    for t in HOSTILE + ["plain"]:
        want = set(rag.catalog.tenant_rows(t))
        assert len(want) == 5
        assert _rows_matching(rag, tenant_expr(t)) == want, t


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenant=tenants.filter(_valid))
def test_fuzzed_tenants_never_widen_a_milvus_filter(hostile_store, tenant):
    rag = hostile_store
    assert _rows_matching(rag, tenant_expr(tenant)) == set(rag.catalog.tenant_rows(tenant))


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
    permitted = {
        d["external_id"]
        for d in docs
        if d["tenant"] == tenant and d["attrs"]["dept"] in ('v" or row_id >= 0 or "', "a\\") and d["attrs"]["lvl"] != "2"
    }
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
