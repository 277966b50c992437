"""permrag 0.2.0 — that release's own code, taken from this repository's
history — run in a subprocess, and a database's schema as plain data (for
comparing stores made by different code). Shared by tests/system/test_upgrade.py
and tests/system/test_migrations.py."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
RELEASE_0_2_0 = "1fa3a19"


def extract(dest: Path, commit: str = RELEASE_0_2_0) -> Path:
    """The release's ``permrag`` package under ``dest`` (the folder to put on PYTHONPATH)."""
    archive = subprocess.run(["git", "archive", commit, "permrag"], cwd=ROOT, capture_output=True, timeout=60, check=False)
    assert archive.returncode == 0, f"the release's code must be in this repository's history: {archive.stderr.decode()[:300]}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


# After the script: 0.2.0 left its Milvus Lite server to the interpreter's exit,
# where a request still held by one of Lite's worker threads could keep the
# process alive for good (later releases release the server at close). Here
# the server is released as later releases do — given 60 s — and the process
# ends; Lite's write-ahead log keeps what was written either way.
EPILOGUE = """
import os as _os, sys as _sys, threading as _threading
def _release():
    try:
        from milvus_lite.server_manager import server_manager_instance
        server_manager_instance.release_all()
    except Exception:
        pass
_t = _threading.Thread(target=_release, daemon=True)
_t.start()
_t.join(60)
_sys.stdout.flush()
_sys.stderr.flush()
_os._exit(0)
"""


def run(code_dir: Path, script: str, *args: str, cwd: Path | None = None) -> str:
    """Run ``script`` with the old release importable as ``permrag``; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMRAG_")}
    env.update(PYTHONPATH=str(code_dir), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-c", script + EPILOGUE, *args]
    res = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd or code_dir, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def schema(url: str) -> dict:
    """Every permrag table of the database at ``url`` (but the revision's): its columns (name, type,
    nullable), primary key, indexes and unique constraints."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = sa.inspect(conn)
            out = {}
            for table in sorted(t for t in found.get_table_names() if t.startswith("permrag_") and t != "permrag_alembic_version"):
                out[table] = {
                    "columns": sorted((c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)),
                    "pk": found.get_pk_constraint(table)["constrained_columns"],
                    "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in found.get_indexes(table)),
                    "unique": sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(table)),
                }
            return out
    finally:
        engine.dispose()
