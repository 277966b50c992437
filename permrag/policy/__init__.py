"""Roles, rules, inheritance and user assignments (casbin semantics), versioned."""

from ..domain.selectors import Selector, parse_selector
from .model import MAX_DEPTH, USER_PREFIX, TenantPolicy
from .versioned import ACTION, DEFAULT_TENANT, MODEL_PATH, Policy

__all__ = ["ACTION", "DEFAULT_TENANT", "MAX_DEPTH", "MODEL_PATH", "USER_PREFIX", "Policy", "Selector", "TenantPolicy", "parse_selector"]
