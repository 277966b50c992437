"""What one catalog write costs as the store grows.

A folder sync writes a batch of chunks at a time; each write (prepare, then
publish) read-modify-writes the persisted bitmaps its rows touch. Some
attributes have a value per file (``source``, ``title``): a write that read
every bitmap of the attributes it touches (what publish did before) grew
with the number of files stored. This stores N files (three chunks each, the
attributes a folder sync gives them) in a catalog of its own, then times
writes of 50 more files, and beside them the read the old publish made:
every bitmap of the touched attributes.

    python benchmarks/bench_writes.py                  # SQLite: 300, 3,000 and 30,000 files
    python benchmarks/bench_writes.py --quick          # 300 and 3,000
    python benchmarks/bench_writes.py --postgres postgresql://postgres@127.0.0.1:5432/test

``--bulk`` measures a bulk ingest instead: the same documents (a team
attribute of 100 rows each, one in ten with an ACL) added 20,000 at a time to
a catalog-only store (no vector store: the catalog is what is measured) on
SQLite and on a fresh PostgreSQL database, each call timed, at 30,000 and
200,000 rows (``--rows`` to choose), with the PostgreSQL/SQLite ratio and the
first against the last call:

    python benchmarks/bench_writes.py --bulk --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import fresh_postgres, machine, save  # noqa: E402
from sqlalchemy import select  # noqa: E402

from permrag import PermRAG
from permrag.catalog import Catalog, RowSpec  # noqa: E402
from permrag.storage import db  # noqa: E402
from permrag.storage.create import init_schema  # noqa: E402

DEPTS = ("eng", "hr", "finance", "legal", "sales", "ops")
WRITE_FILES = 50
WRITES = 10


def specs(first: int, n: int) -> list[RowSpec]:
    out = []
    for i in range(first, first + n):
        dept = DEPTS[i % len(DEPTS)]
        doc = f"{dept}/doc{i:06d}.md"
        base = {"folder": dept, "source": doc, "title": f"Document {i}"}
        out += [RowSpec(f"{doc}#{c}", "default", {**base, "heading": f"Part {c}"}, doc, (), doc) for c in range(3)]
    return out


def old_read(catalog: Catalog) -> None:
    """Every bitmap of the attributes a write touches, as publish read them before."""
    a = db.attr_index.c
    attrs = ["", "@class", "folder", "heading", "source", "title"]
    with db.reading(catalog.engine, "bench") as conn:
        conn.execute(select(a.attr, a.value, a.bitmap).where(a.tenant == "default", a.attr.in_(attrs))).all()


def one_size(url: str, files: int) -> dict:
    engine = db.make_engine(url)
    init_schema(engine)
    catalog = Catalog(engine)
    catalog.load()
    for lo in range(0, files, 1000):
        catalog.add(specs(lo, min(1000, files - lo)))
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")  # as autovacuum would have by now
    writes, reads = [], []
    nxt = files
    for _ in range(WRITES):
        batch = specs(nxt, WRITE_FILES)
        nxt += WRITE_FILES
        t = time.perf_counter()
        catalog.add(batch)
        writes.append(time.perf_counter() - t)
        t = time.perf_counter()
        old_read(catalog)
        reads.append(time.perf_counter() - t)
    db.dispose(engine)
    return {"files": files, "write_ms": statistics.median(writes) * 1e3, "old_read_ms": statistics.median(reads) * 1e3}


BULK_CALL = 20_000  # documents per add_documents call in --bulk


def bulk_docs(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    teams = [f"team{i % max(1, n // 100)}" for i in range(n)]
    rng.shuffle(teams)
    docs: list[dict] = [{"external_id": f"d{i}", "tenant": "acme", "attrs": {"team": t}} for i, t in enumerate(teams)]
    for i in rng.sample(range(n), n // 10):
        docs[i]["acl"] = {"allow": [f"user:u{i % 50}"]}
    return docs


def bulk_ingest(url: str, docs: list[dict]) -> dict[str, dict]:
    """``docs`` added BULK_CALL at a time to two fresh catalog-only stores, one
    on SQLite and one on PostgreSQL (``url``), call by call in turn (which goes
    first alternates), so that the shared machine's load weighs on both alike."""
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as home:
        stores = {"sqlite": PermRAG.open(Path(home) / "s", catalog_only=True, create=True), "postgres": PermRAG.open(Path(home) / "p", database_url=url, catalog_only=True, create=True)}
        calls: dict[str, list[float]] = {k: [] for k in stores}
        ids: dict[str, list[int]] = {k: [] for k in stores}
        for n, lo in enumerate(range(0, len(docs), BULK_CALL)):
            for k in ("sqlite", "postgres") if n % 2 == 0 else ("postgres", "sqlite"):
                t = time.perf_counter()
                ids[k] += stores[k].add_documents(docs[lo : lo + BULK_CALL])
                calls[k].append(time.perf_counter() - t)
        assert ids["sqlite"] == ids["postgres"], "the two catalogs gave different row IDs"
        for k, rag in stores.items():
            assert len(rag.catalog.live_ids()) == len(docs)
            out[k] = {"total_s": sum(calls[k]), "calls_s": calls[k], "first_s": calls[k][0], "last_s": calls[k][-1], "analyzes": getattr(getattr(rag.catalog, "stats", None), "runs", 0)}
            rag.close()
    return out


def bulk(args) -> None:
    if not args.postgres:
        raise SystemExit("--bulk compares SQLite with PostgreSQL: give --postgres")
    rows = []
    for n in args.rows or ((30_000,) if args.quick else (30_000, 200_000)):
        runs = []
        for _ in range(1 if args.quick else args.repeat):  # a fresh pair of stores each time
            with fresh_postgres(args.postgres) as url:
                both = bulk_ingest(url, bulk_docs(n))
            sqlite, pg = both["sqlite"], both["postgres"]
            paired = statistics.median(p / q for p, q in zip(pg["calls_s"], sqlite["calls_s"]))
            runs.append({"rows": n, "sqlite": sqlite, "postgres": pg, "ratio": pg["total_s"] / sqlite["total_s"], "ratio_paired": paired})
            print(f"{n:,} rows: SQLite {sqlite['total_s']:.1f} s, PostgreSQL {pg['total_s']:.1f} s", file=sys.stderr)
        mid = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]  # the run of the median ratio
        rows.append({**mid, "runs": [r["ratio"] for r in runs]})
    lines = [
        f"Bulk ingest into a catalog-only store ({machine()}): documents with a team attribute (100 rows a team) and one in ten "
        f"with an ACL, added {BULK_CALL:,} per call (batches of 4,096), each call timed; the same documents on SQLite and on a fresh "
        "PostgreSQL database, call by call in turn (both gave the same row IDs). Paired: the median of each call's ratio. "
        f"Each size runs {1 if args.quick else args.repeat} times on fresh stores; the row is the run of the median ratio, and *runs* lists every run's ratio.",
        "",
        "| rows | SQLite | PostgreSQL | **PostgreSQL ÷ SQLite** | paired | runs | SQLite first / last call | PostgreSQL first / last call | ANALYZEs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, p = r["sqlite"], r["postgres"]
        lines.append(
            f"| {r['rows']:,} | {s['total_s']:.1f} s | {p['total_s']:.1f} s | **{r['ratio']:.2f}×** | {r['ratio_paired']:.2f}× | "
            f"{', '.join(f'{x:.2f}' for x in r['runs'])} | {s['first_s']:.2f} / {s['last_s']:.2f} s | {p['first_s']:.2f} / {p['last_s']:.2f} s | {p['analyzes']} |"
        )
    last = rows[-1]
    lines += [
        "",
        f"Every call at {last['rows']:,} rows, PostgreSQL: "
        + ", ".join(f"{x:.1f}" for x in last["postgres"]["calls_s"])
        + " s; SQLite: "
        + ", ".join(f"{x:.1f}" for x in last["sqlite"]["calls_s"])
        + " s.",
    ]
    text = "\n".join(lines)
    print(text)
    save(args.out or "writes_bulk", args.quick, {"machine": machine(), "rows": rows}, text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--postgres", default=None, help="admin URL of a PostgreSQL server (a fresh database per size)")
    ap.add_argument("--bulk", action="store_true", help="a bulk ingest on SQLite and on PostgreSQL instead")
    ap.add_argument("--rows", type=int, nargs="*", help="--bulk: store sizes (default 30,000 and 200,000)")
    ap.add_argument("--out", default=None, help="--bulk: results name (default writes_bulk)")
    ap.add_argument("--repeat", type=int, default=3, help="--bulk: runs per size (the median ratio is reported)")
    args = ap.parse_args(argv)
    if args.bulk:
        bulk(args)
        return
    sizes = (300, 3_000) if args.quick else (300, 3_000, 30_000)
    rows = []
    for files in sizes:
        with fresh_postgres(args.postgres) if args.postgres else nullcontext(None) as pg:
            url = pg or f"sqlite:///{tempfile.mkdtemp()}/catalog.db"
            rows.append(one_size(url, files))
        print(f"{files} files…", file=sys.stderr)
    base = rows[0]["write_ms"]
    backend = "PostgreSQL" if args.postgres else "SQLite"
    lines = [
        f"Catalog writes ({machine()}, {backend}): a write of {WRITE_FILES} files ({3 * WRITE_FILES} chunks), median of {WRITES}, "
        "by the files already stored; beside it the read publish made before (every bitmap of the touched attributes).",
        "",
        "| files stored | write | ÷ the smallest store | the old read alone |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['files']:,} | {r['write_ms']:.1f} ms | {r['write_ms'] / base:.2f}× | {r['old_read_ms']:.1f} ms |")
    text = "\n".join(lines)
    print(text)
    save("writes" + ("_pg" if args.postgres else ""), args.quick, {"machine": machine(), "backend": backend, "rows": rows}, text)


if __name__ == "__main__":
    main()
