"""Isolation (issue 11): no row reaches a caller across stores, tenants or
subject names, and a failed call loses nothing — on real parts."""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from permrag import ArgumentError, BackendError, CatalogError, ConfigError, NotReadableError, PermRAG, PermragError, PolicyError, StoreMismatchError, UnknownRowError
from permrag.domain.names import kind_prefix, problem
from permrag.embed import HashEncoder

from ..conftest import examples, milvus_ids

ENC = HashEncoder(32)


def _docs(prefix: str, n: int, tenant: str = "default", level: str = "secret") -> list[dict]:
    return [{"external_id": f"{prefix}{i}", "text": f"{prefix} confidential budget {i}", "tenant": tenant, "attrs": {"level": level}} for i in range(n)]


def _everyone(rag: PermRAG, tenant: str = "default", user: str = "ann") -> None:
    rag.policy.add_role("all", tenant=tenant)
    rag.policy.grant("all", "*", tenant=tenant)
    rag.policy.assign_user(user, "all", tenant=tenant)


# ---------------------------------------------------------------- 1. stores sharing one Milvus
@pytest.mark.parametrize("backend", ["lite", "server"])
def test_two_stores_on_one_milvus_never_share_a_collection(backend, tmp_path, request):
    if backend == "server":
        uri = request.getfixturevalue("milvus_server")
        collection = f"shared_{uuid.uuid4().hex[:8]}"
    else:
        uri, collection = str(tmp_path / "shared.db"), "permrag"
    a = PermRAG.open(tmp_path / "a", milvus_uri=uri, collection=collection, encoder=ENC, consistency="Strong")
    a.add_documents(_docs("a-secret-", 20))
    _everyone(a)
    b = PermRAG.open(tmp_path / "b", milvus_uri=uri, collection=collection, encoder=ENC, consistency="Strong")
    _everyone(b)
    with pytest.raises(StoreMismatchError, match="belongs to another permrag store"):
        b.add_documents(_docs("b-", 5))
    with pytest.raises(StoreMismatchError):
        b.search("budget", user="ann", mode="dense")
    with pytest.raises(StoreMismatchError):
        b.reconcile(full=True)
    # A's rows are untouched; a store with its own collection on the same Milvus works
    assert len(a.search("budget", user="ann", k=50, mode="dense")) == 20
    c = PermRAG.open(tmp_path / "c", milvus_uri=uri, collection=f"{collection}_c", encoder=ENC, consistency="Strong")
    c.add_documents(_docs("c-", 5))
    _everyone(c)
    assert {h.external_id for h in c.search("budget", user="ann", k=50, mode="dense")} == {f"c-{i}" for i in range(5)}
    assert c.reconcile(full=True).orphans_removed == 0
    assert len(milvus_ids(a)) == 20
    for r in (a, b, c):
        r.close()


def test_a_command_that_forgets_its_database_url_is_refused(tmp_path, pg_url, milvus_server):
    """The PostgreSQL catalog wrote the collection; opening the home's SQLite
    catalog against the same Milvus must not share, overwrite or reconcile it."""
    home = tmp_path / "home"
    collection = f"pg_{uuid.uuid4().hex[:8]}"
    pg = PermRAG.open(home, database_url=pg_url, milvus_uri=milvus_server, collection=collection, encoder=ENC, consistency="Strong")
    pg.add_documents(_docs("d", 10))
    _everyone(pg)
    before = milvus_ids(pg)
    sqlite = PermRAG.open(home, milvus_uri=milvus_server, collection=collection, encoder=ENC)
    for call in (lambda: sqlite.add_documents(_docs("d", 3)), lambda: sqlite.reconcile(full=True)):
        with pytest.raises(StoreMismatchError):
            call()
    assert milvus_ids(pg) == before
    assert len(pg.search("budget", user="ann", k=50, mode="dense")) == 10
    sqlite.close()
    pg.close()


def test_a_store_bound_to_its_collection_refuses_a_milvus_without_it(tmp_path):
    home = tmp_path / "home"
    with PermRAG.open(home, encoder=ENC) as rag:
        rag.add_documents(_docs("d", 3))
        _everyone(rag)
    with PermRAG.open(home, milvus_uri=str(tmp_path / "elsewhere.db"), encoder=ENC) as wrong:
        with pytest.raises(ConfigError, match="does not have"):
            wrong.search("budget", user="ann", mode="dense")


def test_verify_drops_hits_whose_milvus_identity_disagrees(tmp_path, caplog):
    # Milvus' search path (the in-process one: tests/integration/test_local.py)
    rag = PermRAG.open(tmp_path / "h", encoder=ENC, local_rows=0)
    rag.add_documents(_docs("d", 10))
    _everyone(rag)
    backend = rag.backend
    real = backend.search

    def forged(tenant_no, mode, **kw):
        out = real(tenant_no, mode, **kw)
        # the first hit claims another tenant, the second another external id
        return [[replace(h, tenant="other") if i == 0 else replace(h, external_id="forged") if i == 1 else h for i, h in enumerate(hits)] for hits in out]

    backend.search = forged
    with caplog.at_level(logging.WARNING, logger="permrag.security"):
        hits = rag.search("budget", user="ann", k=10, mode="dense")
    assert len(hits) == 8 and all(h.external_id.startswith("d") for h in hits)
    assert rag.stats["mismatched_hits"] >= 2 and rag.stats["dropped_hits"] == rag.stats["mismatched_hits"]
    assert any("disagree with the catalog" in r.message for r in caplog.records)
    rag.close()


def test_reconcile_never_deletes_a_batch_being_published(tmp_path):
    """reconcile(full) lists Milvus before it reads the catalog: a batch that
    lands while it lists is known by the time it compares."""
    home = tmp_path / "home"
    writer = PermRAG.open(home, encoder=ENC)
    writer.add_documents(_docs("a", 5))
    fixer = PermRAG.open(home, encoder=ENC)
    real = fixer.backend.all_ids

    def list_while_another_process_publishes(tenant_no, expr=""):
        writer.add_documents(_docs("b", 7))  # prepared, written to Milvus and published meanwhile
        return real(tenant_no, expr)

    fixer.backend.all_ids = list_while_another_process_publishes
    report = fixer.reconcile(full=True)
    assert report.orphans_removed == 0 and report.missing == []
    assert len(milvus_ids(writer)) == 12
    _everyone(writer)
    assert len(writer.search("budget", user="ann", k=50, mode="dense")) == 12
    writer.close()
    fixer.close()


def test_reconcile_removes_real_orphans(tmp_path):
    rag = PermRAG.open(tmp_path / "h", encoder=ENC)
    rag.add_documents(_docs("a", 5))
    no = rag.catalog.tenants.number("default")
    rag.backend.insert(no, [{"row_id": 999_999, "tenant": "default", "external_id": "ghost", "vclass": 0, "text": "x", "dense": [1.0] + [0.0] * 31}])
    report = rag.reconcile(full=True)
    assert report.orphans_removed == 1 and 999_999 not in milvus_ids(rag)
    rag.add_documents([{"external_id": "o", "text": "other tenant", "tenant": "other"}])
    assert rag.backend.all_ids() == milvus_ids(rag) | milvus_ids(rag, "other") and len(rag.backend.all_ids()) == 6
    assert rag.catalog.by_external_id("a0").row_id in milvus_ids(rag)
    with pytest.raises(UnknownRowError):
        rag.catalog.by_external_id("o")  # a row of another tenant
    rag.close()


# ---------------------------------------------------------------- 2. users called like roles
def test_a_user_called_like_a_role_holds_nothing_by_that(tmp_path):
    rag = PermRAG.open(tmp_path / "h", catalog_only=True)
    rag.add_documents([{"external_id": f"d{i}", "attrs": {"dept": "hr" if i % 2 else "eng"}} for i in range(10)])
    p = rag.policy
    p.add_role("auditor")
    p.grant("auditor", "*")
    p.add_role("viewer")
    p.grant("viewer", "dept:eng")
    assert len(rag.visible("auditor")) == 0 and rag.explain("auditor", "d1").decision == "unknown-user"
    assert rag.who_can_see("d1") == {"users": [], "roles": ["auditor"]}
    p.assign_user("auditor", "viewer")  # the IdP user "auditor" holds viewer, not the role auditor
    assert {r.external_id for r in rag.rows(rag.visible("auditor"))} == {f"d{i}" for i in range(0, 10, 2)}
    e = rag.explain("auditor", "d1")
    assert not e.visible and e.decision == "no-rule"
    assert rag.explain("auditor", "d0").path == ("auditor", "viewer")
    assert rag.enforcer().enforce("auditor", "default", rag.row("d1"), "read") is False
    # the role auditor's holders are unchanged: nobody
    assert rag.who_can_see("d1")["users"] == []
    p.assign_user("auditor", "auditor")
    assert len(rag.visible("auditor")) == 10
    text = p.export_csv()
    assert "g, user:auditor, viewer, default" in text and "g, user:auditor, auditor, default" in text
    with PermRAG.open(tmp_path / "other", catalog_only=True) as other:
        other.add_documents([{"external_id": f"d{i}", "attrs": {"dept": "hr" if i % 2 else "eng"}} for i in range(10)])
        other.policy.import_text(text)
        assert other.policy.export_csv().splitlines()[1:] == text.splitlines()[1:]
        assert other.visible("auditor") == rag.visible("auditor")
        assert other.policy.roles_of("auditor") == ["auditor", "viewer"]
    with pytest.raises(PolicyError, match="must not start with"):
        p.add_role("user:mallory")
    rag.close()


def test_demo_policy_gives_the_auditor_user_nothing(tmp_path):
    from permrag.demo import data_path

    with PermRAG.open(tmp_path / "h", catalog_only=True) as rag:
        from permrag.ingest.loaders import load_jsonl

        rag.add_documents(load_jsonl(data_path("kb.jsonl")))
        rag.policy.import_csv(data_path("policy.csv"))
        assert rag.policy.has_role("auditor") and len(rag.visible("auditor")) == 0
        assert len(rag.visible("erin")) > 0  # the user who holds the auditor role


# ---------------------------------------------------------------- 4. CSV round trip of hostile names
NAME = st.text(min_size=1, max_size=12)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=list(HealthCheck))
@given(role=NAME, user=NAME, tenant=NAME, value=NAME)
def test_csv_export_import_is_the_identity_for_every_accepted_name(tmp_path_factory, role, user, tenant, value):
    home = tmp_path_factory.mktemp("csv")
    with PermRAG.open(home / "a", catalog_only=True) as rag:
        accepted = True
        try:
            rag.policy.add_role(role, tenant=tenant)
            rag.policy.grant(role, f"k:{value}", tenant=tenant)
            rag.policy.assign_user(user, role, tenant=tenant)
        except PermragError:
            accepted = False
        if not accepted:
            # refused names: never a control or line-separator character
            # smuggled in; nothing of the call was stored
            # or a user id shaped like a principal (``0:``, ``user:x``: policy/principals.py refuses those)
            assert any(problem(x) for x in (role, user, tenant)) or problem(value, 1024) or role.startswith(("user:", "group:", "role:")) or kind_prefix(user) is not None
            return
        text = rag.policy.export_csv()
        with PermRAG.open(home / "b", catalog_only=True) as other:
            other.policy.import_text(text)
            assert other.policy.export_csv().splitlines()[1:] == text.splitlines()[1:]
            assert other.policy.tenants() == [tenant]
            assert other.policy.rules(role, tenant) == [(role, f"k:{value}", "allow")]
            assert other.policy.roles_of(user, tenant) == [role]


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085", "\r", "\x0b", "\x1c"])
def test_a_line_separator_in_a_name_is_refused(rag, sep):
    with pytest.raises(PolicyError, match="control or line-separator"):
        rag.policy.add_role(f"x{sep}p, admin, other, *, read, allow")
    assert rag.policy.tenants() == []


def test_a_line_separator_in_a_file_cannot_smuggle_a_rule(rag, tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("p, viewer\u2028p, admin, other, *, read, allow, default, *, read, allow\n", encoding="utf-8")
    with pytest.raises(PolicyError):
        rag.policy.import_csv(path)
    assert rag.policy.tenants() == []


# ---------------------------------------------------------------- 5. permissioned() across tenants
def test_permissioned_matches_tenant_and_row(tmp_path):
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from permrag.integrations.langchain import permissioned

    class Fixed(BaseRetriever):
        docs: list[Document]
        k: int = 10

        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
            return self.docs[: self.k]

    rag = PermRAG.open(tmp_path / "h", catalog_only=True)
    rag.add_documents([{"external_id": "plan", "tenant": "acme"}, {"external_id": "plan", "tenant": "globex"}, {"external_id": "memo", "tenant": "acme"}])
    _everyone(rag, "acme")
    acme_plan = rag.row("plan", "acme")
    inner = Fixed(
        docs=[
            Document(page_content="globex's plan", metadata={"external_id": "plan", "tenant": "globex"}),
            Document(page_content="no tenant said", metadata={"external_id": "memo"}),
            Document(page_content="acme's plan, another row", metadata={"external_id": "plan", "tenant": "acme", "row_id": acme_plan.row_id + 99}),
            Document(page_content="acme's plan", metadata={"external_id": "plan", "tenant": "acme", "row_id": acme_plan.row_id}),
        ]
    )
    got = permissioned(inner, rag, user="ann", tenant="acme", k=5).invoke("plan")
    assert [d.page_content for d in got] == ["acme's plan"]
    single = permissioned(inner, rag, user="ann", tenant="acme", k=5, tenant_key=None).invoke("plan")
    assert "no tenant said" in [d.page_content for d in single]
    rag.close()


# ---------------------------------------------------------------- 6. BM25 statistics per tenant
def test_a_tenants_bm25_scores_do_not_depend_on_other_tenants(tmp_path):
    rag = PermRAG.open(tmp_path / "h", encoder=ENC)
    rag.add_documents([{"external_id": f"a{i}", "text": f"apple banana report {i}", "tenant": "acme"} for i in range(5)])
    _everyone(rag, "acme")
    before = [(h.external_id, round(h.score, 6)) for h in rag.search("apple", user="ann", tenant="acme", k=5, mode="keyword")]
    # another tenant floods the word: in a shared collection it would change acme's IDF
    for n in range(4):
        rag.add_documents([{"external_id": f"g{n}-{i}", "text": "apple apple cherry", "tenant": "globex"} for i in range(60)])
    after = [(h.external_id, round(h.score, 6)) for h in rag.search("apple", user="ann", tenant="acme", k=5, mode="keyword")]
    assert before == after and len(before) == 5
    assert rag.catalog.tenants.number("acme") != rag.catalog.tenants.number("globex")
    rag.close()


# ---------------------------------------------------------------- 7. existence oracles
def test_hidden_and_missing_rows_get_the_same_answer(tmp_path):
    rag = PermRAG.open(tmp_path / "h", encoder=ENC)
    rag.add_documents(_docs("pub", 3, level="public") + _docs("sec", 3))
    rag.policy.add_role("staff")
    rag.policy.grant("staff", "level:public")
    rag.policy.assign_user("dave", "staff")

    def answer(call):
        try:
            return ("ok", call())
        except PermragError as exc:
            return (type(exc).__name__, str(exc).replace("sec0", "X").replace("nope", "X"))

    for make in (
        lambda ext: rag.similar(ext, user="dave", k=2),
        lambda ext: rag.add_generated("derived", sources=[ext], user="dave"),
        lambda ext: rag.can_read("dave", ext),
    ):
        assert answer(lambda: make("sec0")) == answer(lambda: make("nope"))
    with pytest.raises(NotReadableError):
        rag.similar("sec0", user="dave")
    with pytest.raises(UnknownRowError):  # NotReadableError is both an unknown row …
        rag.add_generated("x", sources=["sec0"], user="dave")
    assert rag.similar("pub0", user="dave", k=2)
    rag.close()


# ---------------------------------------------------------------- 8. atomic replace
class _FailingEncoder:
    name = "hash-32"
    dim = 32

    def encode(self, texts):
        raise RuntimeError("model exploded")


def test_a_failed_replace_keeps_the_old_version(tmp_path):
    home = tmp_path / "h"
    rag = PermRAG.open(home, encoder=ENC, chunk_size=200, chunk_overlap=10)
    rag.add_documents([{"external_id": "memo", "text": "old budget memo " * 40, "attrs": {"level": "x"}}])
    _everyone(rag)
    old = rag.row("memo").row_ids
    bad_batches = [
        [{"external_id": "memo", "text": "new"}, {"external_id": "memo", "text": "twice"}],
        [{"external_id": "memo", "text": "new", "derived_from": ["nope"]}],
        [{"external_id": "memo", "text": "", "attrs": {}}],
    ]
    for docs in bad_batches:
        with pytest.raises(CatalogError):
            rag.add_documents(docs, replace=True)
        assert rag.row("memo").row_ids == old
    rag.close()
    broken = PermRAG.open(home, encoder=_FailingEncoder())
    with pytest.raises(ConfigError, match="model exploded"):
        broken.add_documents([{"external_id": "memo", "text": "new memo"}], replace=True)
    assert broken.row("memo").row_ids == old
    broken.close()
    rag = PermRAG.open(home, encoder=ENC)
    real_insert = rag.backend.insert

    def insert_fails(no, rows):
        real_insert(no, rows)
        raise BackendError("Milvus insert failed: simulated")

    rag.backend.insert = insert_fails
    with pytest.raises(BackendError):
        rag.add_documents([{"external_id": "memo", "text": "new memo"}], replace=True)
    assert rag.row("memo").row_ids == old and milvus_ids(rag) == set(old)
    rag.backend.insert = real_insert
    new = rag.add_documents([{"external_id": "memo", "text": "new memo"}], replace=True)
    assert rag.row("memo").row_id == new[0] and milvus_ids(rag) == set(new)
    rag.close()


def test_readers_see_the_old_or_the_new_version_never_neither(tmp_path):
    rag = PermRAG.open(tmp_path / "h", catalog_only=True)
    rag.add_documents([{"external_id": f"doc{i}", "attrs": {"v": "0"}} for i in range(20)])
    _everyone(rag)
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(len(rag.visible("ann")))

    t = threading.Thread(target=reader)
    t.start()
    for v in range(1, 15):
        rag.add_documents([{"external_id": f"doc{i}", "attrs": {"v": str(v)}} for i in range(20)], replace=True)
    stop.set()
    t.join()
    assert seen and set(seen) == {20}
    rag.close()


# ---------------------------------------------------------------- 10. answers instead of tracebacks
def test_explain_a_derived_row_whose_source_is_gone(tmp_path):
    rag = PermRAG.open(tmp_path / "h", catalog_only=True)
    rag.add_documents([{"external_id": "src"}, {"external_id": "sum", "derived_from": ["src"]}])
    _everyone(rag)
    rag.delete(["src"])
    e = rag.explain("ann", "sum")
    assert not e.visible and e.decision == "derived" and e.missing_sources == 1 and "gone" in str(e)
    rag.close()


@pytest.fixture
def small(tmp_path):
    rag = PermRAG.open(tmp_path / "h", encoder=ENC)
    rag.add_documents(_docs("d", 5))
    _everyone(rag)
    yield rag
    rag.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.add_documents(None),
        lambda r: r.add_documents([{"external_id": "x\ud800", "text": "t"}]),
        lambda r: r.add_documents([{"external_id": "x", "text": "lone \udc00 surrogate"}]),
        lambda r: r.add_documents([{"external_id": "x", "text": "t", "tenant": ""}]),
        lambda r: r.add_documents([{"external_id": "x", "text": "t", "tenant": 7}]),
        lambda r: r.add_documents([{"external_id": "x", "text": "t", "tenant": None}]),
        lambda r: r.search("q\udfff", user="ann"),
        lambda r: r.search("q", user="ann", weights=(float("nan"), 0.5)),
        lambda r: r.search("q", user="ann", weights=0.5),
        lambda r: r.search("q", user="ann", weights="ab"),
        lambda r: r.recommend(np.ones((1, 32)), users=["ann"], k=0),
        lambda r: r.recommend(np.ones((1, 32)), users=["ann"], k="5"),
        lambda r: r.recommend([[1.0] * 32, [1.0] * 31], users=["ann", "bob"]),
        lambda r: r.recommend([["a"] * 32], users=["ann"]),
        lambda r: r.recommend(np.ones((1, 32)), users="ann"),
        lambda r: r.retrieve("q", user="ann", k=0),
        lambda r: r.retrieve("q", user="ann", k=2.5),
        lambda r: r.retrieve("q", user="ann", k=5, candidates=3),
        lambda r: r.similar("d0", user="ann", k=-1),
        lambda r: r.delete(None),
    ],
)
def test_bad_arguments_are_errors_that_name_the_problem(small, call):
    before = (small.catalog_version, small.policy_version, len(milvus_ids(small)))
    with pytest.raises(PermragError) as info:
        call(small)
    assert str(info.value) and isinstance(info.value, (ArgumentError, CatalogError))
    assert (small.catalog_version, small.policy_version, len(milvus_ids(small))) == before


def test_recommend_writes_audit_records(small):
    small.recommend(ENC.encode(["budget"]), users=["ann"], k=3)
    rec = small.audit_log(limit=1)[0]
    assert rec["event"] == "recommend" and rec["user"] == "ann" and len(rec["rows"][0]) == 3


FIRST_USE = """
import sys, time
from permrag import PermRAG
from permrag.embed import HashEncoder
home, db_url, uri, collection, start, me = sys.argv[1:7]
rag = PermRAG.open(home, database_url=db_url, milvus_uri=uri, encoder=HashEncoder(32), collection=collection, consistency="Strong", partitions=4)
while time.time() < float(start):  # all processes reach the fresh store's first use at one moment
    time.sleep(0.001)
rag.add_documents([{"external_id": f"{me}-{i}", "text": f"budget {me} {i}", "attrs": {"dept": f"d{i % 3}"}} for i in range(20)])
print(rag.backend.grouping(rag.catalog.tenants.number("default")))
rag.close()
"""


def test_processes_of_one_store_first_use_a_fresh_milvus_at_once(tmp_path, pg_url, milvus_server):
    """Three processes of one store (PostgreSQL) make its root and tenant collections at the
    same moment: none is refused, none takes the grouped collection for a flat one, no row is lost."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    collection = f"first_{uuid.uuid4().hex[:10]}"
    PermRAG.open(tmp_path / "main", database_url=pg_url, milvus_uri=milvus_server, encoder=ENC, catalog_only=True).close()  # the catalog only
    start = time.time() + 12
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen([sys.executable, "-c", FIRST_USE, str(tmp_path / p), pg_url, milvus_server, collection, str(start), p], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in ("p", "q", "r")
    ]
    outs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
        assert out.strip() == "Grouping(groups=4)", out
    rag = PermRAG.open(tmp_path / "main", database_url=pg_url, milvus_uri=milvus_server, encoder=ENC, collection=collection, consistency="Strong")
    try:
        live = rag.catalog.live_ids()
        assert len(live) == 60 and milvus_ids(rag) == set(live)
        no = rag.catalog.tenants.number("default")
        empty = rag.backend.client().query(rag.backend.name(no), filter="row_id >= 0", output_fields=["row_id"], partition_names=["_default"], consistency_level="Strong")
        assert empty == []  # every row in a class-group partition
    finally:
        rag.close()
