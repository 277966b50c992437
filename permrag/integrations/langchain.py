"""LangChain faces: a permissioned retriever, a wrapper for any retriever, and
agent tools whose principal comes from the application, never the model.

* :func:`as_retriever` / :class:`PermissionedRetriever` — ``rag.as_retriever(user=…)``;
  ``k``, ``mode``, ``fusion``, ``weights`` and ``pool`` directly or in
  ``search_kwargs`` (as LangChain's own retrievers take them); anything else
  is an error, never silently ignored.
* :func:`permissioned` — wraps any retriever whose documents carry an
  external id (``metadata[id_key]``, a row or a whole document) and their
  tenant (``metadata[tenant_key]``): only documents of the caller's tenant
  that the caller may read come back, over-fetching until ``k`` are found or
  the source runs dry. The inner retriever's own settings (``k``,
  ``search_type``, score thresholds, ``expr``) are kept; for a
  langchain-milvus store the permission filter is AND-ed into its ``expr``.
* :func:`knowledge_tool` and :func:`permission_tool` — tools that act as the
  user named by the run: ``config["configurable"]["user"]`` (and
  ``tenant``), or the LangChain 1.x runtime ``context`` (a mapping or an
  object with ``user`` / ``user_id`` and ``tenant``), and the agent acting for
  that user, from the same place (``agent`` / ``agent_id``): the tools then
  see only rows the user and the agent may both read. The retrievers take
  ``agent=`` beside ``user=``. The model's arguments can carry only the
  query or the document id.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import ConfigDict, Field

from .. import Hit, Hits
from ..errors import ArgumentError, ConfigError
from ..toolkit import DEFAULT_FUSION, DEFAULT_TENANT, DEFAULT_WEIGHTS, check_agents, check_search_args, quote
from .filtering import audit_served, overfetch, readable, via

log = logging.getLogger(__name__)

MAX_PUSHDOWN_IDS = 5000  # beyond this an `expr` list costs more than over-fetching
SEARCH_KEYS = frozenset({"k", "mode", "fusion", "weights", "pool", "at_least"})
WRAPPED_KEYS = frozenset({"k", "at_least"})  # what a permissioned() retriever takes per call


def to_document(h: Hit, hits: Hits | None = None) -> Document:
    """A hit as a Document; with its answer ``hits``, the metadata carries the
    answer's consistency token and completeness too (docs/consistency.md)."""
    meta = h.to_dict()
    text = meta.pop("text")
    if hits is not None:
        meta.update(hits.contract())
    return Document(page_content=text, metadata=meta, id=h.external_id)


def _at_least(token: Any) -> dict[str, Any]:
    """Keyword arguments of a read that must reflect ``token`` (none without one)."""
    return {"at_least": token} if token is not None else {}


class PermissionedRetriever(BaseRetriever):
    """Retrieves only rows the bound principal may read."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    rag: Any
    user: str
    tenant: str = DEFAULT_TENANT
    agent: str | None = None  # the agent acting for ``user``: only rows both may read
    k: int = 4
    mode: str = "auto"
    fusion: str = DEFAULT_FUSION
    weights: tuple[float, float] = DEFAULT_WEIGHTS
    pool: int | None = None
    at_least: str | None = None  # a consistency token every search must reflect (also per call: invoke(q, at_least=…))
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        unknown = set(self.search_kwargs) - SEARCH_KEYS
        if unknown:
            raise ArgumentError(f"unknown search_kwargs {sorted(unknown)}; permrag takes {sorted(SEARCH_KEYS)}")

    def _settings(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(overrides) - SEARCH_KEYS
        if unknown:
            raise ArgumentError(f"unknown search arguments {sorted(unknown)}; permrag takes {sorted(SEARCH_KEYS)}")
        out = {"k": self.k, "mode": self.mode, "fusion": self.fusion, "weights": self.weights, "pool": self.pool, "at_least": self.at_least}
        out.update(self.search_kwargs)
        out.update(overrides)
        if out["at_least"] is None:
            del out["at_least"]
        return out

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any) -> list[Document]:
        hits = self.rag.search(query, user=self.user, tenant=self.tenant, **via(self.agent), **self._settings(kwargs))
        return [to_document(h, hits) for h in hits]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any) -> list[Document]:
        hits = await self.rag.asearch(query, user=self.user, tenant=self.tenant, **via(self.agent), **self._settings(kwargs))
        return [to_document(h, hits) for h in hits]


def as_retriever(rag: Any, *, user: str, tenant: str = DEFAULT_TENANT, **options: Any) -> PermissionedRetriever:
    """A :class:`PermissionedRetriever` for ``user``; unknown options raise :class:`ArgumentError`."""
    known = set(PermissionedRetriever.model_fields) - {"rag", "user", "tenant"}
    unknown = set(options) - known
    if unknown:
        raise ArgumentError(f"unknown retriever option(s) {sorted(unknown)}; known: {sorted(known)}")
    bad = set(options.get("search_kwargs") or {}) - SEARCH_KEYS
    if bad:
        raise ArgumentError(f"unknown search_kwargs {sorted(bad)}; permrag takes {sorted(SEARCH_KEYS)}")
    return PermissionedRetriever(rag=rag, user=user, tenant=tenant, **options)


class PermissionFilteredRetriever(BaseRetriever):
    """Any retriever, filtered by the caller's bitmap (see :func:`permissioned`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    inner: BaseRetriever
    rag: Any
    user: str
    tenant: str = DEFAULT_TENANT
    agent: str | None = None  # the agent acting for ``user``: only documents both may read
    k: int | None = None
    id_key: str = "external_id"
    tenant_key: str | None = "tenant"
    row_key: str = "row_id"
    at_least: str | None = None  # a consistency token every answer must reflect (also per call: invoke(q, at_least=…))

    def _inner_k(self) -> int:
        if self.k is not None:
            return self.k
        kwargs = getattr(self.inner, "search_kwargs", None) or {}
        return int(kwargs.get("k") or getattr(self.inner, "k", None) or 4)

    def _readable(self, docs: list[Document], snap: Any) -> list[Document]:
        """Documents of the caller's tenant whose row (or every chunk of whose document) the snapshot allows."""
        ok = readable(self.rag, [d.metadata or {} for d in docs], snap, self.tenant, id_key=self.id_key, tenant_key=self.tenant_key, row_key=self.row_key)
        return [d for d, keep in zip(docs, ok) if keep]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any) -> list[Document]:
        unknown = set(kwargs) - WRAPPED_KEYS
        if unknown:
            raise ArgumentError(f"unknown search arguments {sorted(unknown)}; a permissioned() retriever takes {sorted(WRAPPED_KEYS)}")
        token = kwargs.get("at_least", self.at_least)
        if token is not None:
            self.rag.wait_for(token)  # read-your-writes: this process reflects the token before the bitmap is taken
        snap = self.rag.snapshot(self.user, self.tenant, **via(self.agent))
        docs = self._serve(query, snap, int(kwargs.get("k") or self._inner_k()))
        audit_served(self.rag, "langchain", self.inner, self.user, self.tenant, snap, query, [d.metadata or {} for d in docs], id_key=self.id_key)
        return docs

    def _serve(self, query: str, snap: Any, k: int) -> list[Document]:
        if not snap.visible:
            return []
        store = getattr(self.inner, "vectorstore", None)
        if store is not None and type(store).__name__ == "Milvus" and len(snap.visible) <= MAX_PUSHDOWN_IDS:
            recs = self.rag.catalog.rows.records(snap.visible).values()
            names = sorted({r.document for r in recs} | {r.external_id for r in recs})
            parts = [f"{self.id_key} in [{', '.join(quote(v) for v in names)}]"]
            if self.tenant_key is not None:
                parts.append(f"{self.tenant_key} == {quote(self.tenant)}")
            inner_expr = (self.inner.search_kwargs or {}).get("expr")  # type: ignore[attr-defined]
            if inner_expr:
                parts.insert(0, f"({inner_expr})")
            docs = self._fetch(query, k, expr=" and ".join(parts))
            return self._readable(docs, snap)[:k]
        return overfetch(lambda n: self._fetch(query, n), lambda docs: self._readable(docs, snap), k, adjustable=self._takes_k())

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any) -> list[Document]:
        # The same over-fetch loop, on the store's bounded pool (see permrag.search.aio).
        return await self.rag.aio.run(self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **kwargs)

    def _takes_k(self) -> bool:
        return hasattr(self.inner, "search_kwargs") or "k" in type(self.inner).model_fields

    def _fetch(self, query: str, n: int, **extra: Any) -> list[Document]:
        inner = self.inner
        if hasattr(inner, "search_kwargs"):
            inner = inner.model_copy(update={"search_kwargs": {**inner.search_kwargs, "k": n, **extra}})
        elif "k" in type(inner).model_fields:
            inner = inner.model_copy(update={"k": n})
        return inner.invoke(query)


def permissioned(
    retriever: BaseRetriever,
    rag: Any,
    *,
    user: str,
    tenant: str = DEFAULT_TENANT,
    agent: str | None = None,
    k: int | None = None,
    id_key: str = "external_id",
    tenant_key: str | None = "tenant",
    at_least: str | None = None,
) -> PermissionFilteredRetriever:
    """Wrap ``retriever`` so it returns only documents ``user`` may read in ``tenant``.

    Documents must carry their external id in ``metadata[id_key]`` and their
    tenant in ``metadata[tenant_key]``; pass ``tenant_key=None`` only when
    the inner store holds one tenant's documents. ``k`` defaults to the inner
    retriever's. ``at_least`` (here, or per call: ``invoke(q, at_least=…)``):
    a consistency token each answer must reflect (docs/consistency.md).
    """
    return PermissionFilteredRetriever(inner=retriever, rag=rag, user=user, tenant=tenant, agent=agent, k=k, id_key=id_key, tenant_key=tenant_key, at_least=at_least)


def principal(config: RunnableConfig | None) -> tuple[str, str]:
    """(user, tenant) of a run: ``configurable`` first, else the LangChain 1.x runtime context."""
    user, tenant, _ = delegation(config)
    return user, tenant


def delegation(config: RunnableConfig | None) -> tuple[str, str, tuple[str, ...] | None]:
    """(user, tenant, agents) of a run, like :func:`principal`; the agent acting for the user
    (``configurable["agent"]``, else the context's ``agent`` / ``agent_id``): one id or a
    chain, every one of which must be allowed (None: the user alone).
    Never from the model's arguments: a tool's only arguments are its query or document id."""
    conf = dict((config or {}).get("configurable") or {})
    user, tenant, agent = conf.get("user"), conf.get("tenant"), conf.get("agent")
    runtime = conf.get("__pregel_runtime")
    context = getattr(runtime, "context", None) if runtime is not None else None
    if context is not None:
        get = context.get if isinstance(context, Mapping) else lambda key: getattr(context, key, None)
        if not user:
            user = get("user") or get("user_id")
            tenant = tenant or get("tenant")
        agent = agent or get("agent") or get("agent_id")
    if not isinstance(user, str) or not user:
        raise ConfigError("no principal: run with config={'configurable': {'user': ...}} or context={'user': ...}")
    return user, tenant or DEFAULT_TENANT, (check_agents(agent) if agent is not None else None)


def knowledge_tool(rag: Any, *, k: int = 4, mode: str = "auto", fusion: str = DEFAULT_FUSION, weights: tuple[float, float] = DEFAULT_WEIGHTS, name: str = "search_knowledge_base") -> BaseTool:
    """A search tool acting as the run's user (see :func:`principal`); async runs use ``rag.aio``.

    ``k``, ``mode``, ``fusion`` and ``weights`` are fixed when the tool is made
    (checked now, not at the first call); the model chooses only the query."""
    check_search_args(["(none yet)"], "(tool)", DEFAULT_TENANT, k, mode, fusion, weights)

    def search_knowledge_base(query: str, config: RunnableConfig) -> str:
        """Search the company knowledge base; returns the passages you may read."""
        user, tenant, agent = delegation(config)
        token = ((config or {}).get("configurable") or {}).get("at_least")  # read-your-writes: the application's token, never the model's
        hits = rag.search(query, user=user, tenant=tenant, k=k, mode=mode, fusion=fusion, weights=weights, **via(agent), **_at_least(token))
        if not hits:
            return f"No readable passages found (policy version {hits.policy_version}; {hits.reason})."
        more = "" if hits.reason is None else f"\n\n({len(hits)} passages: {hits.reason.replace('_', ' ')})"
        return "\n\n".join(f"[{h.external_id}] {h.text}" for h in hits) + more

    return _tool(rag, search_knowledge_base, name)


def permission_tool(rag: Any, *, name: str = "can_read_document") -> BaseTool:
    """A tool answering "may the current user read document X?" — the same
    answer for a hidden document and one that does not exist (one
    :meth:`~permrag.core.PermRAG.can_read` call, False for both)."""

    def can_read_document(document_id: str, config: RunnableConfig) -> str:
        """Check whether you may read a document, by its id."""
        user, tenant, agent = delegation(config)
        if rag.can_read(user, document_id, tenant, **via(agent)):
            return f"yes: you may read {document_id!r}"
        return f"no: there is no document {document_id!r} that you may read"

    return _tool(rag, can_read_document, name)


def _tool(rag: Any, fn: Any, name: str) -> BaseTool:
    """A tool running ``fn`` directly, or on ``rag.aio``'s bounded pool when awaited."""

    @functools.wraps(fn)  # the same signature: the tool injects the run's config into both
    async def run_async(*args: Any, **kwargs: Any) -> str:
        return await rag.aio.run(fn, *args, **kwargs)

    return StructuredTool.from_function(func=fn, coroutine=run_async, name=name, description=fn.__doc__)
