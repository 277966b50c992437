"""The catalog database: its schema and engine (:mod:`.db`: tables,
transactions, counters and settings, the SQLite checkpointer of
:mod:`.sqlite_wal`), store creation and upgrades (:mod:`.create`, Alembic
revisions in :mod:`.migrations`), the fast path on the driver's own
connection that reads the stored versions (:mod:`.direct`), and the audit
log of every serve (:mod:`.audit`)."""
