"""LlamaIndex faces: a permissioned retriever and a wrapper for any retriever.

* :func:`retriever` — a LlamaIndex ``BaseRetriever`` over ``rag.search``
  (sync) and ``rag.asearch`` (async), returning ``NodeWithScore``s whose
  node id is the row's external id and whose metadata carries the document,
  tenant and the policy version of the answer;
* :func:`permissioned` — wraps any LlamaIndex retriever (a vector index's, a
  BM25 one, a fusion of several) whose nodes carry their external id and
  tenant in their metadata: only nodes the caller may read come back,
  over-fetching (by the inner ``similarity_top_k``) until ``k`` are found
  (the same check as the LangChain wrapper: :mod:`permrag.integrations.filtering`).

The principal is fixed when the retriever is made; nothing at query time can
change it. ``llama-index-core`` is an optional extra (``pip install
"permrag[llamaindex]"``): this module imports without it, builds its classes
on first use, and raises :class:`~permrag.errors.ConfigError` saying so when
it is missing.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypedDict

from .. import Hit
from ..errors import ArgumentError, ConfigError
from ..toolkit import DEFAULT_FUSION, DEFAULT_TENANT, DEFAULT_WEIGHTS, check_agents, check_k, check_principal, check_search_args
from .filtering import audit_served, overfetch, readable, via

if TYPE_CHECKING:  # the classes are built at first use (llama-index-core is optional)
    from llama_index.core.schema import NodeWithScore, QueryBundle

log = logging.getLogger(__name__)


class _Keys(TypedDict):
    """Where a wrapped retriever's nodes carry their external id, tenant and row id (metadata keys)."""

    id_key: str
    tenant_key: str | None
    row_key: str


@functools.cache
def classes() -> SimpleNamespace:
    """The LlamaIndex classes, built once (needs ``llama-index-core``)."""
    try:
        from llama_index.core.retrievers import BaseRetriever
        from llama_index.core.schema import NodeWithScore, TextNode
    except ImportError:
        raise ConfigError('the LlamaIndex integration needs llama-index-core: pip install "permrag[llamaindex]"') from None

    def to_node(h: Hit, hits: Any = None) -> NodeWithScore:
        meta = h.to_dict()
        text = meta.pop("text")
        meta.pop("score")
        if hits is not None:
            meta.update(hits.contract())  # the answer's consistency token and completeness (docs/consistency.md)
        return NodeWithScore(node=TextNode(id_=h.external_id, text=text, metadata=meta), score=h.score)

    PermissionedRetriever = _search_retriever(BaseRetriever, to_node)
    PermissionFilteredRetriever = _filtering_retriever(BaseRetriever)
    return SimpleNamespace(PermissionedRetriever=PermissionedRetriever, PermissionFilteredRetriever=PermissionFilteredRetriever, to_node=to_node)


def _search_retriever(BaseRetriever: Any, to_node: Any) -> Any:
    """The LlamaIndex retriever over ``rag.search`` (a class of ``BaseRetriever``)."""

    class PermissionedRetriever(BaseRetriever):
        """Retrieves only rows the bound principal may read."""

        def __init__(
            self,
            rag: Any,
            *,
            user: str,
            tenant: str = DEFAULT_TENANT,
            k: int = 4,
            mode: str = "auto",
            fusion: str = DEFAULT_FUSION,
            weights: Sequence[float] = DEFAULT_WEIGHTS,
            pool: int | None = None,
            callback_manager: Any = None,
            agent: str | None = None,
            at_least: str | None = None,
        ) -> None:
            check_search_args(["(none yet)"], user, tenant, k, mode, fusion, weights, pool)  # bad options fail here, not at the first query
            self.rag = rag
            self.user = user
            self.tenant = tenant
            self.options = dict(k=k, mode=mode, fusion=fusion, weights=tuple(weights), pool=pool, **via(check_agents(agent) or None))
            if at_least is not None:  # a consistency token every search must reflect (read-your-writes)
                self.options["at_least"] = at_least
            super().__init__(callback_manager=callback_manager)

        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            hits = self.rag.search(query_bundle.query_str, user=self.user, tenant=self.tenant, **self.options)
            return [to_node(h, hits) for h in hits]

        async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            hits = await self.rag.asearch(query_bundle.query_str, user=self.user, tenant=self.tenant, **self.options)
            return [to_node(h, hits) for h in hits]

    return PermissionedRetriever


def _filtering_retriever(BaseRetriever: Any) -> Any:
    """The ``permissioned()`` wrapper class (of ``BaseRetriever``)."""

    class PermissionFilteredRetriever(BaseRetriever):
        """Any LlamaIndex retriever, filtered by the caller's bitmap (see :func:`permissioned`)."""

        def __init__(
            self,
            inner: BaseRetriever,
            rag: Any,
            *,
            user: str,
            tenant: str = DEFAULT_TENANT,
            k: int | None = None,
            id_key: str = "external_id",
            tenant_key: str | None = "tenant",
            row_key: str = "row_id",
            callback_manager: Any = None,
            agent: str | None = None,
            at_least: str | None = None,
        ) -> None:
            if not isinstance(inner, BaseRetriever):
                raise ArgumentError(f"permissioned() wraps a LlamaIndex BaseRetriever, not {type(inner).__name__}")
            check_principal("user", user)
            check_principal("tenant", tenant)
            if k is not None:
                check_k(k)
            self.inner = inner
            self.rag = rag
            self.user = user
            self.tenant = tenant
            self.agent = check_agents(agent) or None
            self.k = k
            self.keys = _Keys(id_key=id_key, tenant_key=tenant_key, row_key=row_key)
            self.at_least = at_least  # a consistency token every answer must reflect (read-your-writes)
            super().__init__(callback_manager=callback_manager or inner.callback_manager)

        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            k = self.k or int(getattr(self.inner, "similarity_top_k", None) or 4)
            if self.at_least is not None:
                self.rag.wait_for(self.at_least)  # this process reflects the token before the bitmap is taken
            snap = self.rag.snapshot(self.user, self.tenant, **via(self.agent))

            def keep(nodes: list[NodeWithScore]) -> list[NodeWithScore]:
                ok = readable(self.rag, [n.node.metadata or {} for n in nodes], snap, self.tenant, **self.keys)
                return [n for n, yes in zip(nodes, ok) if yes]

            served = overfetch(lambda n: _fetch(self.inner, query_bundle, n), keep, k, adjustable=hasattr(self.inner, "similarity_top_k")) if snap.visible else []
            metas = [n.node.metadata or {} for n in served]
            audit_served(self.rag, "llamaindex", self.inner, self.user, self.tenant, snap, query_bundle.query_str, metas, id_key=self.keys["id_key"])
            return served

        async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            # The same over-fetch loop, on the store's bounded pool (see permrag.search.aio).
            return await self.rag.aio.run(self._retrieve, query_bundle)

    return PermissionFilteredRetriever


def _fetch(inner: Any, query_bundle: QueryBundle, n: int) -> list[NodeWithScore]:
    """The top ``n`` of ``inner`` (a LlamaIndex retriever), its own top-k left as it is."""
    if hasattr(inner, "similarity_top_k"):
        inner = copy.copy(inner)
        inner.similarity_top_k = n
    nodes: list[NodeWithScore] = inner.retrieve(query_bundle)
    return nodes


def retriever(rag: Any, *, user: str, tenant: str = DEFAULT_TENANT, **options: Any) -> Any:
    """A LlamaIndex retriever bound to ``user`` (and ``agent``, acting for it: only rows both may read):
    ``k``, ``mode``, ``fusion``, ``weights``, ``pool``, ``at_least`` as for ``rag.search``."""
    known = {"k", "mode", "fusion", "weights", "pool", "callback_manager", "agent", "at_least"}
    unknown = set(options) - known
    if unknown:
        raise ArgumentError(f"unknown retriever option(s) {sorted(unknown)}; known: {sorted(known)}")
    return classes().PermissionedRetriever(rag, user=user, tenant=tenant, **options)


def permissioned(
    inner: Any,
    rag: Any,
    *,
    user: str,
    tenant: str = DEFAULT_TENANT,
    k: int | None = None,
    id_key: str = "external_id",
    tenant_key: str | None = "tenant",
    agent: str | None = None,
    at_least: str | None = None,
) -> Any:
    """Wrap the LlamaIndex retriever ``inner`` so it returns only nodes ``user`` (through ``agent``: and the agent) may read in ``tenant``.

    Nodes must carry their external id in ``metadata[id_key]`` and their
    tenant in ``metadata[tenant_key]`` (``tenant_key=None`` only when the
    inner index holds one tenant's nodes). ``k`` defaults to the inner
    retriever's ``similarity_top_k``. ``at_least``: a consistency token each
    answer must reflect (docs/consistency.md); LlamaIndex's ``retrieve`` takes
    no per-call options, so set it here or on the wrapper's ``at_least``.
    """
    return classes().PermissionFilteredRetriever(inner, rag, user=user, tenant=tenant, k=k, id_key=id_key, tenant_key=tenant_key, agent=agent, at_least=at_least)


def __getattr__(name: str) -> Any:
    # `from permrag.integrations.llamaindex import PermissionedRetriever` builds the classes then.
    if name in ("PermissionedRetriever", "PermissionFilteredRetriever"):
        return getattr(classes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PermissionFilteredRetriever", "PermissionedRetriever", "classes", "permissioned", "retriever"]
