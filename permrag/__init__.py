"""permrag: row-level permissioned retrieval over roaring bitmaps and Milvus."""

from importlib.metadata import PackageNotFoundError, version

from .access import Explanation
from .catalog import DocumentRecord, RowRecord
from .core import PermRAG
from .errors import (
    AccessDeniedError,
    ArgumentError,
    BackendError,
    CatalogError,
    ConfigError,
    DuplicateExternalIdError,
    EncoderMismatchError,
    NotReadableError,
    PermragError,
    PolicyCSVError,
    PolicyError,
    RoleCycleError,
    SelectorError,
    StoreMismatchError,
    UnknownRoleError,
    UnknownRowError,
    UnknownSubjectError,
    UnknownTenantError,
    UnsupportedError,
)
from .policy import Selector, parse_selector
from .repair import RepairReport
from .results import Hit, Hits

try:
    __version__ = version("permrag")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "AccessDeniedError",
    "ArgumentError",
    "BackendError",
    "CatalogError",
    "ConfigError",
    "DocumentRecord",
    "DuplicateExternalIdError",
    "EncoderMismatchError",
    "Explanation",
    "Hit",
    "Hits",
    "NotReadableError",
    "PermRAG",
    "PermragError",
    "PolicyCSVError",
    "PolicyError",
    "RepairReport",
    "RoleCycleError",
    "RowRecord",
    "Selector",
    "SelectorError",
    "StoreMismatchError",
    "UnknownRoleError",
    "UnknownRowError",
    "UnknownSubjectError",
    "UnknownTenantError",
    "UnsupportedError",
    "parse_selector",
]
