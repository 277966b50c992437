"""What crash repair reports, and how a dead writer is told from a live one.

Two-phase ingest (catalog/journal.py) records each batch's writer: host, PID
and the process's start time (against PID reuse). A batch whose writer is
gone is repaired by :mod:`permrag.ingest.reconcile`; this module only knows
processes and reports, so every layer can use it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RepairReport:
    """What a reconcile repaired (and, with ``full``, what it checked)."""

    pending_removed: int = 0  # rows of interrupted ingests, removed from Milvus and the catalog
    deleted_purged: int = 0  # retired rows whose deletion had not finished
    orphans_removed: int = 0  # Milvus rows without a catalog entry (full only)
    missing: list[int] = field(default_factory=list)  # live rows Milvus lacks (full only)
    full: bool = False  # whether every Milvus row ID was compared with the catalog

    @property
    def repaired(self) -> bool:
        return bool(self.pending_removed or self.deleted_purged or self.orphans_removed)

    def merge(self, other: RepairReport | None) -> RepairReport:
        """This report plus ``other`` (e.g. what opening the store already repaired)."""
        if other is None:
            return self
        return RepairReport(
            self.pending_removed + other.pending_removed,
            self.deleted_purged + other.deleted_purged,
            self.orphans_removed + other.orphans_removed,
            sorted(set(self.missing) | set(other.missing)),
            self.full or other.full,
        )

    def describe(self) -> str:
        text = f"{self.pending_removed} rows of interrupted ingests removed, {self.deleted_purged} deleted rows purged"
        if self.full:
            text += f", {self.orphans_removed} orphan Milvus rows removed"
            if self.missing:
                text += f"; {len(self.missing)} live rows missing from Milvus (ingest them again)"
            else:
                text += "; every live row is in Milvus"
        else:
            text += " (Milvus was not scanned for orphans: use --full)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "pending_removed": self.pending_removed,
            "deleted_purged": self.deleted_purged,
            "orphans_removed": self.orphans_removed if self.full else None,
            "missing": self.missing if self.full else None,
            "full": self.full,
        }


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if none runs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        if not os.path.isdir("/proc"):  # no procfs: fall back to "does it exist"
            try:
                os.kill(pid, 0)
                return 0
            except ProcessLookupError:
                return None
            except PermissionError:
                return 0
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def owner() -> tuple[str, int, int]:
    """This process as a batch writer: host, PID, start time."""
    pid = os.getpid()
    return socket.gethostname(), pid, process_start(pid) or 0


def writer_alive(host: str, pid: int, pid_start: int, started: float, now: float, stale_after: float) -> bool:
    """Whether the writer of a batch may still be running.

    On this host the PID and its start time decide; another host's batch
    counts as alive until ``stale_after`` seconds after it started.
    """
    if pid < 0:
        return False  # abandoned by its writer
    if host != socket.gethostname():
        return now - started < stale_after
    start = process_start(pid)
    return start is not None and (pid_start == 0 or start == pid_start)
