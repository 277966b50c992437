"""Agents acting for users: audit and tokens get agent, tokens get scopes.

All three columns are nullable: rows written before mean "no agent" and
"every search tool".

A column is added only where it is missing: stores made by the development
code between 0.2.0 and the first Alembic revision got these columns at open,
without a revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
additive = True  # nullable columns: a process still running 0.2.0 reads and writes the store as before

COLUMNS = [
    ("permrag_audit", sa.Column("agent", sa.String(256), nullable=True)),
    ("permrag_tokens", sa.Column("agent", sa.String(256), nullable=True)),
    ("permrag_tokens", sa.Column("scopes", sa.String(256), nullable=True)),
]


def upgrade() -> None:
    found = sa.inspect(op.get_bind())
    for table, column in COLUMNS:
        if column.name not in {c["name"] for c in found.get_columns(table)}:
            op.add_column(table, column)


def downgrade() -> None:
    raise NotImplementedError("permrag stores are not downgraded: restore a backup taken before the upgrade")
