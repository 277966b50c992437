"""Identity-provider exports → a :class:`Directory` of users and nested groups.

Users and groups are keyed by the provider's immutable id, never by a name an
administrator can edit: a rename keeps every rule, ACL entry, deny and expiry
that names the id. Names are labels, shown in explanations and listings.

* **SCIM 2.0** (Okta, Entra ID, OneLogin …): policy/scim.py.
* **LDIF** (OpenLDAP, Active Directory exports): ``groupOfNames`` /
  ``groupOfUniqueNames`` / ``group`` entries with ``member`` /
  ``uniqueMember`` DNs, person entries with optional ``memberOf``. An entry is
  keyed by its ``entryUUID``, else by its DN (lower-cased, spaces around
  commas dropped); a user is labelled ``uid`` (else ``sAMAccountName``, else
  ``cn``), a group ``cn``. Folded lines and base64 (``attr::``) values are read.
* **CSV**: ``group,member`` rows (a header row is optional); ``member`` is
  ``user:<id>``, ``group:<id>`` or a bare user id. The names are the ids,
  and no id may start like a principal (``Group:ops``, ``usr:dave``,
  ``role:admin``; ``group:eng`` in the group column): an error naming the line.

Each file is parsed completely before anything is applied, each error naming
where it is (a JSON path or a line number). A cycle among groups is refused
with the cycle spelled out.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..domain.names import check, check_id
from ..errors import IdentityFileError, PermragError, PolicyError
from .model import GROUP_PREFIX, USER_PREFIX

FORMATS = ("scim", "ldif", "csv")


@dataclass
class Directory:
    """Users and groups as an identity provider exports them, by id."""

    users: set[str] = field(default_factory=set)
    groups: dict[str, set[str]] = field(default_factory=dict)  # group id → member keys (user:<id> / group:<id>)
    labels: dict[str, str] = field(default_factory=dict)  # user:<id> / group:<id> → userName / displayName
    inactive: set[str] = field(default_factory=set)  # user ids the provider deactivated

    def edges(self) -> set[tuple[str, str]]:
        """Every (member key, group) membership."""
        return {(m, g) for g, ms in self.groups.items() for m in ms}

    def keys(self) -> set[str]:
        """Every user and group of the export, as ``user:<id>`` / ``group:<id>``."""
        return {USER_PREFIX + u for u in self.users} | {GROUP_PREFIX + g for g in self.groups}

    def merge(self, other: Directory) -> None:
        """Add ``other``'s users and groups; a user deactivated in either stays deactivated."""
        self.users |= other.users
        for g, ms in other.groups.items():
            self.groups.setdefault(g, set()).update(ms)
        self.labels.update(other.labels)
        self.inactive |= other.inactive


def name_of(path: str, where: str, what: str, value: Any) -> str:
    try:
        return check(what, value, error=PolicyError)
    except PermragError as exc:
        raise IdentityFileError(path, where, str(exc)) from None


def detect(path: str, text: str) -> str:
    """The format of an export, from its suffix or its first characters."""
    suffix = Path(path).suffix.lower()
    if suffix in (".json", ".scim"):
        return "scim"
    if suffix == ".ldif":
        return "ldif"
    if suffix == ".csv":
        return "csv"
    head = text.lstrip()[:1]
    if head in ("{", "["):
        return "scim"
    if text.lstrip().lower().startswith(("dn:", "version:")):
        return "ldif"
    return "csv"


def check_acyclic(path: str, d: Directory) -> None:
    """Raise naming the cycle if groups contain each other."""
    state: dict[str, int] = {}
    for start in sorted(d.groups):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(m[len(GROUP_PREFIX) :] for m in d.groups.get(start, ()) if m.startswith(GROUP_PREFIX)))]
        trail = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                trail.pop()
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] + [nxt]
                raise IdentityFileError(path, "groups", "group cycle: " + " ⊃ ".join(cycle) + " (a group cannot contain itself)")
            if not state.get(nxt):
                state[nxt] = 1
                trail.append(nxt)
                stack.append((nxt, sorted(m[len(GROUP_PREFIX) :] for m in d.groups.get(nxt, ()) if m.startswith(GROUP_PREFIX))))


ACCOUNTDISABLE = 0x2  # Active Directory userAccountControl's "account disabled" bit
LOCK_ATTRIBUTES = ("pwdAccountLockedTime", "userAccountControl", "nsAccountLock")


def disabled(values: Callable[[str], list[str]]) -> bool:
    """Whether a directory entry is a locked or disabled account, from its
    attribute ``values`` (by lower-case name): OpenLDAP ppolicy's
    ``pwdAccountLockedTime`` present, Active Directory's ``userAccountControl``
    with bit 2 (``ACCOUNTDISABLE``), 389 DS / FreeIPA's ``nsAccountLock: TRUE``.
    An unreadable value counts as locked (fail closed). One rule for a live
    LDAP read and an LDIF export of the same entries."""
    if any(v.strip() for v in values("pwdaccountlockedtime")):
        return True
    for value in values("useraccountcontrol"):
        try:
            if int(value.strip()) & ACCOUNTDISABLE:
                return True
        except ValueError:
            return True
    return any(v.strip().lower() != "false" for v in values("nsaccountlock"))


def check_ids(path: str, d: Directory) -> None:
    """Raise unless every user, group and member id of ``d`` is one an
    administrator could give (:func:`~permrag.domain.names.check_id`): an export,
    LDAP entry or :class:`Directory` never stores ``user:agent:x`` or
    ``user:group:eng``, which reads as another kind of principal and which no
    policy file could name again (an exported policy would not restore).
    Members are ``user:<id>`` / ``group:<id>``."""
    for kind, where, ids in (("user", "users", d.users), ("group", "groups", d.groups), ("user", "deactivated users", d.inactive)):
        for ident in sorted(ids):
            _directory_id(path, where, kind, ident)
    for g, members in sorted(d.groups.items()):
        for m in sorted(members):
            kind, sep, ident = m.partition(":")
            if not sep or kind + ":" not in (USER_PREFIX, GROUP_PREFIX):
                raise IdentityFileError(path, f"group {g!r}", f"member {m!r} is neither user:<id> nor group:<id>; nothing was applied")
            _directory_id(path, f"group {g!r}", kind, ident)


def _directory_id(path: str, where: str, kind: str, ident: object) -> None:
    try:
        check_id(kind, ident, PolicyError)  # the rule every policy file and API holds ids to, so an export restores
    except PermragError as exc:
        raise IdentityFileError(path, where, f"{exc}; nothing was applied") from None


# ---------------------------------------------------------------------- LDIF
GROUP_CLASSES = {"groupofnames", "groupofuniquenames", "group", "posixgroup"}


def _ldif_entries(path: str, text: str) -> list[tuple[int, dict[str, list[str]]]]:
    entries: list[tuple[int, dict[str, list[str]]]] = []
    logical: list[tuple[int, str]] = []
    for no, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if raw.startswith(" ") and logical:
            logical[-1] = (logical[-1][0], logical[-1][1] + raw[1:])
        else:
            logical.append((no, raw))
    current: dict[str, list[str]] = {}
    start = 0
    for no, line in logical + [(len(logical) + 1, "")]:
        if not line.strip():
            if current:
                entries.append((start, current))
                current = {}
            continue
        if line.startswith("#"):
            continue
        if ":" not in line:
            raise IdentityFileError(path, f"line {no}", f"expected 'attribute: value', got {line[:40]!r}")
        attr, _, value = line.partition(":")
        attr = attr.strip().lower()
        if value.startswith(":"):
            try:
                value = base64.b64decode(value[1:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise IdentityFileError(path, f"line {no}", f"{attr}:: is not base64 of UTF-8 text") from None
        else:
            value = value.strip()
        if attr == "version" and not current:
            continue
        if not current:
            if attr != "dn":
                raise IdentityFileError(path, f"line {no}", "an entry must start with 'dn:'")
            start = no
        current.setdefault(attr, []).append(value)
    return entries


def _dn_key(dn: str) -> str:
    return ",".join(part.strip().lower() for part in dn.split(","))


def _ldif_key(path: str, line: int, e: dict[str, list[str]]) -> str:
    """An entry's id: its entryUUID, else its normalised DN."""
    uuid = next(iter(e.get("entryuuid") or []), None)
    if uuid is not None:
        return name_of(path, f"line {line}", "entryUUID", uuid)
    return name_of(path, f"line {line}", "DN", _dn_key(e["dn"][0]))


def parse_ldif(path: str, text: str) -> Directory:
    entries = _ldif_entries(path, text)
    keys: dict[str, str] = {}  # dn key → user:<id> / group:<id>
    uids: dict[str, str | None] = {}  # uid (lower-case) → user:<id>; None: several users have it
    out = Directory()
    for line, e in entries:
        classes = {c.lower() for c in e.get("objectclass", [])}
        ident = _ldif_key(path, line, e)
        if classes & GROUP_CLASSES:
            key = GROUP_PREFIX + ident
            out.groups.setdefault(ident, set())
            out.labels[key] = name_of(path, f"line {line}", "group cn", next(iter(e.get("cn") or []), None))
        else:
            key = USER_PREFIX + ident
            out.users.add(ident)
            if disabled(lambda name: e.get(name, [])):  # noqa: B023 (called here, inside the loop)
                out.inactive.add(ident)
            uid = next(iter(e.get("uid") or e.get("samaccountname") or e.get("cn") or []), None)
            out.labels[key] = name_of(path, f"line {line}", "user uid", uid)
            for u in e.get("uid", []):
                uids[u.lower()] = None if u.lower() in uids else key
        keys[_dn_key(e["dn"][0])] = key

    def key_of(dn: str, line: int) -> str:
        hit = keys.get(_dn_key(dn))
        if hit is None:
            raise IdentityFileError(path, f"entry at line {line}", f"references {dn!r}, which is not an entry of this export")
        return hit

    for line, e in entries:
        key = keys[_dn_key(e["dn"][0])]
        if key.startswith(GROUP_PREFIX):
            for dn in e.get("member", []) + e.get("uniquemember", []):
                out.groups[key[len(GROUP_PREFIX) :]].add(key_of(dn, line))
            for uid in e.get("memberuid", []):  # a posixGroup's members, by uid, as a live LDAP read takes them
                out.groups[key[len(GROUP_PREFIX) :]].add(_by_uid(path, line, uids, uid))
        for dn in e.get("memberof", []):
            group = key_of(dn, line)
            if not group.startswith(GROUP_PREFIX):
                raise IdentityFileError(path, f"entry at line {line}", f"memberOf {dn!r} is not a group")
            out.groups[group[len(GROUP_PREFIX) :]].add(key)
    return out


def _by_uid(path: str, line: int, uids: dict[str, str | None], uid: str) -> str:
    if uid.lower() not in uids:
        raise IdentityFileError(path, f"entry at line {line}", f"memberUid {uid!r} is the uid of no user of this export")
    hit = uids[uid.lower()]
    if hit is None:
        raise IdentityFileError(path, f"entry at line {line}", f"memberUid {uid!r} names several users (they share that uid); give them distinct uids or list members by DN")
    return hit


# ---------------------------------------------------------------------- CSV
def _csv_id(path: str, no: int, kind: str, value: str) -> str:
    """A CSV field that names a user or group by id: never a principal-like
    name (``Group:ops``, ``usr:dave``, ``role:admin``, ``group:eng`` in the
    group column), which would become a user or group that names nobody."""
    try:
        return check_id(kind, value, PolicyError)
    except PermragError as exc:
        raise IdentityFileError(path, f"line {no}", f"{exc}; a member is user:<id>, group:<id> or a bare user id") from None


def parse_csv(path: str, text: str) -> Directory:
    out = Directory()
    rows = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    try:
        for no, row in enumerate(rows, start=1):
            fields = [f.strip() for f in row]
            if not fields or not any(fields) or fields[0].startswith("#"):
                continue
            if no == 1 and [f.lower() for f in fields] == ["group", "member"]:
                continue
            if len(fields) != 2:
                raise IdentityFileError(path, f"line {no}", f"expected group,member; got {len(fields)} fields")
            group = _csv_id(path, no, "group", fields[0])
            member = fields[1]
            if member.startswith(GROUP_PREFIX):
                key = GROUP_PREFIX + _csv_id(path, no, "group", member[len(GROUP_PREFIX) :])
                out.groups.setdefault(key[len(GROUP_PREFIX) :], set())
            else:
                user = _csv_id(path, no, "user", member.removeprefix(USER_PREFIX))
                out.users.add(user)
                key = USER_PREFIX + user
            out.groups.setdefault(group, set()).add(key)
    except csv.Error as exc:
        raise IdentityFileError(path, f"line {rows.line_num}", f"not valid CSV ({exc})") from None
    return out
