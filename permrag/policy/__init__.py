"""Roles, rules, inheritance and user assignments (casbin semantics), versioned."""

from .model import MAX_DEPTH, USER_PREFIX, TenantPolicy
from .selectors import Selector, parse_selector
from .store import ACTION, DEFAULT_TENANT, MODEL_PATH, Policy

__all__ = ["ACTION", "DEFAULT_TENANT", "MAX_DEPTH", "MODEL_PATH", "USER_PREFIX", "Policy", "Selector", "TenantPolicy", "parse_selector"]
