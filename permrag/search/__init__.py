"""Permissioned search: planner → execute (over-fetch, verify) → fusion, the
:class:`Searcher` engine, multi-stage retrieval and recommendations."""

from .fusion import DEFAULT_FUSION, DEFAULT_WEIGHTS
from .planner import LITE, SERVER, AllowAll, CostModel, DenyAll, Filter, Plan, Planner
from .searcher import FUSIONS, MAX_QUERY_CHARS, MODES, Searcher, check_k, check_search_args

__all__ = [
    "DEFAULT_FUSION",
    "DEFAULT_WEIGHTS",
    "FUSIONS",
    "LITE",
    "MAX_QUERY_CHARS",
    "MODES",
    "SERVER",
    "AllowAll",
    "CostModel",
    "DenyAll",
    "Filter",
    "Plan",
    "Planner",
    "Searcher",
    "check_k",
    "check_search_args",
]
