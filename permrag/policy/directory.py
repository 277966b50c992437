"""Identity-provider exports → a :class:`Directory` of users and nested groups.

Three formats, each parsed completely before anything is applied, each error
naming where it is (a JSON path or a line number):

* **SCIM 2.0** (Okta, Entra ID, OneLogin …): a ``ListResponse`` (or a bare
  list, or one resource) of ``User`` and ``Group`` resources; a group's
  ``members`` reference users and groups by SCIM ``id`` (``value``) with an
  optional ``type``. Users are named by ``userName``, groups by
  ``displayName`` (ids are only used to resolve references). Users and
  groups may come in separate files of one sync.
* **LDIF** (OpenLDAP, Active Directory exports): ``groupOfNames`` /
  ``groupOfUniqueNames`` / ``group`` entries with ``member`` /
  ``uniqueMember`` DNs, person entries with optional ``memberOf``; a user is
  named by ``uid`` (else ``sAMAccountName``, else ``cn``), a group by ``cn``.
  Folded lines and base64 (``attr::``) values are read.
* **CSV**: ``group,member`` rows (a header row is optional); ``member`` is
  ``user:<id>``, ``group:<id>`` or a bare user id.

A cycle among groups is refused with the cycle spelled out.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IdentityFileError, PermragError, PolicyError
from ..names import check
from .model import GROUP_PREFIX, USER_PREFIX

FORMATS = ("scim", "ldif", "csv")


@dataclass
class Directory:
    """Users and groups as an identity provider exports them."""

    users: set[str] = field(default_factory=set)
    groups: dict[str, set[str]] = field(default_factory=dict)  # group → member keys (user:<id> / group:<id>)

    def edges(self) -> set[tuple[str, str]]:
        """Every (member key, group) membership."""
        return {(m, g) for g, ms in self.groups.items() for m in ms}

    def merge(self, other: "Directory") -> None:
        self.users |= other.users
        for g, ms in other.groups.items():
            self.groups.setdefault(g, set()).update(ms)


def _name(path: str, where: str, what: str, value: Any) -> str:
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


def parse(path: str, text: str, fmt: str | None = None) -> Directory:
    fmt = fmt or detect(path, text)
    if fmt == "scim":
        return parse_scim(path, text)
    if fmt == "ldif":
        return parse_ldif(path, text)
    if fmt == "csv":
        return parse_csv(path, text)
    raise PolicyError(f"unknown identity format {fmt!r} (expected one of {', '.join(FORMATS)})")


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


# ---------------------------------------------------------------------- SCIM
def parse_scim(path: str, text: str) -> Directory:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IdentityFileError(path, f"line {exc.lineno}, column {exc.colno}", f"not valid JSON ({exc.msg})") from None
    if isinstance(doc, dict) and "Resources" in doc:
        resources, base = doc["Resources"], "$.Resources"
    elif isinstance(doc, list):
        resources, base = doc, "$"
    elif isinstance(doc, dict):
        resources, base = [doc], "$"
    else:
        raise IdentityFileError(path, "$", "expected a SCIM ListResponse, a list of resources or one resource")
    if not isinstance(resources, list):
        raise IdentityFileError(path, base, "Resources must be a list")
    users: dict[str, str] = {}  # SCIM id → userName
    groups: dict[str, tuple[str, list[Any], str]] = {}  # SCIM id → (displayName, members, json path)
    for i, res in enumerate(resources):
        where = f"{base}[{i}]"
        if not isinstance(res, dict):
            raise IdentityFileError(path, where, "a resource must be an object")
        kind = _scim_kind(res)
        rid = res.get("id")
        if not isinstance(rid, str) or not rid:
            raise IdentityFileError(path, f"{where}.id", "missing or not a string")
        if kind == "User":
            users[rid] = _name(path, f"{where}.userName", "userName", res.get("userName"))
        elif kind == "Group":
            members = res.get("members", [])
            if not isinstance(members, list):
                raise IdentityFileError(path, f"{where}.members", "must be a list")
            groups[rid] = (_name(path, f"{where}.displayName", "displayName", res.get("displayName")), members, where)
        else:
            raise IdentityFileError(path, f"{where}.schemas", "neither a SCIM User nor a Group resource")
    out = Directory(set(users.values()), {name: set() for name, _, _ in groups.values()})
    for name, members, where in groups.values():
        for j, m in enumerate(members):
            mw = f"{where}.members[{j}]"
            ref = m.get("value") if isinstance(m, dict) else None
            if not isinstance(ref, str) or not ref:
                raise IdentityFileError(path, f"{mw}.value", "missing or not a string")
            kind = m.get("type")
            if ref in users and kind in (None, "User"):
                out.groups[name].add(USER_PREFIX + users[ref])
            elif ref in groups and kind in (None, "Group"):
                out.groups[name].add(GROUP_PREFIX + groups[ref][0])
            else:
                raise IdentityFileError(path, f"{mw}.value", f"references {ref!r}, which is no {kind or 'User or Group'} of this export")
    return out


def _scim_kind(res: dict[str, Any]) -> str | None:
    schemas = res.get("schemas") or []
    text = " ".join(s for s in schemas if isinstance(s, str)) if isinstance(schemas, list) else ""
    if text.endswith(":User") or ":User " in text or "core:2.0:User" in text:
        return "User"
    if "core:2.0:Group" in text or text.endswith(":Group"):
        return "Group"
    if "userName" in res:
        return "User"
    if "displayName" in res and "members" in res:
        return "Group"
    return None


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


def parse_ldif(path: str, text: str) -> Directory:
    entries = _ldif_entries(path, text)
    names: dict[str, tuple[str, str]] = {}  # dn key → (kind, name)
    for line, e in entries:
        classes = {c.lower() for c in e.get("objectclass", [])}
        if classes & GROUP_CLASSES:
            names[_dn_key(e["dn"][0])] = ("group", _name(path, f"line {line}", "group cn", (e.get("cn") or [None])[0]))
        else:
            uid = (e.get("uid") or e.get("samaccountname") or e.get("cn") or [None])[0]
            names[_dn_key(e["dn"][0])] = ("user", _name(path, f"line {line}", "user uid", uid))
    out = Directory()
    for kind, name in names.values():
        if kind == "user":
            out.users.add(name)
        else:
            out.groups.setdefault(name, set())

    def key_of(dn: str, line: int) -> tuple[str, str]:
        hit = names.get(_dn_key(dn))
        if hit is None:
            raise IdentityFileError(path, f"entry at line {line}", f"references {dn!r}, which is not an entry of this export")
        return hit

    for line, e in entries:
        kind, name = names[_dn_key(e["dn"][0])]
        if kind == "group":
            for dn in e.get("member", []) + e.get("uniquemember", []):
                mkind, mname = key_of(dn, line)
                out.groups[name].add((USER_PREFIX if mkind == "user" else GROUP_PREFIX) + mname)
        for dn in e.get("memberof", []):
            gkind, gname = key_of(dn, line)
            if gkind != "group":
                raise IdentityFileError(path, f"entry at line {line}", f"memberOf {dn!r} is not a group")
            out.groups[gname].add((USER_PREFIX if kind == "user" else GROUP_PREFIX) + name)
    return out


# ---------------------------------------------------------------------- CSV
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
            group = _name(path, f"line {no}", "group", fields[0])
            member = fields[1]
            if member.startswith(GROUP_PREFIX):
                out.groups.setdefault(_name(path, f"line {no}", "group", member[len(GROUP_PREFIX) :]), set())
                key = member
            else:
                user = _name(path, f"line {no}", "user", member.removeprefix(USER_PREFIX))
                out.users.add(user)
                key = USER_PREFIX + user
            out.groups.setdefault(group, set()).add(key)
    except csv.Error as exc:
        raise IdentityFileError(path, f"line {rows.line_num}", f"not valid CSV ({exc})") from None
    return out
