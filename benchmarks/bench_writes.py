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
"""

from __future__ import annotations

import argparse
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

from permrag import db  # noqa: E402
from permrag.catalog import Catalog, RowSpec  # noqa: E402
from permrag.dbinit import init_schema  # noqa: E402

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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--postgres", default=None, help="admin URL of a PostgreSQL server (a fresh database per size)")
    args = ap.parse_args(argv)
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
