"""SCIM 2.0 documents: resources as JSON, request bodies read, discovery.

What permrag keeps of a user: ``id`` (permanent), ``userName`` (the label,
unique without regard to case), ``displayName``, ``externalId``, ``active``;
of a group: ``id``, ``displayName`` (the label), ``externalId`` and direct
``members``. The schemas published at ``/Schemas`` declare exactly these, so
a client knows what is stored; other attributes a provider sends (``name``,
``emails``, extensions) are accepted and not stored.
"""

from __future__ import annotations

import datetime
from typing import Any

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
SPC = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"
RESOURCE_TYPE = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
MAX_RESULTS = 1000
ALWAYS = frozenset({"id", "schemas"})


class ScimError(Exception):
    """An error answered as a SCIM error body."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.scim_type = status, detail, scim_type

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemas": [ERROR], "status": str(self.status), "detail": self.detail}
        if self.scim_type:
            out["scimType"] = self.scim_type
        return out


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


def etag(version: str) -> str:
    return f'W/"{version}"'


def _meta(kind: str, base: str, ident: str, version: str, created: float | None, modified: float | None) -> dict[str, Any]:
    meta = {"resourceType": kind, "location": f"{base}/{kind}s/{ident}", "version": etag(version)}
    meta.update({k: v for k, v in (("created", _when(created)), ("lastModified", _when(modified))) if v})
    return meta


def user_doc(u: Any, base: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemas": [USER], "id": u.id, "userName": u.user_name}
    if u.active_given:
        doc["active"] = u.active
    if u.display_name is not None:
        doc["displayName"] = u.display_name
    if u.external_id is not None:
        doc["externalId"] = u.external_id
    if u.groups:
        doc["groups"] = [{"value": g, "display": label, "type": "direct", "$ref": f"{base}/Groups/{g}"} for g, label in u.groups]
    doc["meta"] = _meta("User", base, u.id, u.version, u.created, u.modified)
    return doc


def group_doc(g: Any, base: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemas": [GROUP], "id": g.id, "displayName": g.display_name}
    if g.external_id is not None:
        doc["externalId"] = g.external_id
    if g.members:
        doc["members"] = [{"value": i, "type": kind, "$ref": f"{base}/{kind}s/{i}"} for kind, i, _ in g.members]
    doc["meta"] = _meta("Group", base, g.id, g.version, g.created, g.modified)
    return doc


def _names(text: str | None) -> list[str]:
    from .scim_filter import attribute_path

    return [attribute_path(a.strip()) for a in (text or "").split(",") if a.strip()]


def project(doc: dict[str, Any], attributes: str | None, excluded: str | None) -> dict[str, Any]:
    """``doc`` with only ``attributes`` (plus id and schemas), or without ``excluded``."""
    keep, drop = _names(attributes), _names(excluded)
    if keep:
        out: dict[str, Any] = {}
        for k, v in doc.items():
            low = k.lower()
            subs = [p.split(".", 1)[1] for p in keep if p.startswith(low + ".")]
            if low in ALWAYS or low in keep:
                out[k] = v
            elif subs and isinstance(v, dict):
                out[k] = {s: x for s, x in v.items() if s.lower() in subs}
            elif subs and isinstance(v, list):
                out[k] = [{s: x for s, x in i.items() if s.lower() in subs} for i in v if isinstance(i, dict)]
        return out
    return {k: v for k, v in doc.items() if k.lower() in ALWAYS or k.lower() not in drop}


# ---------------------------------------------------------------------- request bodies
def _field(body: dict[str, Any], name: str) -> Any:
    low = name.lower()
    for k, v in body.items():
        key = k
        if k.lower().startswith("urn:"):  # the core schema's attribute by its full name; an extension's is not ours
            if not k.lower().startswith((USER.lower() + ":", GROUP.lower() + ":")):
                continue
            key = k.rsplit(":", 1)[1]
        if key.lower() == low:
            return v
    return None


def boolean(value: Any, what: str) -> bool:
    """A SCIM boolean; Entra ID sends ``"True"`` / ``"False"`` as strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ScimError(400, f"{what} must be true or false, not {value!r}", "invalidValue")


def _string(value: Any, what: str, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise ScimError(400, f"{what} is required", "invalidValue")
        return None
    if not isinstance(value, str):
        raise ScimError(400, f"{what} must be a string, not {type(value).__name__}", "invalidValue")
    return value


def body_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ScimError(400, "the request body must be a JSON object", "invalidSyntax")
    return body


def user_fields(body: dict[str, Any]) -> dict[str, Any]:
    """UserFields arguments from a User document."""
    active = _field(body, "active")
    return {
        "user_name": _string(_field(body, "userName"), "userName", required=True),
        "display_name": _string(_field(body, "displayName"), "displayName"),
        "external_id": _string(_field(body, "externalId"), "externalId"),
        "active": None if active is None else boolean(active, "active"),
    }


def member_refs(value: Any) -> list[tuple[str | None, str]]:
    """``members`` values → ``(type, id)``."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for m in items:
        if not isinstance(m, dict) or not isinstance(m.get("value"), str) or not m["value"]:
            raise ScimError(400, f"a member is an object with a string 'value', not {m!r}", "invalidValue")
        kind = m.get("type")
        if kind is not None and (not isinstance(kind, str) or kind.casefold() not in ("user", "group")):
            raise ScimError(400, f"member type must be User or Group, not {kind!r}", "invalidValue")
        out.append((kind, m["value"]))
    return out


def group_fields(body: dict[str, Any]) -> dict[str, Any]:
    """GroupFields arguments from a Group document."""
    return {
        "display_name": _string(_field(body, "displayName"), "displayName", required=True),
        "external_id": _string(_field(body, "externalId"), "externalId"),
        "members": tuple(member_refs(_field(body, "members"))),
    }


# ---------------------------------------------------------------------- discovery
def _attr(name: str, kind: str = "string", **more: Any) -> dict[str, Any]:
    out = {"name": name, "type": kind, "multiValued": False, "description": name, "required": False, "caseExact": False}
    out.update({"mutability": "readWrite", "returned": "default", "uniqueness": "none"})
    out.update(more)
    return out


def _sub(readonly: bool, refs: list[str]) -> list[dict[str, Any]]:
    mut = "readOnly" if readonly else "immutable"
    return [
        _attr("value", mutability=mut, caseExact=True),
        _attr("$ref", "reference", mutability=mut, referenceTypes=refs),
        *([_attr("display", mutability="readOnly")] if readonly else []),
        _attr("type", mutability=mut, canonicalValues=["direct", "indirect"] if readonly else ["User", "Group"]),
    ]


def schemas(base: str) -> list[dict[str, Any]]:
    user = [
        _attr("userName", required=True, uniqueness="server"),
        _attr("displayName"),
        _attr("active", "boolean"),
        _attr("groups", "complex", multiValued=True, mutability="readOnly", subAttributes=_sub(True, ["Group"])),
    ]
    group = [
        _attr("displayName", required=True),
        _attr("members", "complex", multiValued=True, subAttributes=_sub(False, ["User", "Group"])),
    ]
    return [
        {"schemas": [SCHEMA], "id": USER, "name": "User", "description": "User account", "attributes": user,
         "meta": {"resourceType": "Schema", "location": f"{base}/Schemas/{USER}"}},
        {"schemas": [SCHEMA], "id": GROUP, "name": "Group", "description": "Group", "attributes": group,
         "meta": {"resourceType": "Schema", "location": f"{base}/Schemas/{GROUP}"}},
    ]  # fmt: skip


def resource_types(base: str) -> list[dict[str, Any]]:
    return [
        {"schemas": [RESOURCE_TYPE], "id": kind, "name": kind, "endpoint": f"/{kind}s", "description": kind, "schema": urn,
         "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/{kind}"}}
        for kind, urn in (("User", USER), ("Group", GROUP))
    ]  # fmt: skip


def service_provider_config(base: str) -> dict[str, Any]:
    no = {"supported": False}
    return {
        "schemas": [SPC],
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_RESULTS},
        "changePassword": no,
        "sort": no,
        "etag": {"supported": True},
        "authenticationSchemes": [{"type": "oauthbearertoken", "name": "Bearer token", "description": "permrag serve --scim-token-file, or a store token with the scim scope", "primary": True}],
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{base}/ServiceProviderConfig"},
    }


def list_response(resources: list[dict[str, Any]], total: int, start: int) -> dict[str, Any]:
    return {"schemas": [LIST], "totalResults": total, "startIndex": start, "itemsPerPage": len(resources), "Resources": resources}
