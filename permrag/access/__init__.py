"""Who may read what: bitmaps (compiler), explanations, lint, casbin, and the
:class:`Access` view that answers at the stored versions."""

from .compiler import Compiler, Snapshot
from .consistency import ConsistencyFaces
from .explain import Explanation, Rule
from .state import Access, check_agents, check_principal

__all__ = ["Access", "Compiler", "ConsistencyFaces", "Explanation", "Rule", "Snapshot", "check_agents", "check_principal"]
