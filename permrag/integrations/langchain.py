"""LangChain faces: a permissioned retriever, a wrapper for any retriever, and
an agent tool whose principal comes from the run's config, never the model.

* :class:`PermissionedRetriever` — ``rag.as_retriever(user=..., tenant=...)``.
* :func:`permissioned` — wraps any retriever whose documents carry an external
  id in ``metadata[id_key]``: filters with the caller's bitmap and over-fetches
  adaptively until ``k`` visible documents are found or the source runs dry.
  For a langchain-milvus ``Milvus`` store the visibility filter is pushed into
  its ``expr`` instead of post-filtering.
* :func:`knowledge_tool` — a tool that searches as ``config["configurable"]["user"]``
  (and ``tenant``); the model's arguments can carry only the query.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from pydantic import ConfigDict

from ..catalog import DEFAULT_TENANT
from ..errors import PermragError
from ..planner import quote
from ..retrieval import Hit

MAX_FETCH = 1024


def to_document(h: Hit) -> Document:
    meta = {
        "row_id": h.row_id,
        "external_id": h.external_id,
        "score": h.score,
        "policy_version": h.policy_version,
        "tenant": h.tenant,
        "parent": h.parent,
        "attrs": h.attrs,
    }
    return Document(page_content=h.text, metadata=meta, id=h.external_id)


class PermissionedRetriever(BaseRetriever):
    """Retrieves only rows the bound principal may read."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    rag: Any
    user: str
    tenant: str = DEFAULT_TENANT
    k: int = 4
    mode: str = "hybrid"
    fusion: str = "rrf"

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None, **kwargs: Any
    ) -> list[Document]:
        hits = self.rag.search(query, user=self.user, tenant=self.tenant, k=k or self.k, mode=self.mode, fusion=self.fusion)
        return [to_document(h) for h in hits]


class PermissionFilteredRetriever(BaseRetriever):
    """Any retriever, filtered by the caller's bitmap (see :func:`permissioned`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseRetriever
    rag: Any
    user: str
    tenant: str = DEFAULT_TENANT
    k: int = 4
    id_key: str = "external_id"

    def _visible_ids(self) -> set[str]:
        self.rag.sync()
        return {r.external_id for r in self.rag.rows(self.rag.visible(self.user, self.tenant))}

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None, **kwargs: Any
    ) -> list[Document]:
        k = k or self.k
        visible = self._visible_ids()
        if not visible:
            return []
        store = getattr(self.inner, "vectorstore", None)
        if store is not None and type(store).__name__ == "Milvus" and hasattr(store, "similarity_search"):
            expr = f"{self.id_key} in [{', '.join(quote(v) for v in sorted(visible))}]"
            docs = store.similarity_search(query, k=k, expr=expr)
            return [d for d in docs if d.metadata.get(self.id_key) in visible][:k]
        fetch = 2 * k
        while True:
            docs = self._fetch(query, fetch)
            ok = [d for d in docs if d.metadata.get(self.id_key) in visible]
            if len(ok) >= k or len(docs) < fetch or fetch >= MAX_FETCH or not self._takes_k():
                return ok[:k]
            fetch = min(MAX_FETCH, fetch * 4)

    def _takes_k(self) -> bool:
        return hasattr(self.inner, "search_kwargs") or "k" in type(self.inner).model_fields

    def _fetch(self, query: str, n: int) -> list[Document]:
        inner = self.inner
        if hasattr(inner, "search_kwargs"):
            inner = inner.model_copy(update={"search_kwargs": {**inner.search_kwargs, "k": n}})
        elif "k" in type(inner).model_fields:
            inner = inner.model_copy(update={"k": n})
        return inner.invoke(query)


def permissioned(
    retriever: BaseRetriever, rag: Any, *, user: str, tenant: str = DEFAULT_TENANT, k: int = 4, id_key: str = "external_id"
) -> PermissionFilteredRetriever:
    """Wrap ``retriever`` so it returns only documents ``user`` may read."""
    return PermissionFilteredRetriever(inner=retriever, rag=rag, user=user, tenant=tenant, k=k, id_key=id_key)


def knowledge_tool(rag: Any, *, k: int = 4, name: str = "search_knowledge_base") -> BaseTool:
    """A retriever tool whose principal is read from the run's ``configurable``."""

    @tool(name)
    def search_knowledge_base(query: str, config: RunnableConfig) -> str:
        """Search the company knowledge base; returns the passages you may read."""
        conf = (config or {}).get("configurable", {})
        user = conf.get("user")
        if not user:
            raise PermragError("no principal: pass config={'configurable': {'user': ...}}")
        hits = rag.search(query, user=user, tenant=conf.get("tenant", DEFAULT_TENANT), k=k)
        if not hits:
            return "No readable passages found."
        return "\n\n".join(f"[{h.external_id}] {h.text}" for h in hits)

    return search_knowledge_base
