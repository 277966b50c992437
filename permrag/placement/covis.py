"""Co-visibility placement: classes that the same role rules select share a
class group (a Milvus partition, placement/layout.py).

A grouped collection keeps a row of class ``c`` in partition ``g<c mod N>``.
Handed out in order of first appearance, class IDs spread classes over the
groups regardless of who sees them, so a role that sees half the rows finds
about half of every group visible and its search scans every partition with
a residual filter: no faster than a flat collection. Placed by
co-visibility, a new class gets the ID ``c ≡ g (mod N)`` of the group ``g``
its *signature* owns — the role rules that select it under the policy of the
moment (placement/signature.py) — so a role's rows fill whole groups and its
search names them with no filter, as over a silo of its own.

* The first ``N`` distinct signatures of a tenant get a group each; a later
  one shares the group of the most similar known signature (Jaccard over the
  tokens). The mapping is stored (``permrag_class_groups``) in the
  transaction that allocates the class, which already holds the row-ID
  counter's lock: one allocation at a time across processes, so a signature
  never gets two groups. (A mapping whose class never got a live row is
  harmless: it only reserves a group.)
* Finding the nearest costs what shares a token with the new signature:
  each process keeps the tenant's signatures with an index token →
  signatures, refreshed when the stored count or the map's version
  (``placement_version``, bumped by a regroup) differs, so an ACL-heavy
  store with thousands of signatures does not compare each new one with
  every other.
* ``rag.regroup()`` (placement/repartition.py) rebuilds the map from the classes
  live now under the policy of now and moves the rows outside their group;
  other processes see the new map through ``placement_version``.
* Class IDs skip at most ``N - 1`` numbers per new class; they are 64-bit.
* Placement never decides visibility: a plan checks every class against the
  caller's bitmap (search/planner.py) and every hit is verified. A policy
  that changes after a class was placed leaves it where it is (a row moves
  only in a regroup): that class's group becomes partly visible, a residual
  filter runs there, and answers stay exact.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ..domain.acl import Acl
from ..domain.names import class_key
from ..errors import ConfigError
from ..storage import db, direct
from .layout import DEFAULT_GROUPS

Signer = Callable[[str, Mapping[str, Any], "Acl | None"], "Sequence[str] | None"]
GROUP_BY = ("class", "visibility", "visibility+acl")
POSTINGS = 64  # signatures a token lists for _nearest: the first to carry it (they own the groups; later ones joined theirs)
DEFAULT_GROUP_BY = "visibility+acl"  # a store given no layout: classes by co-visibility, ACLs included
LAYOUT_SETTING = "layout"  # {"groups": N, "group_by": ...}: what the store was last opened with


def check_layout(groups: int, group_by: str | None) -> None:
    """``partition_by`` as given to ``PermRAG.open`` (``groups``: the partitions the backend will use)."""
    if group_by is not None and group_by not in GROUP_BY:
        raise ConfigError(f"partition_by must be 'class', 'visibility' or 'visibility+acl', not {group_by!r}")
    if group_by not in (None, "class") and not groups:
        raise ConfigError(f"partition_by={group_by!r} places rows in partitions by class: give partitions=N (N > 0) too")


def layout_placement(engine: Any, given: tuple[int | None, str | None], backend_options: dict[str, Any], signer: Callable[[], Signer], kind: str) -> Placement | None:
    """The layout of this process: the ``groups`` and ``group_by`` it was given,
    recorded in the store (settings ``layout``); if it was given neither, the
    recorded ones — so every process of a store (the CLI, a worker opened
    with defaults) groups new collections and places new classes alike. A
    store that records none and is given none chooses the backend's default
    (``DEFAULT_GROUPS`` partitions by co-visibility, ACLs included; one
    partition under an ANN index) and records it. ``kind``: the backend's (``"lite"`` or ``"server"``).
    Sets ``backend_options["groups"]``; returns the co-visibility placement, if any."""
    groups, group_by = given
    with db.transaction(engine, "reading the store's layout") as conn:
        raw = db.get_setting(conn, LAYOUT_SETTING)
        stored = json.loads(raw) if raw else None
        if groups is None and group_by is None and stored is not None:
            groups, group_by = stored["groups"], stored["group_by"]
        else:
            if groups is None:  # (an ANN index stays flat: placement/layout.py)
                groups = DEFAULT_GROUPS[kind] if backend_options.get("index", "FLAT") == "FLAT" else 0
            group_by = group_by or (DEFAULT_GROUP_BY if given == (None, None) and groups else "class")
            mine = {"groups": groups, "group_by": group_by}
            if mine != stored:
                db.set_setting(conn, LAYOUT_SETTING, json.dumps(mine))
    backend_options["groups"] = groups
    if group_by in (None, "class"):
        return None
    if not groups:  # check_layout refuses this at open
        raise ConfigError(f"partition_by={group_by!r} places rows in partitions by class: give partitions=N (N > 0) too")
    return Placement(int(groups), signer(), acls=group_by == "visibility+acl")


class _Known:
    """One tenant's stored signatures, as this process last read them."""

    def __init__(self) -> None:
        self.sigs: dict[str, tuple[int, frozenset[str]]] = {}  # signature key → (group, tokens)
        self.by_token: dict[str, list[str]] = defaultdict(list)
        self.empty_groups: set[int] = set()  # groups of the empty signature (at most one)
        self.used: set[int] = set()  # groups some signature owns
        self.free = 0  # no group below it is free
        self.version = -1  # the map's placement_version when read (a regroup rewrites the map)


class Placement:
    """Class IDs by co-visibility for a store whose collections have ``groups`` groups."""

    def __init__(self, groups: int, signer: Signer, acls: bool = False) -> None:
        if groups <= 0:
            raise ValueError("co-visibility placement needs groups > 0")
        self.groups = groups
        self.signer = signer
        self.acls = acls  # rows' ACLs in the class key and the signature (group_by="visibility+acl")
        self._known: dict[str, _Known] = {}
        self._lock = threading.Lock()

    def class_id(self, conn: Connection, tenant: str, attrs: Mapping[str, Any], acl: Acl | None = None) -> int:
        """A fresh class ID in the group of the signature of ``attrs`` and ``acl``."""
        return self.class_ids(conn, [(tenant, attrs, acl)])[0]

    def class_ids(self, conn: Connection, wanted: Sequence[tuple[str, Mapping[str, Any], Acl | None]]) -> list[int]:
        """Fresh class IDs for new classes (tenant, attrs, acl), each in the group
        of its signature (a signature the policy could not give, as it changed
        meanwhile: the next ID, placed as usual). A few statements for all of
        them: the caller holds the allocation lock, so the tenant's stored
        signatures are read (when changed) once, new ones written in one
        insert, and the class counter bumped once."""
        start = cur = db.read_counter(conn, "next_class_id")
        fresh: list[dict[str, Any]] = []
        known: dict[str, _Known] = {}
        out = []
        for tenant, attrs, acl in wanted:
            tokens = self.signer(tenant, attrs, acl if self.acls else None)
            if tokens is not None:
                if tenant not in known:
                    known[tenant] = self._refresh(conn, tenant)
                g = self._group(known[tenant], tenant, tuple(tokens), fresh)
                cur += (g - cur) % self.groups
            out.append(cur)
            cur += 1
        if fresh:
            direct.insert_many(conn, db.class_groups, ("tenant", "signature", "grp", "tokens"), [tuple(r.values()) for r in fresh])
        if cur != start:
            db.bump(conn, "next_class_id", cur - start)
        return out

    def _group(self, known: _Known, tenant: str, tokens: tuple[str, ...], fresh: list[dict[str, Any]]) -> int:
        """The group of a signature, assigned on first sight (its row added to ``fresh``)."""
        key = class_key(["covis", list(tokens)])
        found = known.sigs.get(key)
        if found is not None:
            return found[0]
        free = next((g for g in range(known.free, self.groups) if g not in known.used), None)
        g = free if free is not None else _nearest(known, frozenset(tokens))
        known.free = free if free is not None else self.groups
        fresh.append({"tenant": tenant, "signature": key, "grp": g, "tokens": json.dumps(list(tokens))})
        with self._lock:
            _add(known, key, g, frozenset(tokens))
        return g

    def replan(self, conn: Connection, tenant: str, classes: Sequence[tuple[int, tuple[str, ...], int]], write: bool = True) -> dict[tuple[str, ...], int]:
        """A new signature → group map for the tenant's live classes under the
        policy of now (``classes``: class ID, signature tokens, live rows; a
        regroup, placement/repartition.py). Largest signature first, each keeps the
        group that holds most of its rows unless a larger one took it, else
        takes the lowest free group, else the nearest's — so a settled store
        gets the map it has, and nothing moves. ``write``: stored in place of
        the old map (with ``placement_version`` bumped: every process reads
        it again). The caller holds the allocation lock."""
        rows: dict[tuple[str, ...], int] = defaultdict(int)
        where: dict[tuple[str, ...], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for cid, tokens, n in classes:
            rows[tokens] += n
            where[tokens][cid % self.groups] += n
        known = _Known()
        claimed: set[int] = set()
        free = 0  # no group below it is free (groups are only ever claimed)
        out: dict[tuple[str, ...], int] = {}
        for tokens in sorted(rows, key=lambda tk: (-rows[tk], tk)):
            home = max(where[tokens].items(), key=lambda gn: (gn[1], -gn[0]))[0]
            while free in claimed:
                free += 1
            if home not in claimed:
                g = home
            elif free < self.groups:
                g = free
            else:
                g = _nearest(known, frozenset(tokens))
            claimed.add(g)
            _add(known, class_key(["covis", list(tokens)]), g, frozenset(tokens))
            out[tokens] = g
        if write:
            t = db.class_groups
            conn.execute(t.delete().where(t.c.tenant == tenant))
            for part in db.chunks([{"tenant": tenant, "signature": class_key(["covis", list(tk)]), "grp": g, "tokens": json.dumps(list(tk))} for tk, g in out.items()]):
                conn.execute(t.insert(), list(part))
            db.bump(conn, "placement_version")
            with self._lock:
                self._known.pop(tenant, None)
        return out

    def _refresh(self, conn: Connection, tenant: str) -> _Known:
        """The tenant's stored signatures (read again only when their count or the map's version changed)."""
        t = db.class_groups.c
        with self._lock:
            known = self._known.setdefault(tenant, _Known())
        stored = conn.execute(select(func.count()).select_from(db.class_groups).where(t.tenant == tenant)).scalar_one()
        version = db.read_counter(conn, "placement_version")
        if stored != len(known.sigs) or version != known.version:
            fresh = _Known()
            fresh.version = version
            for sig, g, toks in conn.execute(select(t.signature, t.grp, t.tokens).where(t.tenant == tenant)):
                _add(fresh, sig, int(g) % self.groups, frozenset(json.loads(toks)))
            with self._lock:
                self._known[tenant] = known = fresh
        return known


def _add(known: _Known, sig: str, g: int, tokens: frozenset[str]) -> None:
    if sig in known.sigs:
        return
    known.sigs[sig] = (g, tokens)
    known.used.add(g)
    for tok in tokens:
        posted = known.by_token[tok]
        if len(posted) < POSTINGS:
            posted.append(sig)
    if not tokens:
        known.empty_groups.add(g)


def _nearest(known: _Known, mine: frozenset[str]) -> int:
    """Every group taken: the group of the most similar known signature
    (Jaccard over the tokens; ties: the lower group). Only signatures that
    share a token (or, for the empty signature, the empty one) can score
    above 0; with none, every known signature ties at 0: the lowest group."""
    best = (0.0, min(known.used))
    if not mine:
        return min(known.empty_groups) if known.empty_groups else best[1]
    shared: dict[str, int] = defaultdict(int)
    for tok in mine:
        for sig in known.by_token.get(tok, ()):
            shared[sig] += 1
    for sig, n in shared.items():
        g, toks = known.sigs[sig]
        score = n / (len(mine) + len(toks) - n)
        if score > best[0] or (score == best[0] and g < best[1]):
            best = (score, g)
    return best[1]
