"""permrag: row-level permissioned retrieval over roaring bitmaps and Milvus.

The library's classes load on first use (PEP 562): ``import permrag`` and
``permrag --help`` do not pay for SQLAlchemy, numpy, pymilvus and casbin,
whose imports would be most of a short command's run time.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import (
    AccessDeniedError,
    AmbiguousNameError,
    ArgumentError,
    BackendError,
    CatalogError,
    ConcurrentChangeError,
    ConfigError,
    DuplicateExternalIdError,
    EncoderMismatchError,
    IdentityFileError,
    MassDeleteError,
    MassRemovalError,
    NoStoreError,
    NotReadableError,
    PermragError,
    PolicyCSVError,
    PolicyError,
    RepointError,
    ResourceConflictError,
    RoleCycleError,
    SelectorError,
    SourceClashError,
    StaleReadError,
    StoreLockedError,
    StoreMismatchError,
    SyncError,
    UnknownPrincipalError,
    UnknownRoleError,
    UnknownRowError,
    UnknownSubjectError,
    UnknownTenantError,
    UnsupportedError,
    VersionMismatchError,
)

if TYPE_CHECKING:
    from .access import Explanation
    from .catalog import DocumentRecord, RowRecord
    from .core import PermRAG
    from .domain.repair import RepairReport
    from .domain.results import Hit, Hits
    from .options import Options
    from .placement.repartition import RegroupReport, RepartitionReport
    from .policy import Selector, parse_selector

_LAZY = {
    "Explanation": ".access",
    "DocumentRecord": ".catalog",
    "RowRecord": ".catalog",
    "PermRAG": ".core",
    "RegroupReport": ".placement.repartition",
    "RepartitionReport": ".placement.repartition",
    "Options": ".options",
    "Selector": ".policy",
    "parse_selector": ".policy",
    "RepairReport": ".domain.repair",
    "Hit": ".domain.results",
    "Hits": ".domain.results",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'permrag' has no attribute {name!r}")


try:
    __version__ = version("permrag")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "AccessDeniedError",
    "AmbiguousNameError",
    "ArgumentError",
    "BackendError",
    "CatalogError",
    "ConcurrentChangeError",
    "ConfigError",
    "DocumentRecord",
    "DuplicateExternalIdError",
    "EncoderMismatchError",
    "Explanation",
    "Hit",
    "Hits",
    "IdentityFileError",
    "MassDeleteError",
    "MassRemovalError",
    "NoStoreError",
    "NotReadableError",
    "Options",
    "PermRAG",
    "PermragError",
    "PolicyCSVError",
    "PolicyError",
    "RegroupReport",
    "RepartitionReport",
    "RepairReport",
    "RepointError",
    "ResourceConflictError",
    "RoleCycleError",
    "RowRecord",
    "Selector",
    "SelectorError",
    "SourceClashError",
    "StaleReadError",
    "StoreLockedError",
    "StoreMismatchError",
    "SyncError",
    "UnknownPrincipalError",
    "UnknownRoleError",
    "UnknownRowError",
    "UnknownSubjectError",
    "UnknownTenantError",
    "UnsupportedError",
    "VersionMismatchError",
    "parse_selector",
]
