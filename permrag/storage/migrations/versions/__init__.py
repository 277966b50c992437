"""The revisions, oldest first by their ``down_revision`` chain (read by Alembic, not imported)."""
