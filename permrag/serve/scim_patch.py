"""SCIM PATCH (RFC 7644 §3.5.2) applied to a resource's document.

The operations a provider sends are applied in order to the resource as it
is stored, and the result is written as one replace (one policy version);
an operation that cannot apply fails the whole request and nothing changes.
Spellings providers use are read as they mean: Entra ID's capitalised
``"Replace"`` / ``"Add"``, its ``"True"`` / ``"False"`` strings for
``active``, and its ``remove`` of ``members`` with a value list (the members
to remove); Okta's ``members[value eq "id"]`` removal paths and its
path-less ``replace`` with an object. A ``replace`` of ``members``, or a
``remove`` of ``members`` with neither a filter nor a value, changes the
members wholesale (the deny-group guard applies); naming members does not.
Attributes permrag does not store (``name``, ``emails``, extensions) are
accepted and left alone.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .scim_filter import FilterError, attribute_path, matches, parse
from .scim_resources import GROUP, USER, ScimError, body_object, boolean

READ_ONLY = frozenset({"id", "meta", "groups", "schemas"})
STORED = {"User": {"username", "displayname", "externalid", "active"}, "Group": {"displayname", "externalid", "members"}}
CANONICAL = {"username": "userName", "displayname": "displayName", "externalid": "externalId", "active": "active", "members": "members"}
_PATH = re.compile(r"^(?P<attr>(?:urn:[^\[]*:)?[A-Za-z$][\w$-]*)(?:\[(?P<filter>.*)\])?(?:\.(?P<sub>[A-Za-z$][\w$-]*))?$", re.S)


def _operations(body: Any) -> list[dict[str, Any]]:
    ops = body_object(body).get("Operations")
    if not isinstance(ops, list) or not ops:
        raise ScimError(400, "a PATCH body holds a non-empty 'Operations' list", "invalidSyntax")
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str) or op["op"].lower() not in ("add", "remove", "replace"):
            raise ScimError(400, f"each operation has an 'op' of add, remove or replace; got {op!r}", "invalidSyntax")
    return ops


def apply_patch(kind: str, doc: dict[str, Any], body: Any) -> tuple[dict[str, Any], bool]:
    """(the patched document, whether members were replaced wholesale)."""
    out, wholesale = copy.deepcopy(doc), False
    for op in _operations(body):
        verb, path, value = op["op"].lower(), op.get("path"), op.get("value")
        if path is None or path == "":
            if verb == "remove":
                raise ScimError(400, "a remove operation needs a path", "noTarget")
            for k, v in body_object(value).items():
                wholesale |= _set(kind, out, k, v, verb)
            continue
        if not isinstance(path, str):
            raise ScimError(400, f"path must be a string, not {path!r}", "invalidPath")
        wholesale |= _at_path(kind, out, path, verb, value)
    return out, wholesale


def _attr(text: str) -> str:
    low = text.lower()
    if low.startswith("urn:") and not low.startswith((USER.lower() + ":", GROUP.lower() + ":")):
        return "$extension"  # an extension's attribute: never a core one of the same name
    try:
        return attribute_path(text)
    except FilterError:
        raise ScimError(400, f"{text!r} is not an attribute path", "invalidPath") from None


def _set(kind: str, doc: dict[str, Any], attr: str, value: Any, verb: str) -> bool:
    """add / replace of a whole attribute; True for a wholesale member change."""
    attr = _attr(attr)
    if attr in READ_ONLY:
        if attr == "id" and value not in (None, doc.get("id")):
            raise ScimError(400, "id cannot be changed", "mutability")
        return False
    if attr not in STORED[kind]:
        return False  # not stored by permrag: accepted, left alone
    name = CANONICAL[attr]
    if attr == "active":
        doc[name] = boolean(value, "active")
    elif attr == "members":
        items = value if isinstance(value, list) else [value]
        if verb == "add":
            have = {m.get("value") for m in doc.get("members", [])}
            doc["members"] = doc.get("members", []) + [m for m in items if not (isinstance(m, dict) and m.get("value") in have)]
            return False
        doc["members"] = items
        return True
    else:
        doc[name] = value
    return False


def _at_path(kind: str, doc: dict[str, Any], path: str, verb: str, value: Any) -> bool:
    m = _PATH.match(path.strip())
    if m is None:
        raise ScimError(400, f"cannot read the path {path!r}", "invalidPath")
    attr, where, sub = _attr(m.group("attr")), m.group("filter"), m.group("sub")
    if "." in attr and where is None and sub is None:  # name.givenName
        attr, sub = attr.split(".", 1)
    if where is None and sub is None:
        if verb != "remove":
            return _set(kind, doc, attr, value, verb)
        return _remove(kind, doc, attr, value)
    if attr != "members" or kind != "Group":
        if attr in STORED[kind]:
            raise ScimError(400, f"{attr} has no sub-attributes or values to filter", "invalidPath")
        return False  # emails[type eq "work"].value, name.givenName …: not stored
    if sub is not None or verb != "remove":
        raise ScimError(400, f"only removing members by a filter is supported, not {verb} of {path!r}", "invalidPath")
    try:
        groups = parse(where or "")
    except FilterError as exc:
        raise ScimError(400, f"member filter {where!r}: {exc}", "invalidFilter") from None
    doc["members"] = [x for x in doc.get("members", []) if not matches(groups, x)]
    return False


def _remove(kind: str, doc: dict[str, Any], attr: str, value: Any) -> bool:
    if attr in READ_ONLY or attr not in STORED[kind]:
        if attr in READ_ONLY:
            raise ScimError(400, f"{attr} cannot be removed", "mutability")
        return False
    if attr in ("username",) or (attr == "displayname" and kind == "Group"):
        raise ScimError(400, f"{CANONICAL[attr]} is required and cannot be removed", "mutability")
    if attr == "members":
        if value is None:
            doc["members"] = []
            return True
        items = value if isinstance(value, list) else [value]
        gone = {i.get("value") for i in items if isinstance(i, dict)}
        doc["members"] = [x for x in doc.get("members", []) if x.get("value") not in gone]
        return False
    doc.pop(CANONICAL[attr], None)
    return False
