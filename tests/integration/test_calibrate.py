"""The planner's cost model is measured on the store's own backend, kept in
the store, reused by later opens, measured again when the store doubles,
and never changes what a search returns."""

from __future__ import annotations

import numpy as np
import pytest

from permrag import PermRAG
from permrag.embed import HashEncoder
from permrag.errors import ConfigError
from permrag.search import LITE, SERVER
from permrag.search import calibrate as cal

from ..conftest import open_backend
from ..helpers.reference import assert_top_k

DEPTS = [f"d{i}" for i in range(20)]


def docs(start: int, n: int) -> list[dict]:
    return [{"external_id": f"x{i}", "text": f"note {i} on {DEPTS[i % 20]} matters", "attrs": {"dept": DEPTS[(i * 7) % 20]}} for i in range(start, start + n)]


@pytest.fixture
def small_probe(monkeypatch):
    monkeypatch.setattr(cal, "PROBE_ROWS", 600)  # measure stores from 600 rows, so the test stays small


@pytest.mark.parametrize("backend", ["lite", "server"])
def test_the_model_is_measured_kept_and_reused(backend, tmp_path, request, small_probe) -> None:
    rag = open_backend(backend, tmp_path / "h", request, encoder=HashEncoder(32))
    defaults = SERVER if backend == "server" else LITE
    try:
        assert rag.calibration.model() == defaults and rag.calibration.measured_rows == 0
        rag.add_documents(docs(0, 400))
        assert rag.calibration.measured_rows == 0  # below the threshold: the defaults serve
        rag.add_documents(docs(400, 400))
        measured = rag.calibration.model()
        assert rag.calibration.measured_rows == 800 and measured != defaults
        assert "measured at 800 rows" in measured.name
        rates = [measured.scope_ms_per_1k, measured.filter_ms_per_1k, measured.id_ms, measured.range_term_ms]
        assert all(np.isfinite(r) and r >= 0 for r in rates)  # (a fast machine may measure 0 over the base at 800 rows)
        assert rag._planner().model == measured
        rag.add_documents(docs(800, 300))  # 1,100 < 2 × 800: not measured again
        assert rag.calibration.measured_rows == 800
        rag.add_documents(docs(1100, 500))
        assert rag.calibration.measured_rows == 1600
        kept = rag.calibration.model()
        uri = rag.settings.milvus_uri
        collection = rag.backend.collection
    finally:
        rag.close()
    again = PermRAG.open(tmp_path / "h", encoder=HashEncoder(32), milvus_uri=uri, collection=collection)
    try:
        assert again._planner().model == kept  # read from the store, no probe at open
    finally:
        again.close()


def test_searches_stay_exact_under_the_measured_model(tmp_path, small_probe) -> None:
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(32))
    try:
        batch = docs(0, 1500)
        rag.add_documents(batch)
        assert rag.calibration.measured_rows == 1500
        vecs = dict(zip((d["external_id"] for d in batch), rag.encoder.encode([d["text"] for d in batch])))
        for n in (1, 3, 10, 19, 20):
            role = f"r{n}"
            rag.policy.add_role(role)
            for d in DEPTS[:n]:
                rag.policy.grant(role, f"dept:{d}")
            rag.policy.assign(f"u{n}", role)
        rng = np.random.default_rng(5)
        for n in (1, 3, 10, 19, 20):
            recs = rag.rows(rag.visible(f"u{n}"))
            for _ in range(3):
                q = rng.standard_normal(32).astype(np.float32)
                q /= np.linalg.norm(q)
                ref = {r.row_id: float(vecs[r.external_id] @ q) for r in recs}
                hits = rag.search_many(["q"], user=f"u{n}", k=10, mode="dense", vectors=q[None, :])[0]
                assert_top_k([h.row_id for h in hits], ref, 10)
        assert rag.stats["dropped_hits"] == 0
    finally:
        rag.close()


def test_a_stored_model_that_cannot_be_read_gives_the_defaults(tmp_path) -> None:
    good = cal.dump(LITE, "lite", 1000)
    assert cal.load(good, "lite") == (LITE, 1000)
    assert cal.load(good, "server") is None  # measured on another kind of backend
    assert cal.load("{not json", "lite") is None
    assert cal.load(good.replace('"id_ms": 0.1', '"id_ms": -1'), "lite") is None
    assert cal.load(good.replace('"format": 1', '"format": 99'), "lite") is None
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(32))
    try:
        from permrag.storage import db

        with db.transaction(rag._engine, "test") as conn:
            db.set_setting(conn, cal.SETTING, "garbage")
        rag.calibration = cal.Calibration(rag._engine, "lite", LITE)
        assert rag._planner().model == LITE
        with pytest.raises(ConfigError, match="holds no rows"):
            rag.calibrate("nobody")
    finally:
        rag.close()


@pytest.mark.server
def test_listed_ids_have_a_price_on_the_server(tmp_path, request) -> None:
    """A 2.3 server skips segments whose ID bounds exclude every listed ID, so
    the old probe — absent IDs, measured against a filter every row passes —
    read exactly 0 ms per ID, and the planner then sent 20,000 listed IDs at
    200k rows (3.3–4.4× an unfiltered search). Probed over the tenant's own
    rows, as the slope between a short and a long list, an ID has a price,
    and no measured rate falls below the default's (noise reads 0 as often as not)."""
    rag = open_backend("server", tmp_path / "h", request, encoder=HashEncoder(32))
    try:
        rag.add_documents(docs(0, cal.PROBE_ROWS), batch_size=5000)
        model = rag.calibration.model()
        assert rag.calibration.measured_rows == cal.PROBE_ROWS
        assert model.id_ms >= SERVER.id_ms > 0, model
        for rate in ("scope_ms_per_1k", "filter_ms_per_1k", "field_ms_per_1k_rows", "range_term_ms"):
            assert getattr(model, rate) >= getattr(SERVER, rate), rate
        assert rag._planner().model == model
    finally:
        rag.close()
