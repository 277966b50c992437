"""Folder ACL changes: add entries, remove entries, or replace the whole ACL.

An administrator's change to a folder's ACL adds what it names and keeps the
rest: replacing the whole ACL — which drops every entry not named, and has
locked teams out — needs ``replace=True`` (``--replace``). Every principal
added must name a user, group or role the tenant knows (policy/principals.py)
and every expiry must be in the future; nothing is stored otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..domain.acl import AclEntry
from ..errors import ArgumentError, UnknownSubjectError
from .model import Folder, TenantPolicy
from .principals import require, resolve
from .records import Change, FolderEntry


@dataclass(frozen=True)
class FolderEdit:
    """What one call asks of a folder's own ACL."""

    allow: tuple[AclEntry, ...] = ()
    deny: tuple[AclEntry, ...] = ()
    remove: tuple[str, ...] = ()
    inherit: bool | None = None  # None: as it is (True when replacing)
    replace: bool = False
    allow_unknown: bool = False

    def check(self) -> None:
        if not (self.allow or self.deny or self.remove or self.replace or self.inherit is not None):
            raise ArgumentError("a folder ACL change names no entry to add or remove (allow, deny, remove), no inherit and no replace")
        if self.replace and self.remove:
            raise ArgumentError("replace sets the whole ACL: give the entries to keep, not entries to remove")

    def result(self, tp: TenantPolicy, tenant: str, path: str) -> Folder:
        """The folder's ACL after the edit (validated against ``tp``)."""
        where = f"ACL of folder {path}"
        allow = {require(tp, e.principal, tenant, where, allow_unknown=self.allow_unknown): e.expires_at for e in self.allow}
        deny = {require(tp, e.principal, tenant, where, allow_unknown=self.allow_unknown): e.expires_at for e in self.deny}
        if self.replace:
            return Folder(allow, deny, True if self.inherit is None else self.inherit)
        old = tp.folders.get(path, Folder())
        new = Folder({**old.allow, **allow}, {**old.deny, **deny}, old.inherit if self.inherit is None else self.inherit)
        for p in self.remove:
            key = resolve(tp, p)
            if key not in new.allow and key not in new.deny:
                raise UnknownSubjectError(f"folder {path!r} has no entry for {key!r} in tenant {tenant!r}")
            new.allow.pop(key, None)
            new.deny.pop(key, None)
        return new


def folder_change(tp: TenantPolicy, tenant: str, path: str, edit: FolderEdit) -> Change | None:
    """The change that makes ``path``'s own ACL what ``edit`` asks (None: it is already)."""
    new = edit.result(tp, tenant, path)
    old = tp.folders.get(path, Folder())
    if (old.allow, old.deny, old.inherit) == (new.allow, new.deny, new.inherit):
        return None
    ops: list[FolderEntry] = []
    for eft, was, now in (("allow", old.allow, new.allow), ("deny", old.deny, new.deny)):
        ops += [FolderEntry(False, tenant, path, p, eft) for p in sorted(was) if p not in now or now[p] != was[p]]
        ops += [FolderEntry(True, tenant, path, p, eft, t) for p, t in sorted(now.items()) if p not in was or was[p] != t]
    if old.inherit != new.inherit:
        ops.append(FolderEntry(new.inherit is False, tenant, path, None))
    return Change.of("folder", {tenant}, ops, None, None)
