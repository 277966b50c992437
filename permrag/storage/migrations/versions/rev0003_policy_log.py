"""policy change log (policy/deltas.py)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
additive = True


def upgrade() -> None:
    op.create_table(
        "permrag_policy_log",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_index(op.f("ix_permrag_policy_log_ts"), "permrag_policy_log", ["ts"], unique=False)


def downgrade() -> None:
    raise NotImplementedError("permrag stores are not downgraded: restore a backup taken before the upgrade")
