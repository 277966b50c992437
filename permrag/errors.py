"""Every error permrag raises on purpose, in one place.

Messages are one line and say what was wrong and with which value, so the CLI
can print them as they are.
"""

from __future__ import annotations


class PermragError(Exception):
    """Root of all permrag errors."""


class ConfigError(PermragError):
    """The home folder, a URL or an option is unusable."""


class PolicyError(PermragError):
    """A policy change is invalid (and nothing was changed)."""


class UnknownRoleError(PolicyError):
    """A grant, deny, revoke or assign names a role that does not exist."""


class UnknownSubjectError(PolicyError):
    """An unassign or lookup names a subject with no such assignment."""


class SelectorError(PolicyError):
    """A selector is not `*`, `doc:<external_id>` or `<attr>:<value>`."""


class RoleCycleError(PolicyError):
    """An assignment would make the role hierarchy cyclic (or too deep)."""


class PolicyCSVError(PolicyError):
    """A policy CSV file is malformed; the message names the line."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}, line {line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class AccessDeniedError(PermragError):
    """The caller may not read a row the operation needs (and nothing was done)."""


class CatalogError(PermragError):
    """A document or row is invalid (and nothing was ingested)."""


class DuplicateExternalIdError(CatalogError):
    """An external id already exists in the tenant (or twice in one batch)."""


class UnknownRowError(CatalogError):
    """An external id or row id that is not in the catalog."""


class UnknownTenantError(CatalogError):
    """A tenant with neither rows nor policy (a misspelt tenant, most often)."""


class PlanError(PermragError):
    """A visible bitmap cannot be turned into a filter for this backend."""


class BackendError(PermragError):
    """The search backend failed; no result is returned."""


class UnsupportedError(BackendError):
    """The backend does not support the requested mode."""


__all__ = [
    "AccessDeniedError",
    "BackendError",
    "CatalogError",
    "ConfigError",
    "DuplicateExternalIdError",
    "PermragError",
    "PlanError",
    "PolicyCSVError",
    "PolicyError",
    "RoleCycleError",
    "SelectorError",
    "UnknownRoleError",
    "UnknownRowError",
    "UnknownSubjectError",
    "UnknownTenantError",
    "UnsupportedError",
]
