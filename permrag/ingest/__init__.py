"""Documents in and out: validation, chunking, loaders, the two-phase write,
replace and delete, generated content, and crash repair."""

from .chunking import Chunker
from .generated import add_generated
from .ingest import MAX_DOCUMENT_CHARS, Ingester, as_mapping
from .reconcile import reconcile

__all__ = ["MAX_DOCUMENT_CHARS", "Chunker", "Ingester", "add_generated", "as_mapping", "reconcile"]
