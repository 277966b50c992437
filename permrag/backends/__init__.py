"""Search backends behind one small protocol (base.py); Milvus is the one built in."""

from ..placement.layout import Grouping
from .base import MAX_LIMIT, MAX_TEXT_BYTES, Capabilities, RawHit, SearchBackend, detect
from .binding import Binding
from .milvus import MilvusBackend
from .schema import analyzer_params

__all__ = ["MAX_LIMIT", "MAX_TEXT_BYTES", "Binding", "Capabilities", "Grouping", "MilvusBackend", "RawHit", "SearchBackend", "analyzer_params", "detect"]
