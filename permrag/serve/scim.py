"""The ``/scim/v2`` application: Users and Groups over SCIM 2.0 (RFC 7643/7644).

Every request is authorized by a SCIM bearer token (:mod:`permrag.serve.auth`)
that names the tenant it provisions; each write is one call to
``rag.identity.provisioning()`` and so one policy version, seen by every
process at its next query. A write names the version it read (the client's
``If-Match``, else the one this request read for a PATCH), checked inside the
change: a mismatch is 412 and changes nothing. Errors are SCIM error bodies
with the ``application/scim+json`` content type.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import (
    ArgumentError,
    MassRemovalError,
    PermragError,
    PolicyError,
    ResourceConflictError,
    UnknownSubjectError,
    VersionMismatchError,
)
from .scim_filter import FilterError, matches, narrowing, parse
from .scim_patch import apply_patch
from .scim_resources import (
    MAX_RESULTS,
    ScimError,
    body_object,
    etag,
    group_doc,
    group_fields,
    list_response,
    project,
    resource_types,
    schemas,
    service_provider_config,
    user_doc,
    user_fields,
)

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/scim+json"
MAX_BODY = 1 << 20
KINDS = {"Users": "User", "Groups": "Group"}


def reply(body: Any, status: int = 200, version: str | None = None, location: str | None = None) -> Response:
    headers = {}
    if version is not None:
        headers["ETag"] = etag(version)
    if location is not None:
        headers["Location"] = location
    return Response(json.dumps(body), status, headers, media_type=CONTENT_TYPE)


def _error(exc: Exception) -> ScimError:
    if isinstance(exc, ScimError):
        return exc
    if isinstance(exc, FilterError):
        return ScimError(400, str(exc), "invalidFilter")
    if isinstance(exc, VersionMismatchError):
        return ScimError(412, str(exc))
    if isinstance(exc, ResourceConflictError):
        return ScimError(409, str(exc), "uniqueness")
    if isinstance(exc, MassRemovalError):
        return ScimError(409, str(exc))
    if isinstance(exc, UnknownSubjectError):  # the resource addressed does not exist
        return ScimError(404, str(exc))
    if isinstance(exc, (PolicyError, ArgumentError)):
        return ScimError(400, str(exc), "invalidValue")
    if isinstance(exc, PermragError):  # the store or a backend failed: its message (hosts, accounts) stays in the log
        return ScimError(503, f"the store is unavailable ({exc.__class__.__name__}); nothing was changed; the reason is in the server's log")
    return ScimError(500, "internal error")


def _if_match(request: Request) -> str | None:
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    tag = raw.strip().split(",")[0].strip()
    return tag[2:].strip('"') if tag.startswith("W/") else tag.strip('"')


async def _body(request: Request) -> Any:
    """The JSON body, read no further than :data:`MAX_BODY` bytes."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ScimError(413, f"the request body is larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise ScimError(400, "the request body is not JSON", "invalidSyntax") from None


def _int(value: str | None, what: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ScimError(400, f"{what} must be an integer, not {value!r}", "invalidValue") from None


class ScimApp:
    """The handlers, bound to a store and an authorizer."""

    def __init__(self, rag: Any, authorize: Callable[[Request], Awaitable[str]], *, allow_mass_removal: bool = False) -> None:
        self.rag = rag
        self.authorize = authorize  # the request's tenant, or a ScimError 401
        self.prov = rag.identity.provisioning(allow_mass_removal=allow_mass_removal)

    def base(self, request: Request) -> str:
        return str(request.url.replace(path=request.scope.get("root_path", ""), query="")).rstrip("/")

    def doc(self, kind: str, item: Any, request: Request) -> dict[str, Any]:
        return user_doc(item, self.base(request)) if kind == "User" else group_doc(item, self.base(request))

    def routes(self) -> list[Route]:
        h = self.handle
        return [
            Route("/ServiceProviderConfig", h(self.spc), methods=["GET"]),
            Route("/Schemas", h(self.schemas), methods=["GET"]),
            Route("/Schemas/{id:path}", h(self.schemas), methods=["GET"]),
            Route("/ResourceTypes", h(self.resource_types), methods=["GET"]),
            Route("/ResourceTypes/{id}", h(self.resource_types), methods=["GET"]),
            Route("/.search", h(self.root_search), methods=["POST"]),
            Route("/{kind:str}/.search", h(self.search), methods=["POST"]),
            Route("/{kind:str}", h(self.collection), methods=["GET", "POST"]),
            Route("/{kind:str}/{id}", h(self.item), methods=["GET", "PUT", "PATCH", "DELETE"]),
        ]

    def handle(self, fn: Callable[[Request, str], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                tenant = await self.authorize(request)
                return await fn(request, tenant)
            except Exception as exc:  # every failure is a SCIM error body; nothing was changed
                err = _error(exc)
                if err.status >= 500:
                    log.warning("SCIM %s %s failed: %s", request.method, request.url.path, exc, exc_info=err.status == 500)
                res = reply(err.body(), err.status)
                if err.status == 401:
                    res.headers["WWW-Authenticate"] = 'Bearer realm="permrag-scim"'
                return res

        return endpoint

    # ------------------------------------------------------------------ discovery
    async def spc(self, request: Request, tenant: str) -> Response:
        return reply(service_provider_config(self.base(request)))

    async def schemas(self, request: Request, tenant: str) -> Response:
        return self._discovery(request, schemas(self.base(request)), "Schema")

    async def resource_types(self, request: Request, tenant: str) -> Response:
        return self._discovery(request, resource_types(self.base(request)), "ResourceType")

    def _discovery(self, request: Request, items: list[dict[str, Any]], what: str) -> Response:
        wanted = request.path_params.get("id")
        if wanted is None:
            return reply(list_response(items, len(items), 1))
        for item in items:
            if item["id"] == wanted:
                return reply(item)
        raise ScimError(404, f"no {what} {wanted!r}")

    # ------------------------------------------------------------------ reading
    def _kind(self, request: Request) -> str:
        kind = KINDS.get(request.path_params["kind"])
        if kind is None and request.path_params["kind"] in ("ServiceProviderConfig", "Schemas", "ResourceTypes"):
            raise ScimError(405, f"{request.method} is not allowed on {request.path_params['kind']}")
        if kind is None:
            raise ScimError(404, f"no resource type at {request.url.path!r} (Users, Groups)")
        return kind

    async def _list(self, request: Request, tenant: str, kind: str, params: dict[str, Any]) -> Response:
        groups = parse(params["filter"]) if params.get("filter") not in (None, "") else None
        start = max(1, _int(params.get("startIndex"), "startIndex", 1))
        count = min(max(0, _int(params.get("count"), "count", MAX_RESULTS)), MAX_RESULTS)
        where = narrowing(groups, kind)  # an eq on an indexed attribute: read only its candidates
        items = await self.rag.aio.run(self.prov.users if kind == "User" else self.prov.groups, tenant, where=where)
        docs = [self.doc(kind, i, request) for i in items]
        hits = [d for d in docs if groups is None or matches(groups, d)]
        page = hits[start - 1 : start - 1 + count]
        shown = [project(d, params.get("attributes"), params.get("excludedAttributes")) for d in page]
        return reply(list_response(shown, len(hits), start))

    async def search(self, request: Request, tenant: str) -> Response:
        body = body_object(await _body(request))
        params = {k: (",".join(v) if isinstance(v, list) else None if v is None else str(v)) for k, v in body.items() if k != "schemas"}
        return await self._list(request, tenant, self._kind(request), params)

    async def root_search(self, request: Request, tenant: str) -> Response:
        raise ScimError(501, "searching several resource types at once is not supported: POST /Users/.search or /Groups/.search")

    async def _get(self, kind: str, ident: str, tenant: str) -> Any:
        return await self.rag.aio.run(self.prov.user if kind == "User" else self.prov.group, ident, tenant)

    # ------------------------------------------------------------------ writing
    async def collection(self, request: Request, tenant: str) -> Response:
        kind = self._kind(request)
        if request.method == "GET":
            return await self._list(request, tenant, kind, dict(request.query_params))
        body = body_object(await _body(request))
        if kind == "User":
            made = await self.rag.aio.run(self.prov.create_user, self.prov.UserFields(**user_fields(body)), tenant)
        else:
            made = await self.rag.aio.run(self.prov.create_group, self.prov.GroupFields(**group_fields(body)), tenant)
        doc = self.doc(kind, made, request)
        return reply(doc, 201, made.version, doc["meta"]["location"])

    async def item(self, request: Request, tenant: str) -> Response:
        kind, ident = self._kind(request), request.path_params["id"]
        if request.method == "GET":
            found = await self._get(kind, ident, tenant)
            doc = project(self.doc(kind, found, request), request.query_params.get("attributes"), request.query_params.get("excludedAttributes"))
            return reply(doc, 200, found.version)
        if request.method == "DELETE":
            remove = self.prov.delete_user if kind == "User" else self.prov.delete_group
            await self.rag.aio.run(remove, ident, tenant, if_version=_if_match(request))
            return Response(status_code=204)
        body = await _body(request)
        if request.method == "PUT":
            return await self._replace(request, tenant, kind, ident, body_object(body), _if_match(request), True)
        tries = 1 if _if_match(request) is not None else 20
        while True:  # PATCH: read, patch, write at the version read (another writer in between: again)
            current = await self._get(kind, ident, tenant)
            doc, wholesale = apply_patch(kind, self.doc(kind, current, request), body)
            try:
                return await self._replace(request, tenant, kind, ident, doc, _if_match(request) or current.version, wholesale)
            except VersionMismatchError:
                tries -= 1
                if not tries:
                    raise

    async def _replace(self, request: Request, tenant: str, kind: str, ident: str, body: dict[str, Any], version: str | None, wholesale: bool) -> Response:
        if kind == "User":
            done = await self.rag.aio.run(self.prov.replace_user, ident, self.prov.UserFields(**user_fields(body)), tenant, if_version=version)
        else:
            fields = self.prov.GroupFields(**group_fields(body))
            done = await self.rag.aio.run(self.prov.replace_group, ident, fields, tenant, if_version=version, wholesale=wholesale)
        return reply(self.doc(kind, done, request), 200, done.version)


def scim_app(rag: Any, authorize: Callable[[Request], Awaitable[str]], *, allow_mass_removal: bool = False) -> Starlette:
    """The ``/scim/v2`` application (mount it there)."""
    return Starlette(routes=ScimApp(rag, authorize, allow_mass_removal=allow_mass_removal).routes())
