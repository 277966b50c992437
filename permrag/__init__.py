"""permrag: row-level permissioned retrieval over roaring bitmaps and Milvus."""

from .catalog import RowRecord
from .core import PermRAG
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
    UnsupportedError,
)
from .explain import Explanation
from .selectors import Selector, parse_selector

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "BackendError",
    "CatalogError",
    "ConfigError",
    "DuplicateExternalIdError",
    "Explanation",
    "PermRAG",
    "PermragError",
    "PlanError",
    "PolicyCSVError",
    "PolicyError",
    "RoleCycleError",
    "RowRecord",
    "Selector",
    "SelectorError",
    "UnknownRoleError",
    "UnknownRowError",
    "UnknownSubjectError",
    "UnsupportedError",
    "parse_selector",
]
