"""A new revision, written from the difference between permrag.storage.db's tables
and the revisions (for developers)::

    python -m permrag.storage.migrations.author "what changed"

Every revision runs on an empty in-memory SQLite database, Alembic's
autogenerate compares the result with :data:`permrag.storage.db.metadata`, and the
operations it finds become ``versions/revNNNN_<slug>.py``, with ``additive``
set when they only add (tables, nullable columns, indexes). Review the file
(autogenerate sees no renames and no data changes), then set
:data:`permrag.storage.migrations.HEAD` to its revision.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from alembic.autogenerate import produce_migrations, render_python_code
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine

from ..db import metadata
from . import VERSION_TABLE, runner

TEMPLATE = '''"""{message}."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None
additive = {additive}


def upgrade() -> None:
    {body}


def downgrade() -> None:
    raise NotImplementedError("permrag stores are not downgraded: restore a backup taken before the upgrade")
'''


def changes(target: MetaData = metadata, *, location: str | None = None) -> ops.UpgradeOps:
    """What the revisions under ``location`` leave out of ``target``."""
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            runner.run(conn, runner.plan(conn, "a scratch database", location=location), location=location)
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
            found = produce_migrations(ctx, target).upgrade_ops
    finally:
        engine.dispose()
    return found if found is not None else ops.UpgradeOps(ops=[])


def additive(found: ops.UpgradeOps) -> bool:
    """Whether every operation only adds: a table, a nullable column, an index."""
    for op in found.ops:
        for each in op.ops if isinstance(op, ops.ModifyTableOps) else [op]:
            if isinstance(each, ops.AddColumnOp) and not each.column.nullable:
                return False
            if not isinstance(each, (ops.CreateTableOp, ops.AddColumnOp, ops.CreateIndexOp)):
                return False
    return True


def write(message: str, target: MetaData = metadata, *, location: str | None = None) -> Path | None:
    """The new revision's file (None: the revisions already make ``target``)."""
    found = changes(target, location=location)
    if found.is_empty():
        return None
    down = runner.head(location)
    number = f"{int(down) + 1:04d}"
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40] or "change"
    body = "\n".join(line for line in render_python_code(found).splitlines() if not line.lstrip().startswith("# ###")).strip()
    path = Path(location or runner.LOCATION) / "versions" / f"rev{number}_{slug}.py"
    text = TEMPLATE.format(message=message.strip().rstrip("."), revision=number, down=down, additive=additive(found), body=body)
    path.write_text(text, encoding="utf-8")
    runner.forget()  # the revisions read before lack this one
    return path


if __name__ == "__main__":  # pragma: no cover - a developer's command
    if len(sys.argv) != 2:
        sys.exit('usage: python -m permrag.storage.migrations.author "what changed"')
    made = write(sys.argv[1])
    print(f"wrote {made}: review it, then set permrag.storage.migrations.HEAD to its revision" if made else "nothing to write: the revisions make permrag.storage.db's tables")
