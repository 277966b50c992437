"""permrag: row-level permissioned retrieval over roaring bitmaps and Milvus."""

from .catalog import RowRecord
from .core import PermRAG, RepairReport
from .errors import (
    AccessDeniedError,
    BackendError,
    CatalogError,
    ConfigError,
    DuplicateExternalIdError,
    PermragError,
    PlanError,
    PolicyCSVError,
    PolicyError,
    RoleCycleError,
    SelectorError,
    UnknownRoleError,
    UnknownRowError,
    UnknownSubjectError,
    UnknownTenantError,
    UnsupportedError,
)
from .explain import Explanation
from .retrieval import Hit, Hits
from .selectors import Selector, parse_selector

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "BackendError",
    "CatalogError",
    "ConfigError",
    "DuplicateExternalIdError",
    "Explanation",
    "Hit",
    "Hits",
    "PermRAG",
    "PermragError",
    "PlanError",
    "PolicyCSVError",
    "PolicyError",
    "RepairReport",
    "RoleCycleError",
    "RowRecord",
    "Selector",
    "SelectorError",
    "UnknownRoleError",
    "UnknownRowError",
    "UnknownSubjectError",
    "UnknownTenantError",
    "UnsupportedError",
    "parse_selector",
]
