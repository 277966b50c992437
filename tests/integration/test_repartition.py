"""``rag.repartition()`` (placement/repartition.py): rows placed before the policy
existed — or before it changed — move to their co-visibility group, and no
answer changes on the way: searches equal brute force before and after, on
Milvus Lite and on a real server, with another process writing the same
documents meanwhile (PostgreSQL); a document another writer changed is never
overwritten with what the regroup read."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from permrag import ConcurrentChangeError, PermRAG
from permrag.catalog import RowSpec
from permrag.cli import main
from permrag.embed import HashEncoder
from permrag.errors import ConfigError
from permrag.ingest.update import republish
from permrag.placement.repartition import repartition
from permrag.search import LITE, SERVER, Filter, Planner

from ..conftest import milvus_ids, open_backend
from ..integration.test_covis import (
    GROUPS,
    ROLES,
    assert_covisible,
    make_policy,
    stored_groups,
    tokens,
    with_acls,
)
from ..integration.test_layout import QUERIES, assert_top_k, docs_for, placement, reference

ROOT = Path(__file__).resolve().parents[2]
USERS = [f"u-{r}" for r in ROLES] + ["u-glob", "u-all", "acl-1", "acl-4", "nobody"]


def assert_exact(rag: PermRAG, vecs, users=USERS, ks=(1, 10, 200)) -> None:
    for user in users:
        visible = set(rag.visible(user))
        for q in QUERIES:
            ref = reference(rag, vecs, user, q)  # one brute force per user and query, held to every k
            for k in ks:
                hits = rag.search(q, user=user, k=k, mode="dense")
                assert {h.row_id for h in hits} <= visible
                assert_top_k([h.row_id for h in hits], ref, k)


@pytest.fixture(scope="module", params=[("lite", "visibility+acl"), ("server", "visibility+acl"), ("lite", "visibility")], ids=["lite-acl", "server-acl", "lite"])
def late(request, tmp_path_factory):
    """A store whose rows arrived before any role: every class has the empty
    signature (and, with ACLs in the key, its ACL's), so few groups hold all."""
    kind, group_by = request.param
    planner = Planner(dataclasses.replace(SERVER if kind == "server" else LITE, partition_ms=0.0))  # as in test_covis.py
    rag = open_backend(kind, tmp_path_factory.mktemp(f"regroup-{kind}"), request, encoder=HashEncoder(48), partitions=GROUPS, partition_by=group_by, local_rows=0, repartition_every=0, planner=planner)
    docs = docs_for(1500)
    rag.add_documents(docs, batch_size=400)
    vecs = dict(zip((d["external_id"] for d in docs), rag.encoder.encode([d["text"] for d in docs])))
    yield rag, vecs, {d["external_id"]: d["text"] for d in docs}
    rag.close()


def test_a_policy_made_after_the_rows_is_placed_by_a_regroup(late) -> None:
    rag, vecs, texts = late
    before = stored_groups(rag)
    assert () in before and not any(t[0] in "+-" for sig in before for t in sig)  # no role rule in any signature yet
    make_policy(rag)
    assert_exact(rag, vecs, ks=(10,))  # exact before the regroup: groups partly visible, residual filters
    ids = set(rag.catalog.live_ids())
    dry = rag.repartition(dry_run=True)
    assert dry.dry_run and dry.misplaced_rows > 500 and dry.moved_rows == 0 and dry.groups == GROUPS
    assert set(rag.catalog.live_ids()) == ids and stored_groups(rag) == before  # a dry run writes nothing

    report = rag.repartition()
    assert report.moved_rows == report.misplaced_rows == dry.misplaced_rows and report.moved_documents == report.moved_rows
    assert report.changed_documents == report.kept_documents == 0
    table = assert_covisible(rag, GROUPS)  # every row, physically too, in its signature's group under the policy of now
    assert len(table) == len(set(table.values())) == report.signatures  # fewer signatures than groups: one group each
    live = rag.rows(rag.catalog.live_ids())
    assert {r.external_id for r in live} == set(texts) and milvus_ids(rag) == {r.row_id for r in live}  # old rows gone from Milvus
    for user in ("u-big", "u-fin", "u-glob") + (("acl-1",) if with_acls(rag) else ()):
        token = f"@allow:user:{user}" if user.startswith("acl-") else f"+{user[2:]}"
        plan = rag.plan(user)
        assert isinstance(plan, Filter) and set(plan.groups) == {g for s, g in table.items() if token in s} and plan.expr == "", plan.describe()
    hits = rag.search(QUERIES[0], user="u-all", k=50, mode="dense")
    assert all(h.text == texts[h.external_id] for h in hits)  # stored texts moved with the rows
    assert_exact(rag, vecs)
    again = rag.repartition()  # a settled store: the same map, nothing to move
    assert again.misplaced_rows == again.moved_rows == 0 and stored_groups(rag) == table


def test_a_policy_change_then_a_regroup(late) -> None:
    rag, vecs, _ = late
    if not rag.policy.has_role("eng"):  # (run alone)
        make_policy(rag)
    rag.policy.grant("eng", "dept:d20")  # d20 was +big only: its classes get a new signature
    rag.policy.add_role("late")
    rag.policy.grant("late", "lvl:3")  # a rule on every third of every department
    rag.policy.assign("u-late", "late")
    assert_exact(rag, vecs, users=["u-eng", "u-big", "u-late"], ks=(10,))
    report = rag.repartition()
    assert report.moved_rows > 0
    assert_covisible(rag, GROUPS)
    assert_exact(rag, vecs, users=USERS + ["u-late"], ks=(1, 50))
    assert rag.repartition().moved_rows == 0


def test_regroup_moves_the_sources_of_derived_rows_and_keeps_their_lineage(tmp_path) -> None:
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(48), partitions=8, partition_by="visibility", local_rows=0, chunk_size=200, chunk_overlap=0)
    try:
        rag.add_documents([{"external_id": f"{d}{i}", "text": f"{d} note {i}", "attrs": {"dept": d}} for d, n in (("a", 3), ("b", 15)) for i in range(n)])
        long_text = " ".join(f"chapter{i} words" for i in range(120))
        rag.add_documents([{"external_id": "book", "text": long_text, "attrs": {"dept": "a"}}])  # chunks: moved as one document
        rag.add_documents([{"external_id": "sum", "text": "a summary", "derived_from": ["a0", "a1"]}])
        for role, dept in (("ra", "a"), ("rb", "b")):
            rag.policy.add_role(role)
            rag.policy.grant(role, f"dept:{dept}")
            rag.policy.assign(f"u-{role}", role)
        before = {e: rag.row(e).vclass for e in ("a0", "a1", "a2", "b0")}
        chunks = [(c.external_id, c.row_id) for c in rag.row("book").chunks]
        assert len(chunks) > 3
        report = rag.repartition()  # +rb (15 rows) keeps the group all rows share; +ra's 13 move
        assert report.misplaced_rows == 3 + len(chunks) and report.kept_documents == 0 and report.moved_documents == 4  # lineage by name: a0, a1 move too
        assert rag.can_read("u-ra", "sum") and not rag.can_read("u-rb", "sum")  # "sum" follows its sources' new row IDs
        assert {h.external_id for h in rag.search("summary note", user="u-ra", k=10, mode="dense")} >= {"a0", "a1", "a2", "sum"}
        table = stored_groups(rag)
        assert rag.row("b0").vclass == before["b0"] and rag.row("a0").vclass % 8 == rag.row("a2").vclass % 8 == table[("+ra",)] != table[("+rb",)]
        book = rag.row("book").chunks
        assert [c.external_id for c in book] == [e for e, _ in chunks] and not {c.row_id for c in book} & {r for _, r in chunks}
        assert all(c.vclass % 8 == table[("+ra",)] and c.parent == "book" for c in book)
        assert rag.search("chapter7 words", user="u-ra", k=1, mode="dense")[0].external_id.startswith("book")
        assert milvus_ids(rag) == set(rag.catalog.live_ids())
    finally:
        rag.close()


@pytest.mark.parametrize("vectors", [True, False], ids=["lite", "catalog-only"])
def test_a_rewrite_never_overwrites_a_change_made_after_its_read(tmp_path, vectors) -> None:
    """What a regroup (or a metadata update) read is published only if it is
    still what the catalog holds; a re-ingest or an update in between wins
    (with vectors the stale rows are gone from Milvus before the write; in a
    catalog-only store the publishing transaction finds the change)."""
    opts = dict(encoder=HashEncoder(48), partitions=4, partition_by="visibility", local_rows=0) if vectors else dict(catalog_only=True)
    rag = PermRAG.open(tmp_path / "h", **opts)
    try:
        rag.add_documents([{"external_id": "x", "text": "first text", "attrs": {"dept": "a"}}, {"external_id": "y", "text": "other", "attrs": {"dept": "a"}}])
        read = rag.catalog.rows.document("x", "default")
        rag.add_documents([{"external_id": "x", "text": "second text", "attrs": {"dept": "b"}}], replace=True)  # another writer, meanwhile
        specs = [RowSpec(r.external_id, "default", r.attrs, r.parent, (), acl=r.acl) for r in read]
        with pytest.raises(ConcurrentChangeError):
            republish(rag.ingester, "default", read, specs)
        assert rag.row("x").attrs == {"dept": "b"} and rag.row("y").attrs == {"dept": "a"}
        read_y = rag.catalog.rows.document("y", "default")
        rag.delete(["y"])  # deleted meanwhile: a stale rewrite must not bring it back
        with pytest.raises(ConcurrentChangeError):
            republish(rag.ingester, "default", read_y, [RowSpec("y", "default", r.attrs, None, (), acl=r.acl) for r in read_y])
        assert "y" not in {r.external_id for r in rag.rows(rag.catalog.live_ids())}
        if not vectors:
            return
        assert milvus_ids(rag) == set(rag.catalog.live_ids())  # nothing of the stale write left
        rag.policy.add_role("r")
        rag.policy.grant("r", "dept:*")
        rag.policy.assign("u", "r")
        assert [h.text for h in rag.search("second text", user="u", k=1, mode="dense")] == ["second text"]
    finally:
        rag.close()


def test_a_metadata_update_keeps_the_rows_whose_parent_the_document_is(tmp_path) -> None:
    rag = PermRAG.open(tmp_path / "h", catalog_only=True)
    try:
        rag.add_documents([{"external_id": "p", "attrs": {"v": "1"}}, {"external_id": "c", "parent": "p", "attrs": {"v": "9"}}])
        rag.update_metadata("p", attrs={"v": "2"})
        assert rag.row("p").attrs == {"v": "2"} and rag.row("c").attrs == {"v": "9"} and rag.row("c").parent == "p"
    finally:
        rag.close()


def test_regroup_needs_co_visibility_placement(tmp_path) -> None:
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(48), partitions=4, local_rows=0)  # groups by first appearance
    try:
        rag.add_documents([{"external_id": "x", "text": "x"}])
        with pytest.raises(ConfigError, match="partition_by='visibility'"):
            rag.repartition()
    finally:
        rag.close()
    flat = PermRAG.open(tmp_path / "f", encoder=HashEncoder(48), partitions=4, partition_by="visibility")
    try:
        assert flat.repartition("nobody-here").groups == 0  # a tenant without a collection: nothing to do
    finally:
        flat.close()


def test_the_cli_regroups(tmp_path) -> None:
    home = tmp_path / "h"
    rag = PermRAG.open(home, encoder=HashEncoder(48), partitions=8, partition_by="visibility", local_rows=0)
    rag.add_documents([{"external_id": f"d{i}", "text": f"note {i}", "attrs": {"dept": f"d{i % 4}"}} for i in range(40)])
    for i in range(4):
        rag.policy.add_role(f"r{i}")
        rag.policy.grant(f"r{i}", f"dept:d{i}")
    rag.close()
    runner = CliRunner()
    res = runner.invoke(main, ["--home", str(home), "repartition", "--dry-run"])  # the layout the store recorded
    assert res.exit_code == 0 and "30 rows outside their partition" in res.output and "dry run" in res.output, res.output
    res = runner.invoke(main, ["--home", str(home), "regroup", "--dry-run"])  # the old name, for one release
    assert res.exit_code == 0 and "deprecated" in res.stderr and "30 rows outside their partition" in res.stdout, res.output
    res = runner.invoke(main, ["--home", str(home), "repartition", "--json"])
    assert res.exit_code == 0 and '"moved_rows": 30' in res.output, res.output
    PermRAG.open(tmp_path / "plain", encoder=HashEncoder(48), partitions=4).close()  # groups by first appearance
    res = runner.invoke(main, ["--home", str(tmp_path / "plain"), "repartition"])
    assert res.exit_code == 1 and res.output.startswith("error:") and "partition_by='visibility'" in res.output and "Traceback" not in res.output, res.output
    rag = PermRAG.open(home, encoder=HashEncoder(48), partitions=8, partition_by="visibility", local_rows=0)
    try:
        table = stored_groups(rag)
        assert all(r.vclass % 8 == table[tokens(rag, dict(r.attrs))] for r in rag.rows(rag.catalog.live_ids()))
    finally:
        rag.close()


WRITER = """
import sys
from permrag import PermRAG
from permrag.embed import HashEncoder
home, db_url, uri, collection = sys.argv[1:5]
rag = PermRAG.open(home, database_url=db_url, milvus_uri=uri, encoder=HashEncoder(48), collection=collection,
                   consistency="Strong", partitions=8, partition_by="visibility", local_rows=0)
for i in range(0, 60, 3):  # documents the regroup is moving, changed under it
    rag.update_metadata(f"r{i}", attrs={"dept": "d1", "lvl": "9"})
    rag.add_documents([{"external_id": f"new{i}", "text": f"budget new {i}", "attrs": {"dept": f"d{i % 40}", "lvl": "1"}}])
    rag.search("budget", user="u-eng", k=5, mode="dense")
rag.close()
print("done")
"""


def test_a_regroup_beside_another_writing_process(tmp_path, pg_url, milvus_server) -> None:
    """PostgreSQL + server: one process regroups (small batches, a long window)
    while another updates documents the regroup is moving and adds new ones.
    No update is lost, nothing is doubled or left behind in Milvus, every
    search equals brute force, and a second regroup settles the rest."""
    collection = f"rg_{abs(hash(str(tmp_path))) % 10**8}"
    opts = dict(database_url=pg_url, milvus_uri=milvus_server, encoder=HashEncoder(48), collection=collection, consistency="Strong", partitions=8, partition_by="visibility", local_rows=0)
    rag = PermRAG.open(tmp_path / "main", **opts)
    try:
        docs = docs_for(600)
        rag.add_documents(docs, batch_size=200)
        make_policy(rag)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "w"), pg_url, milvus_server, collection], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = repartition(rag.ingester, rag.catalog.allocator.placement, "default", batch_rows=10, before=rag.refresh)
        out, err = writer.communicate(timeout=600)
        assert writer.returncode == 0 and out.strip() == "done", out + err[-2000:]
        assert first.moved_rows > 0
        rag.refresh()
        live = rag.rows(rag.catalog.live_ids())
        names = [r.external_id for r in live]
        assert len(names) == len(set(names)) and set(names) == {d["external_id"] for d in docs} | {f"new{i}" for i in range(0, 60, 3)}
        for i in range(0, 60, 3):
            assert rag.row(f"r{i}").attrs == {"dept": "d1", "lvl": "9"}  # the other process's updates all stand
        assert milvus_ids(rag) == {r.row_id for r in live}
        where = placement(rag)
        assert all(where[r.row_id] == f"g{r.vclass % 8}" for r in live)
        vecs = {d["external_id"]: v for d, v in zip(docs, rag.encoder.encode([d["text"] for d in docs]))}
        vecs |= dict(zip((f"new{i}" for i in range(0, 60, 3)), rag.encoder.encode([f"budget new {i}" for i in range(0, 60, 3)])))
        assert_exact(rag, vecs, users=["u-eng", "u-big", "u-fin", "u-all", "acl-1"], ks=(10, 100))
        rag.repartition()
        assert rag.repartition().moved_rows == 0
        table = stored_groups(rag)
        for r in rag.rows(rag.catalog.live_ids()):
            assert r.vclass % 8 == table[tokens(rag, dict(r.attrs))], r.external_id
    finally:
        rag.close()


def test_the_layout_is_recorded_for_processes_opened_without_it(tmp_path) -> None:
    """A process (the CLI, a worker) that opens the store with neither
    ``groups`` nor ``group_by`` groups and places as the store was set up;
    explicit options win for their process and are recorded."""
    home = tmp_path / "h"
    rag = PermRAG.open(home, encoder=HashEncoder(48), partitions=8, partition_by="visibility", local_rows=0)
    for i in range(3):
        rag.policy.add_role(f"r{i}")
        rag.policy.grant(f"r{i}", f"dept:d{i}")
    rag.close()
    rag = PermRAG.open(home, encoder=HashEncoder(48), local_rows=0)  # the defaults
    try:
        assert rag.catalog.allocator.placement.groups == 8 and not rag.catalog.allocator.placement.acls
        rag.add_documents([{"external_id": f"x{i}", "text": f"note {i}", "attrs": {"dept": f"d{i % 3}"}} for i in range(9)])
        rag.add_documents([{"external_id": "t", "text": "other tenant"}], tenant="other")
        assert rag.backend.grouping(rag.catalog.tenants.number("other")).groups == 8  # a new tenant's collection is grouped too
        table = stored_groups(rag)
        assert len(table) == 3 and all(r.vclass % 8 == table[tokens(rag, dict(r.attrs))] for r in rag.rows(rag.catalog.live_ids()) if r.tenant == "default")
    finally:
        rag.close()
    runner = CliRunner()
    res = runner.invoke(main, ["--home", str(home), "repartition", "--dry-run"])  # no flags: the recorded layout
    assert res.exit_code == 0 and "0 rows outside their partition" in res.output and "over 8 partitions" in res.output, res.output
    rag = PermRAG.open(home, encoder=HashEncoder(48), partitions=4)  # explicit: wins, and is recorded
    rag.close()
    rag = PermRAG.open(home, encoder=HashEncoder(48))
    try:
        assert rag.catalog.allocator.placement is None and rag.backend.groups == 4
    finally:
        rag.close()


def test_a_regroup_touches_one_tenant_of_one_store(tmp_path, milvus_server) -> None:
    """Two stores on one Milvus server (each its own catalog, collections and
    recorded layout) and two tenants in the first: a regroup of one tenant
    leaves the other tenant and the other store exactly as they were."""
    tag = f"rt_{abs(hash(str(tmp_path))) % 10**8}"
    opts = dict(milvus_uri=milvus_server, encoder=HashEncoder(48), consistency="Strong", local_rows=0)
    a = PermRAG.open(tmp_path / "a", collection=f"{tag}_a", partitions=8, partition_by="visibility", **opts)
    b = PermRAG.open(tmp_path / "b", collection=f"{tag}_b", partitions=8, partition_by="visibility", **opts)
    try:
        docs = [{"external_id": f"x{i}", "text": f"note {i}", "attrs": {"dept": f"d{i % 3}"}} for i in range(30)]
        for rag in (a, b):
            for tenant in ("default", "other"):
                rag.add_documents(docs, tenant=tenant)
                for i in range(3):
                    rag.policy.add_role(f"r{i}", tenant=tenant)
                    rag.policy.grant(f"r{i}", f"dept:d{i}", tenant=tenant)
        before = {(name, t): (sorted(milvus_ids(rag, t)), placement(rag, t)) for name, rag in (("a", a), ("b", b)) for t in ("default", "other")}
        assert a.repartition("default").moved_rows == 20  # two of the three signatures leave the group all rows share
        assert sorted(milvus_ids(a, "default")) != before[("a", "default")][0]
        for key in (("a", "other"), ("b", "default"), ("b", "other")):
            rag = a if key[0] == "a" else b
            assert (sorted(milvus_ids(rag, key[1])), placement(rag, key[1])) == before[key], key
        assert b.repartition("default", dry_run=True).misplaced_rows == 20 and a.repartition("other", dry_run=True).misplaced_rows == 20
        table = stored_groups(a)
        assert all(r.vclass % 8 == table[tokens(a, dict(r.attrs))] for r in a.rows(a.catalog.live_ids()) if r.tenant == "default")
    finally:
        a.close()
        b.close()


def test_options_are_one_checked_value_and_the_old_partition_names_still_work(tmp_path) -> None:
    """``PermRAG.open`` takes an :class:`Options` or keywords (checked together,
    an unknown name refused with the closest); ``groups=``/``group_by=`` and
    ``rag.regroup()`` are the deprecated names of ``partitions=``/
    ``partition_by=`` and ``rag.repartition()``, and mean the same."""
    import warnings

    from permrag import Options

    enc = HashEncoder(48)
    base = Options(encoder=enc, partitions=4, partition_by="visibility", local_rows=0)
    with pytest.raises(ConfigError, match="did you mean 'partitions'"):
        PermRAG.open(tmp_path / "x", options=base, partitons=4)
    for bad in (dict(chunk_size=0), dict(local_rows=-1), dict(partitions="4"), dict(catalog_only="yes"), dict(stale_ingest_after=-1)):
        with pytest.raises(ConfigError):
            Options.of(bad)
    with pytest.raises(ConfigError, match="not also its old name"):
        Options.of({"groups": 4, "partitions": 4})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = PermRAG.open(tmp_path / "old", encoder=enc, groups=4, group_by="visibility", local_rows=0)
    assert {str(w.message).split(" is deprecated")[0] for w in caught if w.category is DeprecationWarning} == {"the option groups=", "the option group_by="}
    new = PermRAG.open(tmp_path / "new", options=base)
    try:
        assert old.options == new.options == Options.of({"local_rows": 0}, base)
        docs = [{"external_id": f"d{i}", "text": f"note {i}", "attrs": {"dept": f"d{i % 4}"}} for i in range(40)]
        for rag in (old, new):
            rag.add_documents(docs)
            for i in range(4):
                rag.policy.add_role(f"r{i}")
                rag.policy.grant(f"r{i}", f"dept:d{i}")
        with pytest.warns(DeprecationWarning, match="repartition"):
            a = old.regroup(dry_run=True)
        assert a == new.repartition(dry_run=True) and a.misplaced_rows == 30
    finally:
        old.close()
        new.close()
