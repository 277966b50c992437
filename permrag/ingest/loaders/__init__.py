"""Reading documents for ingest: JSONL files, and folders of files in any
format a loader is registered for (see :mod:`.registry` to add one and
:mod:`.formats` for the built-in ones)."""

from . import formats  # noqa: F401  (registers the built-in loaders)
from .folder import LoadReport, load_folder, load_path
from .jsonl import load_jsonl
from .registry import (
    Loader,
    Parsed,
    Section,
    loader_for,
    register_loader,
    suffixes,
    unregister_loader,
)

__all__ = [
    "LoadReport",
    "Loader",
    "Parsed",
    "Section",
    "load_folder",
    "load_jsonl",
    "load_path",
    "loader_for",
    "register_loader",
    "suffixes",
    "unregister_loader",
]
