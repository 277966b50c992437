"""Every error permrag raises on purpose, in one place.

Messages are one line and say what was wrong and with which value, so the CLI
can print them as they are. One class per kind of failure:

* :class:`ArgumentError` — a call's own arguments are wrong (a bad ``k``, an
  empty query, a vector of the wrong shape); nothing was done;
* :class:`ConfigError` — the home folder, a URL, an option or the store's
  binding (its Milvus collection, its encoder) is unusable;
* :class:`PolicyError` and its subclasses — a policy change is invalid;
* :class:`CatalogError` and its subclasses — a document or row is invalid;
* :class:`BackendError` — the database or Milvus failed; no result is returned.

An error may carry advice: ``hint`` in Python terms (part of ``str(error)``)
and ``cli_hint``, the same advice in CLI syntax, which the ``permrag``
command prints instead.
"""

from __future__ import annotations


class PermragError(Exception):
    """Root of all permrag errors."""

    def __init__(self, message: str = "", *, hint: str | None = None, cli_hint: str | None = None) -> None:
        super().__init__(f"{message}; {hint}" if hint else message)
        self.message = message
        self.hint = hint
        self.cli_hint = cli_hint

    def for_cli(self) -> str:
        """The message with the advice in CLI syntax."""
        advice = self.cli_hint or self.hint
        return f"{self.message}; {advice}" if advice else self.message


class ArgumentError(PermragError, ValueError):
    """An argument of a call is invalid (and nothing was done)."""


class ConfigError(PermragError):
    """The home folder, a URL, an option or the store's binding is unusable."""


class StoreMismatchError(ConfigError):
    """The Milvus collection belongs to another permrag store (another catalog)."""


class NoStoreError(StoreMismatchError):
    """The database holds no permrag store, and this open may not create one
    (only ``permrag init`` or ``PermRAG.open(..., create=True)`` does)."""


class RepointError(ConfigError):
    """``permrag init`` would point a home that holds a store at another
    database, Milvus or collection (allowed only with ``--force``)."""


class EncoderMismatchError(ConfigError):
    """The encoder differs from the one the store's vectors were made with."""


class PolicyError(PermragError):
    """A policy change is invalid (and nothing was changed)."""


class UnknownRoleError(PolicyError):
    """A grant, deny, revoke or assign names a role that does not exist."""


class UnknownSubjectError(PolicyError):
    """An unassign or lookup names a subject with no such assignment."""


class UnknownPrincipalError(PolicyError):
    """An administrator named a user, group or role the tenant does not know
    (in a folder ACL, a group membership or a group's role); the message names
    the closest known one. ``allow_unknown=True`` names it anyway."""


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


class IdentityFileError(PolicyError):
    """An identity export (SCIM JSON, LDIF, CSV) is malformed; the message names
    the line or JSON path, and nothing of it was applied."""

    def __init__(self, path: str, where: str, problem: str) -> None:
        super().__init__(f"{path}, {where}: {problem}")
        self.path = path
        self.where = where
        self.problem = problem


class MassRemovalError(PolicyError):
    """An identity sync would remove more than half of a tenant's memberships,
    all of them, or every member of a group that holds a deny; refused (nothing
    applied) unless the caller allows a mass removal."""


class ResourceConflictError(PolicyError):
    """A provisioning write gives a user a ``userName`` another user holds
    (SCIM answers 409 Conflict); nothing was changed."""


class VersionMismatchError(PolicyError):
    """A conditional provisioning write names a version of the resource that is
    not the stored one (SCIM ``If-Match``, answered 412); nothing was changed."""


class AmbiguousNameError(PolicyError):
    """A name given to an admin call is the label of several users or groups;
    the message lists their ids."""


class AccessDeniedError(PermragError):
    """The caller may not read a row the operation needs (and nothing was done)."""


class CatalogError(PermragError):
    """A document or row is invalid (and nothing was ingested)."""


class DuplicateExternalIdError(CatalogError):
    """An external id already exists in the tenant (or twice in one batch)."""


class ConcurrentChangeError(CatalogError):
    """A document changed between the read and the write of an operation
    that rewrites it (a metadata update, a regroup): nothing was written."""


class UnknownRowError(CatalogError):
    """An external id or row id that is not in the catalog."""


class NotReadableError(UnknownRowError, AccessDeniedError):
    """A row the caller names is hidden from them *or* does not exist.

    Both cases raise this one error with the same message, so that an answer
    never tells a caller whether a row they may not read exists.
    """


class UnknownTenantError(CatalogError):
    """A tenant with neither rows nor policy (a misspelt tenant, most often)."""


class SyncError(CatalogError):
    """A folder sync was refused before it changed anything."""


class MassDeleteError(SyncError):
    """A folder sync would delete more than half of its source's documents, or
    all of them (an emptied or unmounted share, most often); it runs only with
    ``allow_mass_delete=True`` / ``--allow-mass-delete``."""


class SourceClashError(SyncError):
    """A sync source name already belongs to another folder of the tenant, or
    the folder is already synced under another source name."""


class BackendError(PermragError):
    """The search backend or the database failed; no result is returned."""


class UnsupportedError(BackendError):
    """The backend does not support the requested mode."""


class StoreLockedError(BackendError):
    """Another process holds the store's Milvus Lite folder (Lite serves one process at a time)."""


class StaleReadError(BackendError):
    """A read given ``at_least=<token>`` could not reach the token's policy and
    catalog versions within its wait: nothing was answered from an older state."""


__all__ = [
    "AccessDeniedError",
    "AmbiguousNameError",
    "ArgumentError",
    "BackendError",
    "CatalogError",
    "IdentityFileError",
    "MassDeleteError",
    "MassRemovalError",
    "ConfigError",
    "DuplicateExternalIdError",
    "EncoderMismatchError",
    "NoStoreError",
    "NotReadableError",
    "PermragError",
    "PolicyCSVError",
    "PolicyError",
    "RepointError",
    "RoleCycleError",
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
    "ResourceConflictError",
    "VersionMismatchError",
]
