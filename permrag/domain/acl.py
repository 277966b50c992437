"""Access control lists: what a folder or a document says about who may read it.

An ACL has allow and deny entries naming principals — ``user:<id>``,
``group:<id>``, ``role:<name>`` (a bare name is a role) — each optionally
until an ``expires_at``; and ``inherit`` (default true): whether the
document (or folder) also takes its folder's (parent folder's) ACL.

A document's ACL is given at ingest as ``acl``::

    {"allow": ["user:bob", "group:eng", "analyst"],
     "deny": [{"principal": "group:contractors", "expires_at": "2027-01-01T00:00:00Z"}],
     "folder": "/eng/specs", "inherit": true}

and compiled into the same bitmaps as role rules: a principal listed on a
document may read it; a deny entry — of the ACL or of a role rule — wins
(access/compiler.py). This module only validates and encodes; it sits
below the policy and the catalog, which both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CatalogError, PermragError
from .names import check, expiry, principal

ALLOW_KEY, DENY_KEY, FOLDER_KEY = "@allow", "@deny", "@folder"
EXPIRING = "~"  # "@allow~" / "@deny~" index values: "<epoch>|<principal>"
ACL_ATTRS = (ALLOW_KEY, DENY_KEY, ALLOW_KEY + EXPIRING, DENY_KEY + EXPIRING, FOLDER_KEY)


@dataclass(frozen=True)
class AclEntry:
    principal: str
    expires_at: float | None = None

    def to_json(self) -> Any:
        return self.principal if self.expires_at is None else {"principal": self.principal, "expires_at": self.expires_at}


@dataclass(frozen=True)
class Acl:
    """Allow and deny entries, the folder, and whether the folder's ACL is inherited."""

    allow: tuple[AclEntry, ...] = ()
    deny: tuple[AclEntry, ...] = ()
    folder: str | None = None
    inherit: bool = True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"allow": [e.to_json() for e in self.allow], "deny": [e.to_json() for e in self.deny], "inherit": self.inherit}
        if self.folder is not None:
            out["folder"] = self.folder
        return out

    def index_keys(self) -> list[tuple[str, str]]:
        """The (attr, value) keys under which the catalog's inverted index files the document."""
        keys: list[tuple[str, str]] = []
        for base, entries in ((ALLOW_KEY, self.allow), (DENY_KEY, self.deny)):
            for e in entries:
                keys.append((base, e.principal) if e.expires_at is None else (base + EXPIRING, f"{e.expires_at!r}|{e.principal}"))
        if self.folder is not None and self.inherit:
            keys.append((FOLDER_KEY, self.folder))
        return keys


def split_expiring(value: str) -> tuple[float, str]:
    """An ``@allow~`` / ``@deny~`` index value → (expiry, principal)."""
    t, _, who = value.partition("|")
    return float(t), who


def acl_entries(value: object, what: str, error: type[PermragError] = CatalogError) -> tuple[AclEntry, ...]:
    """ACL entries: principals, or mappings ``{"principal": …, "expires_at": …}``."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise error(f"{what} must be a list of principals, not {type(value).__name__}")
    out: dict[str, AclEntry] = {}
    for item in value:
        if isinstance(item, Mapping):
            extra = set(item) - {"principal", "expires_at"}
            if extra:
                raise error(f"{what}: unknown key(s) {', '.join(sorted(map(str, extra)))} in an entry")
            who = principal(item.get("principal"), error)
            out[who] = AclEntry(who, expiry(item.get("expires_at"), f"{what}: expires_at of {who!r}", error))
        else:
            who = principal(item, error)
            out[who] = AclEntry(who)
    return tuple(out[k] for k in sorted(out))


def folder_path(value: object, error: type[PermragError] = CatalogError) -> str:
    """A folder path, normalised: ``/``-separated, leading ``/``, no trailing ``/``."""
    text = check("folder", value, max_len=1024, error=error)
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise error(f"folder {text!r} must not contain '.' or '..'")
    return "/" + "/".join(parts)


def parse_acl(value: object, what: str = "acl", error: type[PermragError] = CatalogError) -> Acl | None:
    """A document's ``acl`` (see the module docstring); None when absent."""
    if value is None:
        return None
    if isinstance(value, Acl):
        return value
    if not isinstance(value, Mapping):
        raise error(f"{what} must be a mapping with allow / deny / folder / inherit, not {type(value).__name__}")
    extra = set(value) - {"allow", "deny", "folder", "inherit"}
    if extra:
        raise error(f"{what} has unknown key(s) {', '.join(sorted(map(str, extra)))} (allow, deny, folder, inherit)")
    inherit = value.get("inherit", True)
    if not isinstance(inherit, bool):
        raise error(f"{what}: inherit must be true or false, not {inherit!r}")
    folder = value.get("folder")
    return Acl(
        acl_entries(value.get("allow"), f"{what} allow", error),
        acl_entries(value.get("deny"), f"{what} deny", error),
        folder_path(folder, error) if folder is not None else None,
        inherit,
    )
