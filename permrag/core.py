"""The PermRAG façade: one object that opens a store and answers for it."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Iterable, Mapping, Sequence

from pyroaring import FrozenBitMap
from sqlalchemy.exc import SQLAlchemyError

from . import config, db
from .catalog import DEFAULT_TENANT, Catalog, RowRecord, row_spec
from .compiler import Compiler
from .errors import BackendError, ConfigError, PermragError
from .explain import Explanation, explain_row
from .policy import Policy

log = logging.getLogger(__name__)


class PermRAG:
    """A permissioned retrieval store.

    Build one with :meth:`open`; the constructor itself does no I/O.
    """

    def __init__(
        self,
        settings: config.Settings,
        *,
        allocation: str = "contiguous",
        policy_attrs: Iterable[str] | None = None,
    ) -> None:
        self.settings = settings
        self._allocation = allocation
        self._policy_attrs = policy_attrs
        self._engine: Any = None
        self.policy: Policy = None  # type: ignore[assignment]
        self.catalog: Catalog = None  # type: ignore[assignment]
        self.compiler: Compiler = None  # type: ignore[assignment]
        self._write_lock = threading.RLock()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        database_url: str | None = None,
        milvus_uri: str | None = None,
        milvus_token: str | None = None,
        allocation: str = "contiguous",
        policy_attrs: Iterable[str] | None = None,
        create: bool = True,
    ) -> "PermRAG":
        """Open (creating if needed) the store under ``home``."""
        settings = config.resolve(home, database_url, milvus_uri, milvus_token)
        config.ensure_home(settings, create=create)
        rag = cls(settings, allocation=allocation, policy_attrs=policy_attrs)
        rag._connect()
        return rag

    def _connect(self) -> None:
        self._engine = db.make_engine(self.settings.database_url)
        db.init_schema(self._engine)
        self.catalog = Catalog(self._engine, allocation=self._allocation, policy_attrs=self._policy_attrs)
        self.policy = Policy(self._engine)
        self.compiler = Compiler(self.catalog, self.policy)
        try:
            self.catalog.load()
            self.policy.load()
        except SQLAlchemyError as exc:
            raise ConfigError(f"cannot read the permrag database: {exc}") from exc

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> "PermRAG":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ versions
    @property
    def policy_version(self) -> int:
        return self.policy.version

    @property
    def catalog_version(self) -> int:
        return self.catalog.version

    def sync(self) -> bool:
        """Reload what another process changed; True if anything was reloaded.

        One small query; the search path calls it before every query so that a
        revoke committed anywhere holds for the next search everywhere.
        """
        try:
            with self._engine.connect() as conn:
                counters = db.read_counters(conn)
        except SQLAlchemyError as exc:
            raise BackendError(f"cannot read the policy version: {exc}") from exc
        changed = False
        if counters["catalog_version"] != self.catalog.version:
            self.catalog.load()
            self.compiler.clear()
            changed = True
        if counters["policy_version"] != self.policy.version:
            self.policy.load()
            changed = True
        return changed

    # ------------------------------------------------------------------ rows
    def add_documents(self, docs: Sequence[Mapping[str, Any]], *, tenant: str | None = None) -> list[int]:
        """Ingest documents; returns their row IDs in input order.

        Each doc: ``external_id``, optional ``text``, ``tenant``, ``attrs``,
        ``parent``, ``derived_from``. Nothing is written if any doc is invalid.
        """
        specs = [row_spec(d, tenant or DEFAULT_TENANT) for d in docs]
        with self._write_lock:
            ids, changes = self.catalog.add(specs)
            self.compiler.on_ingest(changes)
        return ids

    def rows(self, row_ids: Iterable[int]) -> list[RowRecord]:
        """Catalog records of ``row_ids``, in order."""
        return self.catalog.rows(row_ids)

    def row(self, external_id: str, tenant: str = DEFAULT_TENANT) -> RowRecord:
        return self.catalog.by_external_id(external_id, tenant)

    # ------------------------------------------------------------------ permissions
    def visible(self, user: str, tenant: str = DEFAULT_TENANT) -> FrozenBitMap:
        """Row IDs ``user`` may read in ``tenant`` (empty for unknown users)."""
        if not isinstance(user, str) or not isinstance(tenant, str):
            raise PermragError("user and tenant must be strings")
        return self.compiler.visible(user, tenant)

    def can_read(self, user: str, external_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        return self.row(external_id, tenant).row_id in self.visible(user, tenant)

    def explain(self, user: str, external_id: str, tenant: str = DEFAULT_TENANT) -> Explanation:
        """Whether ``user`` may read the row, and the role path and rule that decide it."""
        return explain_row(self.policy, self.catalog, user, self.row(external_id, tenant))

    def enforcer(self) -> Any:
        """A casbin ``Enforcer`` over the stored rules (for cross-checks and tools)."""
        from .enforcer import build_enforcer

        return build_enforcer(self._engine)
