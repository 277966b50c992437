"""A store's search costs, measured on its own backend instead of assumed.

The planner prices each filter form with a :class:`~.planner.CostModel`. Its
defaults come from one benchmark machine at a fixed size, and the rates that
grow with the collection are far from them on a larger store or another
backend. A *probe* measures those rates on this store's own backend and
machine, on the tenant collection it is given:

* an unfiltered search → ``scope_ms_per_1k`` (every row in scope is passed);
* a filter that every row passes (``row_id >= 0``) → ``filter_ms_per_1k``
  (Milvus Lite evaluates any filter row by row over the whole scope; a
  filter that matches nothing can be cheaper, as segments whose ID bounds
  exclude it are skipped);
* ``vclass in [...]`` of four absent classes → ``field_ms_per_1k_rows``;
* listed IDs of the tenant's own rows, a short and a long list → ``id_ms``,
  the slope between them;
* ID ranges over its rows, 8 and 32 of them → ``range_term_ms``, the slope.

IDs and ranges are probed over rows that exist, and priced as a slope: a
list of absent IDs costs the backend almost nothing (segments whose ID
bounds exclude them are skipped), so a probe of absent IDs would price
listed IDs near zero and the planner would send long ID lists that cost
more than the unfiltered search.

Each probe is the median of a few searches after a warm-up; a measured rate
below the default's keeps the default (measurements only raise rates). The result is
kept in the store's settings (``cost_model``) with the row count it was
measured at, loaded by every later open (no probe at open: it would slow the
first search), and measured again after an ingest once the largest tenant
has doubled since (``PermRAG.calibrate()`` measures on demand). Stores below
``PROBE_ROWS`` rows keep the defaults: there every plan costs a few ms.
Calibration changes only which exact form is chosen, never what a search
may return: every plan is still verified against the caller's bitmap.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from .planner import CostModel

PROBE_ROWS = 20_000
SETTING = "cost_model"
FORMAT = 1
_IDS = (100, 200)  # short and long ID lists on Milvus Lite (an ID there costs ms at 1M rows)
_SERVER_IDS = (100, 2_000)
_RANGES = (8, 32)


def _spread(row_ids: np.ndarray, n: int) -> list[int]:
    """``n`` of the tenant's row IDs, spread over it."""
    step = max(1, len(row_ids) // max(1, n))
    return [int(x) for x in row_ids[::step][:n]]


def probe(backend: Any, tenant_no: int, rows: int, dim: int, defaults: CostModel, *, repeat: int = 3, row_ids: Any = None) -> CostModel:
    """Measure ``defaults``' per-row and per-term rates on the tenant's collection
    (``row_ids``: its rows, ascending; without them, IDs beyond every row's)."""
    repeat = repeat if rows < 200_000 else 2  # a 1M-row Lite search takes seconds
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, dim)).astype(np.float32)
    q /= np.linalg.norm(q)

    def ms(expr: str) -> float:
        times = []
        for i in range(repeat + 1):  # the first one warms caches up
            t0 = time.perf_counter()
            backend.search(tenant_no, "dense", vectors=q, texts=[""], expr=expr, limit=10)
            if i:
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    per_1k = max(rows, 1) / 1000
    plain = ms("")
    every = ms("row_id >= 0")
    classes = ms("vclass in [-1, -2, -3, -4]")
    have = np.asarray(row_ids if row_ids is not None else [], dtype=np.int64)
    if have.size == 0:
        have = np.arange(2**31, 2**31 + 8 * _SERVER_IDS[1], dtype=np.int64)  # none exist: parse cost only
    lists = [_spread(have, n) for n in (_SERVER_IDS if getattr(backend, "kind", "") == "server" else _IDS)]
    t_ids = [ms(f"row_id in [{', '.join(map(str, ids))}]") for ids in lists]
    runs = [_spread(have, n) for n in _RANGES]
    t_ranges = [ms(" or ".join(f"(row_id >= {a} and row_id <= {a + 1})" for a in starts)) for starts in runs]
    filtered = max(every, plain)
    measured = {
        "scope_ms_per_1k": (plain - defaults.base_ms) / per_1k,
        "filter_ms_per_1k": (every - plain) / per_1k,
        "field_ms_per_1k_rows": (classes - filtered) / per_1k,
        "id_ms": (t_ids[1] - t_ids[0]) / max(1, len(lists[1]) - len(lists[0])),
        "range_term_ms": (t_ranges[1] - t_ranges[0]) / max(1, len(runs[1]) - len(runs[0])),
    }
    # A rate never falls below the default's: a difference of a few ms between
    # two searches on a busy machine, right after an ingest, is noise as often
    # as not; the probe is there to find what grows with the store.
    return replace(
        defaults,
        name=f"{defaults.name}, measured at {rows:,} rows",
        **{k: max(v, getattr(defaults, k)) for k, v in measured.items()},
    )


def dump(model: CostModel, kind: str, rows: int) -> str:
    return json.dumps({"format": FORMAT, "backend": kind, "rows": rows, "model": asdict(model)}, sort_keys=True)


def load(text: str | None, kind: str) -> tuple[CostModel, int] | None:
    """The stored model and the rows it was measured at; None when there is
    none for this kind of backend, or it cannot be read (the defaults serve)."""
    if not text:
        return None
    try:
        data = json.loads(text)
        if data.get("format") != FORMAT or data.get("backend") != kind:
            return None
        model = CostModel(**data["model"])
        rows = int(data["rows"])
    except (ValueError, TypeError, KeyError):
        return None
    numbers = [v for v in asdict(model).values() if isinstance(v, (int, float))]
    if not all(math.isfinite(v) and v >= 0 for v in numbers):
        return None
    return model, rows


class Calibration:
    """A store's cost model: the stored measurement for its kind of backend,
    else ``defaults``; measured again as the store grows (see the module)."""

    def __init__(self, engine: Any, kind: str, defaults: CostModel) -> None:
        self._engine = engine
        self.kind = kind
        self.defaults = defaults
        self._stored: tuple[CostModel, int] | None = None
        self._read = False

    def _load(self) -> tuple[CostModel, int] | None:
        if not self._read:
            from ..storage import db

            with db.reading(self._engine, "reading the cost model") as conn:
                self._stored = load(db.get_setting(conn, SETTING), self.kind)
            self._read = True
        return self._stored

    def model(self) -> CostModel:
        stored = self._load()
        return stored[0] if stored else self.defaults

    @property
    def measured_rows(self) -> int:
        """The rows of the collection the stored model was measured on (0: none)."""
        stored = self._load()
        return stored[1] if stored else 0

    def due(self, rows: int) -> bool:
        """Whether a tenant of ``rows`` rows should be measured: large enough,
        and at least twice what the stored model was measured on."""
        return rows >= PROBE_ROWS and rows >= 2 * self.measured_rows

    def run(self, backend: Any, tenant_no: int, rows: int, dim: int, row_ids: Any = None) -> CostModel:
        """Probe the tenant's collection (``row_ids``: its rows) and store the result."""
        from ..storage import db

        model = probe(backend, tenant_no, rows, dim, self.defaults, row_ids=row_ids)
        with db.transaction(self._engine, "storing the cost model") as conn:
            db.set_setting(conn, SETTING, dump(model, self.kind, rows))
        self._stored, self._read = (model, rows), True
        return model
