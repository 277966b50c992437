"""Test-only schema revisions, each after permrag's head, in a copy of
permrag's script folder (point ``permrag.storage.migrations.runner.LOCATION`` at it)."""

from __future__ import annotations

import shutil
from pathlib import Path

from permrag.storage.migrations import HEAD, runner

NEXT = f"{int(HEAD) + 1:04d}"  # the revision a newer permrag would add

HEADER = '''"""{doc}"""

import sqlalchemy as sa
from alembic import op

revision = "{next}"
down_revision = "{down}"
branch_labels = None
depends_on = None
additive = {additive}


def downgrade():
    pass

'''

# Adds a column and a table and moves a counter, then fails on the database.
FAILING = (
    HEADER.format(next=NEXT, doc="Fails midway (tests only).", down=HEAD, additive=True)
    + """
def upgrade():
    op.add_column("permrag_rows", sa.Column("half_done", sa.String(8), nullable=True))
    op.create_table("permrag_half_done", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("UPDATE permrag_meta SET value = value + 1 WHERE key = 'policy_version'")
    op.execute("SELECT no_such_column FROM permrag_rows")
"""
)

# What a newer permrag might add.
ADDING = (
    HEADER.format(next=NEXT, doc="Adds a nullable column (tests only).", down=HEAD, additive=True)
    + """
def upgrade():
    op.add_column("permrag_rows", sa.Column("newer", sa.String(8), nullable=True))
"""
)

# A change older code would misread: waits for `permrag upgrade`.
REWRITING = (
    HEADER.format(next=NEXT, doc="Rewrites the audit's events (tests only).", down=HEAD, additive=False)
    + """
def upgrade():
    op.create_index("ix_permrag_audit_event", "permrag_audit", ["event"])
    op.execute("UPDATE permrag_audit SET event = upper(event)")
"""
)


def location_with(tmp_path: Path, text: str) -> str:
    """A copy of permrag's revisions with ``text`` as revision :data:`NEXT` (a script location)."""
    location = tmp_path / "migrations"
    shutil.copytree(Path(runner.HERE) / "versions", location / "versions", ignore=shutil.ignore_patterns("__pycache__"))
    (location / "versions" / f"rev{NEXT}_test.py").write_text(text)
    return str(location)
