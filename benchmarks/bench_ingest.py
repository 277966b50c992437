"""Ingest through the folder path: throughput, overhead over a bare insert,
the cost of a re-sync, and what per-chunk metadata does to visibility classes.

A generated folder of real files (Markdown with headings, plain text, HTML,
PDF via fpdf2 and DOCX via python-docx, in department folders; the words
are drawn from a fixed vocabulary) is synced into a fresh store:

* throughput — documents/s and chunks/s of ``rag.sync_folder``, with the
  default model (all-MiniLM-L6-v2) and with the hash encoder;
* overhead — the same files loaded and chunked by the same loaders, the
  same vectors encoded, and inserted with a bare pymilvus ``insert`` into a
  Milvus Lite collection of the same fields (no catalog, no permissions):
  permrag's time over that (both after the same imports: ``warm_imports``;
  bare and sync alternate, each sync into a fresh store, eleven syncs with the
  hash encoder and three with a model, one more bare run than syncs: the
  faster run of each side counts; each run starts from a collected heap), and
  over a dense-only collection (row ID, text, vector: no BM25 to compute);
* re-sync — 1 % of the files changed, then ``sync_folder`` again: its time
  as a share of the full ingest (goal ≤ 5 %);
* visibility classes — how many distinct classes the rows fall into with
  per-chunk ``source``/``title``/``page``/``heading`` attributes, and with
  ``policy_attrs=["folder"]`` (classes keyed on the folder alone), and the
  size of the Milvus filter a one-folder role gets in each case.

    python benchmarks/bench_ingest.py            # 300 files
    python benchmarks/bench_ingest.py --quick    # 60 files
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, save

from permrag import PermRAG
from permrag.embed import resolve_encoder
from permrag.ingest import Chunker
from permrag.ingest.loaders import load_folder

DEPTS = ["hr", "eng", "finance", "legal", "sales", "ops"]
VOCAB = [
    "budget",
    "leave",
    "travel",
    "hotel",
    "pension",
    "laptop",
    "badge",
    "salary",
    "audit",
    "policy",
    "report",
    "review",
    "security",
    "training",
    "contract",
    "invoice",
    "customer",
    "release",
    "deploy",
    "incident",
    "backup",
    "password",
    "vendor",
    "meeting",
    "quarter",
    "forecast",
    "hiring",
    "onboarding",
    "expense",
    "approval",
    "director",
    "manager",
    "team",
    "project",
    "roadmap",
    "design",
    "test",
    "service",
    "network",
    "storage",
    "cloud",
    "privacy",
]
CHUNK = 500
SYNCS = 11  # hash-encoder syncs (a single run of either side varied by ±15 % here, more than the goal's margin), against one more bare run
MODEL_SYNCS = 3  # syncs with a model (about 12 s each here)


def sentence(rng: random.Random) -> str:
    words = [rng.choice(VOCAB) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(2, 6)))


def make_folder(root: Path, n: int, seed: int = 3) -> None:
    import docx
    from fpdf import FPDF

    rng = random.Random(seed)
    for d in DEPTS:
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dept = DEPTS[i % len(DEPTS)]
        kind = ["md", "txt", "html", "md", "txt", "pdf", "docx", "md", "txt", "html"][i % 10]
        name = root / dept / f"doc{i:04d}.{kind}"
        sections = [(f"Part {j}", [paragraph(rng) for _ in range(rng.randint(1, 3))]) for j in range(rng.randint(1, 4))]
        if kind == "md":
            name.write_text(f"# Document {i}\n\n" + "\n\n".join(f"## {h}\n\n" + "\n\n".join(ps) for h, ps in sections))
        elif kind == "txt":
            name.write_text("\n\n".join(p for _, ps in sections for p in ps))
        elif kind == "html":
            body = "".join(f"<h2>{h}</h2>" + "".join(f"<p>{p}</p>" for p in ps) for h, ps in sections)
            name.write_text(f"<html><head><title>Document {i}</title></head><body><nav>Home</nav><article><h1>Document {i}</h1>{body}</article></body></html>")
        elif kind == "pdf":
            pdf = FPDF()
            pdf.set_title(f"Document {i}")
            pdf.set_font("Helvetica", size=11)
            for _, ps in sections:
                pdf.add_page()
                pdf.multi_cell(0, 6, "\n\n".join(ps))
            pdf.output(str(name))
        else:
            d = docx.Document()
            d.add_heading(f"Document {i}", 0)
            for h, ps in sections:
                d.add_heading(h, 1)
                for p in ps:
                    d.add_paragraph(p)
            d.save(str(name))


class GcClock:
    """The collector's time within the timed region of a run. Each run starts
    from a collected heap (``gc.collect()`` before the clock, on both sides):
    a full collection walks every object of the process (~190k after the
    imports here, 80-190 ms) and falls on whichever run crosses its threshold,
    so one side paid for the garbage the other left."""

    def __init__(self) -> None:
        self.on = False
        self.seconds = 0.0
        self._t = 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, _info: dict) -> None:
        if not self.on:
            return
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t

    def start(self) -> None:
        gc.collect()
        self.seconds, self.on = 0.0, True

    def stop(self) -> float:
        self.on = False
        return self.seconds


GC = GcClock()


def bare_insert(tmp: Path, folder: Path, encoder, same_schema: bool = True) -> dict:
    """The same files loaded, chunked and encoded, inserted with pymilvus
    alone. ``same_schema``: into a collection of the fields permrag's has
    (row identity, visibility class, text with its BM25 function, dense),
    the goal's baseline; else row ID, text and dense only."""
    from pymilvus import DataType, MilvusClient

    from permrag.backends.schema import tenant_schema

    client = MilvusClient(str(tmp / "bare.db"))  # Lite's start is not ingest time (permrag's store is open before its sync too)
    GC.start()
    t0 = time.perf_counter()
    report = load_folder(folder)
    chunker = Chunker(CHUNK, 50)
    texts = [c.text for d in report.documents for c in chunker.chunks(d["text"], d["sections"])]
    t1 = time.perf_counter()
    vecs = encoder.encode(texts)
    t2 = time.perf_counter()
    # float32 rows as permrag passes them (pymilvus packs an array's bytes; a list of floats packs slower)
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    if same_schema:
        s, ip = tenant_schema(client, vecs.shape[1], "FLAT", True, None)
        rows = [{"row_id": i, "tenant": "default", "external_id": f"doc/{i}", "vclass": 1, "text": t, "dense": v} for i, (t, v) in enumerate(zip(texts, vecs))]
    else:
        s = client.create_schema(auto_id=False)
        s.add_field("row_id", DataType.INT64, is_primary=True)
        s.add_field("text", DataType.VARCHAR, max_length=65535)
        s.add_field("dense", DataType.FLOAT_VECTOR, dim=vecs.shape[1])
        ip = client.prepare_index_params()
        ip.add_index("dense", index_type="FLAT", metric_type="COSINE")
        rows = [{"row_id": i, "text": t, "dense": v} for i, (t, v) in enumerate(zip(texts, vecs))]
    # as permrag creates its collections: pymilvus' create_collection(index_params=…) would
    # poll Lite's index every 0.5 s (~1 s a collection, not insert time)
    client.create_collection("bare", schema=s)
    client.create_index("bare", ip, sync=False)
    client.load_collection("bare")
    for j in range(0, len(rows), 1000):
        client.insert("bare", rows[j : j + 1000])
    client.flush("bare")
    t3 = time.perf_counter()
    gc_s = GC.stop()
    client.close()
    return {"load_chunk_s": t1 - t0, "encode_s": t2 - t1, "insert_s": t3 - t2, "total_s": t3 - t0, "chunks": len(texts), "gc_s": gc_s}


def warm_imports(folder: Path) -> None:
    """Import what both approaches use (pymilvus, the loaders, the text
    splitter) before either is timed: whichever ran first paid ~1.7 s of
    imports the other did not (a fresh process pays them once, at start)."""
    import pymilvus  # noqa: F401

    make_folder(folder, 10)
    report = load_folder(folder)
    chunker = Chunker(CHUNK, 50)
    assert [c for d in report.documents for c in chunker.chunks(d["text"], d["sections"])]
    try:  # trafilatura reads justext's stop lists once per process, on the first page that needs its fallback (~0.4 s)
        from trafilatura.external import jt_stoplist_init

        jt_stoplist_init()
    except ImportError:
        pass


def classes(rag: PermRAG) -> int:
    return len({r.vclass for r in rag.rows(rag.catalog.live_ids())})


def one_folder_filter(rag: PermRAG) -> dict:
    rag.policy.add_role("eng")
    rag.policy.grant("eng", "folder:eng")
    rag.policy.assign_user("e", "eng")
    plan = rag.plan("e")
    return {"plan": plan.kind, "strategy": getattr(plan, "strategy", ""), "expr_chars": len(getattr(plan, "expr", "") or "")}


def full_sync(home: Path, folder: Path, enc, n: int) -> tuple[PermRAG, float]:
    """A fresh store (Milvus Lite started before the clock, as the bare client is) and its timed first sync of ``folder``."""
    rag = PermRAG.open(home, encoder=enc, chunk_size=CHUNK, chunk_overlap=50)
    assert rag.backend is not None
    # Milvus Lite starts on the store's first Milvus call: started here, before the clock,
    # as the bare side's client is (it was ~0.13-0.16 s of the timed sync; creating the
    # store's collections stays timed, as the bare side's create_collection is)
    rag.backend.client()
    GC.start()
    t0 = time.perf_counter()
    rep = rag.sync_folder(folder)
    took = time.perf_counter() - t0
    GC.stop()
    assert not rep.failed and len(rep.added) == n, rep.describe()
    return rag, took


def run(tmp: Path, folder: Path, n: int, encoder_name: str) -> dict:
    enc = resolve_encoder(None if encoder_name == "default" else encoder_name)
    enc.encode(["warm up"])  # model load is not ingest time
    # bare, permrag, bare, permrag, ..., bare: the faster run of each side counts (one more bare
    # run than syncs: whatever the order or the noise favours, it is not permrag); and each sync
    # against the mean of the bare runs either side of it, the median of those ratios (the machine's
    # drift over the run cancels). SYNCS syncs with the hash encoder, MODEL_SYNCS with a model.
    bares: list[dict] = []
    syncs: list[float] = []
    sync_gc: list[float] = []
    rag = None
    for i in range(SYNCS if encoder_name == "hash" else MODEL_SYNCS):
        (tmp / f"bare-{encoder_name}-{i}").mkdir()
        bares.append(bare_insert(tmp / f"bare-{encoder_name}-{i}", folder, enc))
        store, took = full_sync(tmp / f"h{i}-{encoder_name}", folder, enc, n)
        syncs.append(took)
        sync_gc.append(GC.seconds)
        if rag is None:
            rag = store  # the first store is the one re-synced below
        else:
            store.close()
    (tmp / f"bare-{encoder_name}").mkdir()
    bares.append(bare_insert(tmp / f"bare-{encoder_name}", folder, enc))
    full_s = min(syncs)
    assert rag is not None
    chunks = len(rag.catalog.live_ids())
    out = {
        "encoder": enc.name,
        "files": n,
        "chunks": chunks,
        "full_s": full_s,
        "full_runs_s": syncs,
        "docs_per_s": n / full_s,
        "chunks_per_s": chunks / full_s,
        "classes": classes(rag),
        "one_folder_filter": one_folder_filter(rag),
    }
    # re-sync after 1 % of the files changed (at least one)
    rng = random.Random(11)
    files = sorted(p for p in folder.rglob("*.md")) + sorted(p for p in folder.rglob("*.txt"))
    changed = rng.sample(files, max(1, n // 100))
    for f in changed:
        f.write_text(f.read_text() + "\n\nAn added closing paragraph about the travel budget.\n")
    t0 = time.perf_counter()
    rep = rag.sync_folder(folder)
    out["resync_s"] = time.perf_counter() - t0
    assert sorted(rep.changed) == sorted(f"{rep.source}/{f.relative_to(folder).as_posix()}" for f in changed), rep.describe()
    out["resync_changed"] = len(rep.changed)
    out["resync_share"] = out["resync_s"] / full_s
    t0 = time.perf_counter()
    rep = rag.sync_folder(folder)
    out["noop_sync_s"] = time.perf_counter() - t0
    rag.close()
    for f in changed:  # back to what the other encoder's run sees
        f.write_text(f.read_text().replace("\n\nAn added closing paragraph about the travel budget.\n", ""))
    bare = out["bare"] = min(bares, key=lambda b: b["total_s"])
    out["bare_runs_s"] = [b["total_s"] for b in bares]
    out["gc_s"] = {"permrag": statistics.median(sync_gc), "bare": statistics.median(b["gc_s"] for b in bares)}
    out["overhead"] = full_s / bare["total_s"]
    out["overhead_paired"] = statistics.median(x / ((b["total_s"] + c["total_s"]) / 2) for x, b, c in zip(syncs, bares, bares[1:]))
    (tmp / f"bare-dense-{encoder_name}").mkdir()
    dense_only = out["bare_dense_only"] = bare_insert(tmp / f"bare-dense-{encoder_name}", folder, enc, same_schema=False)
    out["overhead_dense_only"] = full_s / dense_only["total_s"]
    # the same folder with classes keyed on the folder alone
    rag = PermRAG.open(tmp / f"p-{encoder_name}", encoder=enc, chunk_size=CHUNK, chunk_overlap=50, policy_attrs=["folder"])
    assert rag.backend is not None
    t0 = time.perf_counter()
    rag.sync_folder(folder)
    out["policy_attrs_full_s"] = time.perf_counter() - t0
    out["policy_attrs_classes"] = classes(rag)
    out["policy_attrs_filter"] = one_folder_filter(rag)
    rag.close()
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| encoder | files | chunks | full sync | docs/s | chunks/s | bare pymilvus, same schema (load+chunk / encode / insert) | **overhead** | paired | "
        "bare, dense only | overhead over it | re-sync, 1 % changed | share of full | no-op sync |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = r["bare"]
        lines.append(
            f"| {r['encoder']} | {r['files']} | {r['chunks']:,} | {r['full_s']:.2f} s | {r['docs_per_s']:.1f} | {r['chunks_per_s']:.0f} | "
            f"{b['total_s']:.2f} s ({b['load_chunk_s']:.2f} / {b['encode_s']:.2f} / {b['insert_s']:.2f}) | **{r['overhead']:.2f}×** | {r['overhead_paired']:.2f}× | "
            f"{r['bare_dense_only']['total_s']:.2f} s | {r['overhead_dense_only']:.2f}× | "
            f"{r['resync_s']:.2f} s ({r['resync_changed']} files) | {100 * r['resync_share']:.1f} % | {r['noop_sync_s']:.2f} s |"
        )
    lines += [
        "",
        "Same schema: permrag's collection fields (row identity, visibility class, text with its BM25 function, dense), the goal's baseline; "
        f"runs alternate — bare, permrag, bare, …, bare; each sync into a fresh store; {SYNCS} syncs with hash, {MODEL_SYNCS} with a model — and the faster run of each side counts "
        "(overhead; paired: the median of each sync over the mean of the bare runs either side of it) "
        "(every run: "
        + "; ".join(f"{r['encoder']} permrag {' / '.join(f'{x:.2f}' for x in r['full_runs_s'])} s, bare {' / '.join(f'{x:.2f}' for x in r['bare_runs_s'])} s" for r in results)
        + "). Each run starts from a collected heap (both sides); the collector's time within the runs, median: "
        + "; ".join(f"{r['encoder']} permrag {1e3 * r['gc_s']['permrag']:.0f} ms, bare {1e3 * r['gc_s']['bare']:.0f} ms" for r in results)
        + ". Dense only: row ID, text and dense (no BM25 to compute).",
        "",
        "Visibility classes (catalog/allocation.py keys a class on every attribute unless `policy_attrs` is set):",
        "",
        '| encoder | classes, all attributes | filter for a one-folder role | classes, `policy_attrs=["folder"]` | filter | full sync with policy_attrs |',
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        f, g = r["one_folder_filter"], r["policy_attrs_filter"]
        lines.append(
            f"| {r['encoder']} | {r['classes']:,} | {f['plan']} {f['strategy']}, {f['expr_chars']:,} chars | {r['policy_attrs_classes']:,} | "
            f"{g['plan']} {g['strategy']}, {g['expr_chars']:,} chars | {r['policy_attrs_full_s']:.2f} s |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = 60 if args.quick else 300
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        make_folder(folder, n)
        warm_imports(Path(tmp) / "warm")
        for name in ("hash", "default"):
            print(f"{name}…", flush=True)
            results.append(run(Path(tmp), folder, n, name))
        shutil.rmtree(folder)
    text = f"Folder ingest ({machine()}); {n} generated files (Markdown, text, HTML, PDF, DOCX), chunks of {CHUNK} characters.\n\n" + table(results)
    print(text)
    data = {"machine": machine(), "results": results}
    save("ingest", args.quick, data, text)
    return data


if __name__ == "__main__":
    main()
