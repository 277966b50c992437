"""SCIM 2.0 exports (Okta, Entra ID, OneLogin …) → a :class:`Directory`.

A file holds a ``ListResponse`` (or a bare list, or one resource) of ``User``
and ``Group`` resources. Each is keyed by its SCIM ``id`` (else its
``externalId``), the provider's immutable id; ``userName`` / ``displayName``
are labels, and a user with ``"active": false`` is deactivated. A group's
``members`` reference users and groups by id (``value``), with an optional
``type``.

All the SCIM files of one sync are read as one export: references resolve
across files (users in one file, groups in another), and the pages of one
listing may come as several files, merged and de-duplicated by id. A
listing is the pages of one ``totalResults`` and one resource kind (Users,
Groups, or both; from the resources' schemas or ``meta.resourceType``, or the
file's own ``resourceType``): pages of different kinds are never one listing.
A ``ListResponse`` whose ``totalResults`` exceeds the resources its listing
gives (its pages together) is refused: applied as the whole directory, a
partial export would drop the memberships of everyone on the missing pages,
deny groups included.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import IdentityFileError
from .directory import Directory, name_of
from .model import GROUP_PREFIX, USER_PREFIX


@dataclass(frozen=True)
class Resource:
    kind: str  # "User" or "Group"
    ident: str
    label: str
    active: bool
    members: tuple[tuple[str, str | None, str], ...]  # (referenced id, type, json path)
    path: str  # the file
    where: str  # its JSON path

    def content(self) -> tuple[str, bool, frozenset[tuple[str, str | None]]]:
        return self.label, self.active, frozenset((m, t) for m, t, _ in self.members)


@dataclass
class Page:
    """One SCIM file: its resources and, for a ListResponse, the total it declares."""

    path: str
    resources: list[Resource] = field(default_factory=list)
    total: int | None = None
    start: int | None = None
    declared: str | None = None  # the kind the file itself says it lists ("User" / "Group"), if it says

    def kinds(self) -> frozenset[str]:
        """The resource kinds of its listing: what it declares, else what it gives
        (both for a listing of the two, e.g. a root query; none for an empty page)."""
        return frozenset({self.declared} if self.declared else {r.kind for r in self.resources})


def parse_page(path: str, text: str) -> Page:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IdentityFileError(path, f"line {exc.lineno}, column {exc.colno}", f"not valid JSON ({exc.msg})") from None
    page = Page(path)
    if isinstance(doc, dict) and "Resources" in doc:
        resources, base = doc["Resources"], "$.Resources"
        page.total = _count(path, doc, "totalResults")
        page.start = _count(path, doc, "startIndex")
    elif isinstance(doc, dict) and "totalResults" in doc:  # an empty ListResponse may leave Resources out
        resources, base = [], "$"
        page.total = _count(path, doc, "totalResults")
    elif isinstance(doc, list):
        resources, base = doc, "$"
    elif isinstance(doc, dict):
        resources, base = [doc], "$"
    else:
        raise IdentityFileError(path, "$", "expected a SCIM ListResponse, a list of resources or one resource")
    if not isinstance(resources, list):
        raise IdentityFileError(path, base, "Resources must be a list")
    page.resources = [_resource(path, f"{base}[{i}]", res) for i, res in enumerate(resources)]
    page.declared = _declared(path, doc) if isinstance(doc, dict) and ("Resources" in doc or "totalResults" in doc) else None
    for r in page.resources:
        if page.declared and r.kind != page.declared:
            raise IdentityFileError(path, r.where, f"a {r.kind} in a listing of {page.declared}s (its resourceType)")
    return page


def _declared(path: str, doc: dict[str, Any]) -> str | None:
    """The kind a ListResponse says it lists: its ``resourceType`` (or ``meta.resourceType``), if any."""
    meta = doc.get("meta")
    value = doc.get("resourceType", meta.get("resourceType") if isinstance(meta, dict) else None)
    if value is None:
        return None
    if value not in ("User", "Group"):
        raise IdentityFileError(path, "$.resourceType", f"must be 'User' or 'Group', not {value!r}")
    return str(value)


def _count(path: str, doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IdentityFileError(path, f"$.{key}", f"must be a non-negative integer, not {value!r}")
    return value


def _resource(path: str, where: str, res: Any) -> Resource:
    if not isinstance(res, dict):
        raise IdentityFileError(path, where, "a resource must be an object")
    kind = _scim_kind(res)
    if kind == "conflict":
        raise IdentityFileError(path, f"{where}.meta.resourceType", "contradicts the resource's schemas")
    key = "id" if res.get("id") is not None else "externalId"
    if res.get(key) is None:
        raise IdentityFileError(path, f"{where}.id", "missing: a resource is keyed by its id (or, without one, its externalId)")
    ident = name_of(path, f"{where}.{key}", key, res.get(key))
    if kind == "User":
        active = res.get("active", True)
        if not isinstance(active, bool):
            raise IdentityFileError(path, f"{where}.active", f"must be true or false, not {active!r}")
        return Resource("User", ident, name_of(path, f"{where}.userName", "userName", res.get("userName")), active, (), path, where)
    if kind == "Group":
        members = res.get("members", [])
        if not isinstance(members, list):
            raise IdentityFileError(path, f"{where}.members", "must be a list")
        refs = []
        for j, m in enumerate(members):
            ref = m.get("value") if isinstance(m, dict) else None
            if not isinstance(ref, str) or not ref:
                raise IdentityFileError(path, f"{where}.members[{j}].value", "missing or not a string")
            kind_of = m.get("type")
            refs.append((ref, kind_of if isinstance(kind_of, str) else None, f"{where}.members[{j}]"))
        return Resource("Group", ident, name_of(path, f"{where}.displayName", "displayName", res.get("displayName")), True, tuple(refs), path, where)
    raise IdentityFileError(path, f"{where}.schemas", "neither a SCIM User nor a Group resource")


def _scim_kind(res: dict[str, Any]) -> str | None:
    kind = _schema_kind(res)
    meta = res.get("meta")
    typed = meta.get("resourceType") if isinstance(meta, dict) else None
    if typed in ("User", "Group") and kind not in (None, typed):
        return "conflict"
    return kind or (typed if typed in ("User", "Group") else None)


def _schema_kind(res: dict[str, Any]) -> str | None:
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


def merge_pages(pages: Sequence[Page]) -> dict[tuple[str, str], Resource]:
    """Every resource of the pages, once per (kind, id), after checking that
    each listing is complete; an id given twice with different content is refused."""
    _check_complete(pages)
    out: dict[tuple[str, str], Resource] = {}
    for page in pages:
        for r in page.resources:
            seen = out.setdefault((r.kind, r.ident), r)
            if seen.content() != r.content():
                raise IdentityFileError(r.path, r.where, f"{r.kind} {r.ident!r} is also at {seen.path}, {seen.where}, with other content (pages of two different exports?)")
    return out


def listings(pages: Sequence[Page]) -> list[list[Page]]:
    """The pages of each listing: those that declare the same ``totalResults`` and
    list the same resource kinds (Users, Groups, or both in one listing). Pages of
    different kinds never count as one listing, so a users and a groups listing of
    equal totals never make up for each other. An empty page joins the one
    listing of its total, when there is exactly one."""
    out: dict[tuple[int, frozenset[str]], list[Page]] = {}
    for page in pages:
        if page.total is not None and page.kinds():
            out.setdefault((page.total, page.kinds()), []).append(page)
    for page in pages:
        if page.total is not None and not page.kinds():
            same = [k for k in out if k[0] == page.total]
            out.setdefault(same[0] if len(same) == 1 else (page.total, frozenset()), []).append(page)
    return list(out.values())


def _check_complete(pages: Sequence[Page]) -> None:
    """Each listing's pages together must give as many distinct resources as its
    ``totalResults`` declares."""
    for same in listings(pages):
        total, kinds = same[0].total or 0, frozenset().union(*(p.kinds() for p in same))
        given = {(r.kind, r.ident) for p in same for r in p.resources}
        if total > len(given):
            what = " and ".join(sorted(kinds)) or "resource"
            starts = sorted({p.start for p in same if p.start is not None})
            raise IdentityFileError(
                same[0].path,
                "$.totalResults",
                f"the export lists {total} {what}s but its pages give {len(given)} "
                f"({len(same)} file(s): {', '.join(sorted({p.path for p in same}))}"
                + (f"; startIndex {', '.join(map(str, starts))}" if starts else "")
                + f"): {total - len(given)} missing. A partial export would remove their memberships; "
                "give every page of the export in one sync. Nothing was applied",
            )


def resolve(pages: Sequence[Page]) -> Directory:
    """The directory of one sync's SCIM files, members resolved across all of them."""
    found = merge_pages(pages)
    out = Directory()
    for (kind, ident), r in found.items():
        if kind == "User":
            out.users.add(ident)
            out.labels[USER_PREFIX + ident] = r.label
            if not r.active:
                out.inactive.add(ident)
        else:
            out.groups.setdefault(ident, set())
            out.labels[GROUP_PREFIX + ident] = r.label
    for (_kind, ident), r in found.items():
        for ref, kind_of, where in r.members:
            if ("User", ref) in found and kind_of in (None, "User"):
                out.groups[ident].add(USER_PREFIX + ref)
            elif ("Group", ref) in found and kind_of in (None, "Group"):
                out.groups[ident].add(GROUP_PREFIX + ref)
            else:
                files = ", ".join(sorted({p.path for p in pages}))
                raise IdentityFileError(r.path, f"{where}.value", f"references {ref!r}, which is no {kind_of or 'User or Group'} of this export ({files})")
    return out
