"""A row or a whole document by its id, for a caller who may read it.

The read an agent makes after a search cites a document (the MCP ``fetch``
tool). It is answered like every other question that names a row: a row the
caller may not read and a row that does not exist raise the same
:class:`~permrag.errors.NotReadableError`, and a document is readable only if
every chunk of it is. The text comes from Milvus under the same snapshot that
decided the answer, and the read is written to the audit log as ``fetch`` —
a refused one too (``refused: true``, no rows).
"""

from __future__ import annotations

from ..access import Snapshot
from ..access.consistency import reach
from ..catalog import DocumentRecord, RowRecord
from ..domain.results import Hit, Hits
from ..errors import BackendError, NotReadableError
from .contract import stamp
from .searcher import Searcher


def readable(searcher: Searcher, event: str, external_id: str, user: str, tenant: str, snap: Snapshot) -> RowRecord | DocumentRecord:
    """The row or document ``user`` may read, else :class:`NotReadableError` —
    the refusal written to the audit log as ``event`` with ``refused: true``
    (a probe for hidden documents leaves a trace)."""
    rec = searcher.access.readable(user, external_id, tenant, snapshot=snap, quiet=True)
    if rec is None:
        searcher.audit.record(event, user, tenant, snap.policy_version, {"external_id": external_id, "rows": [], "refused": True}, agents=snap.agents)
        raise NotReadableError(f"no row {external_id!r} that {user!r} may read in tenant {tenant!r}")
    return rec


def fetch(searcher: Searcher, external_id: str, *, user: str, tenant: str, agent: object = None, at_least: object = None) -> Hits:
    """The rows of ``external_id`` (one row, or a document's chunks in order), each stamped with the policy version;
    with ``agent``, only if the user and the agent may both read it; ``at_least``: a consistency token to reflect first."""
    if at_least is not None:
        reach(searcher.access, at_least)
    snap = searcher.access.snapshot(user, tenant, agent)
    rec = readable(searcher, "fetch", external_id, user, tenant, snap)
    rows = list(rec.chunks) if isinstance(rec, DocumentRecord) else [rec]
    ex = searcher.executor(tenant)
    texts = ex.backend.texts(ex.tenant_no, [r.row_id for r in rows]) if ex else {}
    missing = [r.external_id for r in rows if r.row_id not in texts]
    if missing:
        raise BackendError(f"row {missing[0]!r} is in the catalog but not in Milvus (run reconcile --full)")
    hits = stamp(searcher.access.engine, [Hit(r.row_id, r.external_id, texts[r.row_id], 1.0, dict(r.attrs), r.tenant, r.parent, snap.policy_version) for r in rows], snap, None, "dense")
    searcher.audit.record("fetch", user, tenant, snap.policy_version, {"external_id": external_id, "rows": [r.row_id for r in rows]}, agents=snap.agents)
    return hits
