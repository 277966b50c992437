"""The schema of permrag 0.2.0.

The first release whose stores later versions open; a store that release
made carries no revision and is stamped at this one.

Frozen: these are the tables as 0.2.0 defined them, never permrag.storage.db's
(which moves on); a later change is a later revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
additive = True  # from nothing: only tables are added


def upgrade() -> None:
    _catalog()
    _policy()
    _operations()


def _catalog() -> None:
    op.create_table("permrag_meta", sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.BigInteger, nullable=False))
    op.create_table("permrag_settings", sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text, nullable=False))
    op.create_table(
        "permrag_tenants",
        sa.Column("tenant", sa.String(256), primary_key=True),
        sa.Column("no", sa.BigInteger, nullable=False, unique=True),
    )
    op.create_table(
        "permrag_rows",
        sa.Column("row_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("tenant", sa.String(256), nullable=False),
        sa.Column("external_id", sa.String(1024), nullable=False),
        sa.Column("live_key", sa.String(1024), nullable=True),
        sa.Column("attrs", sa.JSON, nullable=False),
        sa.Column("parent", sa.String(1024), nullable=True),
        sa.Column("derived_from", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("vclass", sa.BigInteger, nullable=False),
        sa.Column("ingest_id", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("tenant", "live_key", name="uq_permrag_rows_live"),
    )
    op.create_index("ix_permrag_rows_ext", "permrag_rows", ["tenant", "external_id"])
    op.create_index("ix_permrag_rows_parent", "permrag_rows", ["tenant", "parent"])
    op.create_index("ix_permrag_rows_state", "permrag_rows", ["state"])
    op.create_table(
        "permrag_attr_index",
        sa.Column("tenant", sa.String(256), primary_key=True),
        sa.Column("attr", sa.String(256), primary_key=True),
        sa.Column("value", sa.String(1024), primary_key=True),
        sa.Column("bitmap", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "permrag_id_blocks",
        sa.Column("tenant", sa.String(256), primary_key=True),
        sa.Column("class_key", sa.String(64), primary_key=True),
        sa.Column("class_id", sa.BigInteger, nullable=False),
        sa.Column("next_id", sa.BigInteger, nullable=False),
        sa.Column("end_id", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "permrag_class_groups",
        sa.Column("tenant", sa.String(256), primary_key=True),
        sa.Column("signature", sa.String(64), primary_key=True),
        sa.Column("grp", sa.Integer, nullable=False),
        sa.Column("tokens", sa.Text, nullable=False),
    )


def _policy() -> None:
    op.create_table("permrag_roles", sa.Column("tenant", sa.String(256), primary_key=True), sa.Column("name", sa.String(256), primary_key=True))
    op.create_table(
        "permrag_casbin_rule",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ptype", sa.String(8), nullable=False),
        *(sa.Column(f"v{i}", sa.String(1024), nullable=False) for i in range(3)),
        *(sa.Column(f"v{i}", sa.String(1024), nullable=True) for i in range(3, 6)),
    )
    op.create_index("ix_permrag_casbin_rule", "permrag_casbin_rule", ["ptype", "v0", "v1"])


def _operations() -> None:
    op.create_table(
        "permrag_ingests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("pid_start", sa.BigInteger, nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("row_ids", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "permrag_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("tenant", sa.String(256), nullable=True),
        sa.Column("policy_version", sa.BigInteger, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_permrag_audit_user", "permrag_audit", ["user", "ts"])
    op.create_table(
        "permrag_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user", sa.String(256), nullable=False),
        sa.Column("tenant", sa.String(256), nullable=False),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("revoked", sa.Float, nullable=True),
    )
    op.create_table(
        "permrag_sync",
        sa.Column("tenant", sa.String(256), primary_key=True),
        sa.Column("root", sa.String(1024), primary_key=True),
        sa.Column("external_id", sa.String(1024), primary_key=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("meta_hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("permrag stores are not downgraded: restore a backup taken before the upgrade")
