"""Permissioned search: planner → execute (over-fetch, verify) → fusion, the
:class:`Searcher` engine, multi-stage retrieval and recommendations."""

from .engine import FUSIONS, MAX_QUERY_CHARS, MODES, Searcher, check_k, check_search_args
from .planner import LITE, SERVER, AllowAll, CostModel, DenyAll, Filter, Plan, Planner

__all__ = [
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
