"""Lineage survives source changes: a derived row (``add_generated``) stays
readable while all its source documents exist and the caller may read them —
through metadata and ACL updates, replaces (new row IDs, another number of
chunks) and regroups — and its visibility follows the sources' ACLs at once;
deleting a source hides it. Held to a reference model of who may read each
source, on SQLite and PostgreSQL, and in a second process opened afterwards."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from permrag import PermRAG
from permrag.errors import UnknownRowError

from ..conftest import examples

USERS = ("ann", "bob", "cy", "dee")
PRINCIPALS = {"ann": {"user:ann", "role:reader"}, "bob": {"user:bob", "role:boss"}, "cy": {"user:cy"}, "dee": {"user:dee", "group:team"}}
ACLS = [
    None,
    {"allow": ["user:cy"]},
    {"allow": ["group:team"]},
    {"deny": ["user:bob"]},
    {"allow": ["user:cy", "group:team"], "deny": ["role:reader"]},
]
SOURCES = ("s0", "s1", "s2", "s3")
DERIVED = {"g0": ("s0", "s1"), "g1": ("s2",), "g2": ("s1", "s3"), "g3": ("g0", "s2")}  # g3 is derived from a derived document
_tenants = itertools.count()


@pytest.fixture
def store(tmp_path, db_url):
    rag = PermRAG.open(tmp_path / "h", database_url=db_url, encoder="hash", chunk_size=40, chunk_overlap=0)  # Milvus Lite: documents are chunked
    yield rag
    rag.close()


class Model:
    """Who may read each source, written independently of permrag."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[str, dict | None]] = {}  # source → (level, acl)

    def can(self, user: str, name: str) -> bool:
        if name in DERIVED:
            return all(self.can(user, s) for s in DERIVED[name])
        if name not in self.docs:
            return False
        level, acl = self.docs[name]
        acl = acl or {}
        mine = PRINCIPALS[user]
        if mine & set(acl.get("deny", ())):
            return False
        by_role = user == "bob" or (user == "ann" and level == "public")
        return by_role or bool(mine & set(acl.get("allow", ())))


def source(name: str, level: str, acl: dict | None, words: int, tenant: str) -> dict:
    doc = {"external_id": name, "tenant": tenant, "text": " ".join(f"{name}-word{i}" for i in range(words)), "attrs": {"level": level}}
    if acl is not None:
        doc["acl"] = acl
    return doc


def setup(rag: PermRAG, tenant: str, model: Model) -> None:
    p = rag.policy
    p.add_role("reader", tenant)
    p.grant("reader", "level:public", tenant)
    p.add_role("boss", tenant)
    p.grant("boss", "*", tenant)
    p.assign_user("ann", "reader", tenant)
    p.assign_user("bob", "boss", tenant)
    rag.identity.add_member("team", "user:dee", tenant, allow_unknown=True)  # the group is made here
    rag.add_documents([source(s, "public", None, 3 + 4 * i, tenant) for i, s in enumerate(SOURCES)])
    for s in SOURCES:
        model.docs[s] = ("public", None)
    for g, srcs in DERIVED.items():
        rag.add_generated(f"summary {g}", sources=list(srcs), user="bob", tenant=tenant, external_id=g)


def check(rag: PermRAG, tenant: str, model: Model) -> None:
    for user in USERS:
        vis = rag.visible(user, tenant)
        for s in SOURCES:
            assert (rag.access.readable(user, s, tenant, quiet=True) is not None) == model.can(user, s), (user, s)
        for g, srcs in DERIVED.items():
            (rid,) = [r.row_id for r in [rag.catalog.by_external_id(g, tenant)]]
            reference = all((rag.access.readable(user, s, tenant, quiet=True) is not None) for s in srcs)
            assert (rid in vis) == reference == model.can(user, g), (user, g)
            assert rag.explain(user, g, tenant).visible == reference


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("meta"), st.sampled_from(SOURCES), st.sampled_from(["public", "secret"]), st.integers(0, len(ACLS) - 1)),
        st.tuples(st.just("replace"), st.sampled_from(SOURCES), st.sampled_from(["public", "secret"]), st.integers(0, len(ACLS) - 1), st.integers(1, 30)),
        st.tuples(st.just("delete"), st.sampled_from(SOURCES)),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS)
def test_derived_rows_follow_their_sources(store, ops) -> None:
    tenant = f"t{next(_tenants)}"  # each example in a tenant of its own
    model = Model()
    setup(store, tenant, model)
    check(store, tenant, model)
    for op in ops:
        name = op[1]
        if op[0] == "meta":
            _, _, level, a = op
            if name in model.docs:
                store.update_metadata(name, tenant=tenant, attrs={"level": level}, acl=ACLS[a])
                model.docs[name] = (level, ACLS[a])
            else:
                with pytest.raises(UnknownRowError):
                    store.update_metadata(name, tenant=tenant, attrs={"level": level}, acl=ACLS[a])
        elif op[0] == "replace":
            _, _, level, a, words = op
            store.add_documents([source(name, level, ACLS[a], words, tenant)], replace=True)
            model.docs[name] = (level, ACLS[a])
        else:
            store.delete([name], tenant=tenant)
            model.docs.pop(name, None)
        check(store, tenant, model)
    with PermRAG.open(store.settings.home, database_url=store.settings.database_url, catalog_only=True) as other:  # a fresh process's load
        for user in USERS:
            assert other.visible(user, tenant) == store.visible(user, tenant)


def test_an_acl_update_keeps_the_summary_and_moves_its_readers(store) -> None:
    store.add_documents([{"external_id": "plan", "text": "the plan " * 20, "acl": {"allow": ["user:ann", "user:bob"]}}])
    store.add_documents([{"external_id": "memo", "text": "a memo", "acl": {"allow": ["user:ann", "user:bob"]}}])
    (gid,) = store.add_generated("summary of plan and memo", sources=["plan", "memo"], user="ann")
    assert gid in store.visible("ann") and gid in store.visible("bob")
    version = store.catalog_version
    store.update_metadata("plan", acl={"allow": ["user:ann"]})
    assert store.catalog_version == version + 1  # one publishing transaction
    assert gid in store.visible("ann") and gid not in store.visible("bob")  # follows the new ACL at once
    store.add_documents([{"external_id": "plan", "text": "a shorter plan", "acl": {"allow": ["user:ann", "user:bob"]}}], replace=True)
    assert gid in store.visible("bob")
    e = store.explain("bob", store.rows([gid])[0].external_id)
    assert e.visible and e.decision == "derived" and not e.missing_sources
    store.delete(["plan"])
    assert gid not in store.visible("ann")
    e = store.explain("ann", store.rows([gid])[0].external_id)
    assert not e.visible and e.missing_sources == 1 and "gone (deleted)" in str(e)


def test_a_summary_of_a_chunk_follows_its_document(store) -> None:
    store.add_documents([{"external_id": "long", "text": " ".join(f"w{i}" for i in range(60)), "acl": {"allow": ["user:ann"]}}])
    chunk = store.row("long").chunks[1].external_id
    (gid,) = store.add_generated("about one chunk", sources=[chunk], user="ann")
    assert store.rows([gid])[0].derived_from == ("long",)  # the document, not the chunk
    store.add_documents([{"external_id": "long", "text": "now one chunk", "acl": {"allow": ["user:ann"]}}], replace=True)
    assert gid in store.visible("ann")


def test_a_store_with_row_id_lineage_is_read_by_name_once_opened(tmp_path) -> None:
    """Stores written by older releases keep row IDs in derived_from: a live
    source row is read by its name (a chunk by its document), a gone one stays gone."""
    import sqlalchemy as sa

    from permrag.storage import db

    home = tmp_path / "h"
    with PermRAG.open(home, catalog_only=True) as rag:
        (src,) = rag.add_documents([{"external_id": "src", "acl": {"allow": ["user:ann"]}}])
        (old,) = rag.add_documents([{"external_id": "old", "acl": {"allow": ["user:ann"]}}])
        (gid, gone) = rag.add_documents([{"external_id": "sum", "derived_from": ["src"]}, {"external_id": "sum2", "derived_from": ["src", "old"]}])
        rag.update_metadata("old", acl={"allow": ["user:ann", "user:bo"]})  # "old" gets a new row ID before the upgrade
        with rag.catalog.engine.begin() as conn:  # as an older release wrote them
            conn.execute(sa.update(db.rows).where(db.rows.c.row_id == gid).values(derived_from=[src]))
            conn.execute(sa.update(db.rows).where(db.rows.c.row_id == gone).values(derived_from=[src, old]))
    with PermRAG.open(home, catalog_only=True) as rag:
        assert rag.rows([gid])[0].derived_from == (src,)
        assert gid in rag.visible("ann") and rag.explain("ann", "sum").visible
        assert gone not in rag.visible("ann") and rag.explain("ann", "sum2").missing_sources == 1  # its row ID was gone already
        rag.update_metadata("src", acl={"allow": ["user:bo"]})  # new row IDs: followed by name
        assert gid not in rag.visible("ann") and gid in rag.visible("bo")
