"""An immutable mapping that a write can change without copying it whole.

The catalog's in-memory index is a snapshot that searches read while a
write builds the next one (catalog/index.py). An attribute such as
``source`` has a value per file; copying its whole map for each write would
make a write's cost grow linearly with the store. A :class:`Layered` map is a base dict that is never changed and a
small top layer of the values changed since (``None``: removed): a write
copies the top layer alone, and folds it into a new base once it holds a
sixteenth of the base, so the copying per write stays a small share of the
map (amortised, about 1/16 of it plus the layer).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

V = TypeVar("V")
MIN_LAYER = 256  # values kept on top before a fold, whatever the base's size


class Layered(Mapping[str, V]):
    __slots__ = ("_base", "_top", "_len")

    def __init__(self, base: Mapping[str, V] | None = None, top: dict[str, V | None] | None = None, length: int | None = None) -> None:
        self._base: Mapping[str, V] = base if base is not None else {}
        self._top: dict[str, V | None] = top or {}
        self._len = length if length is not None else sum(1 for _ in self)

    def __getitem__(self, key: str) -> V:
        if key in self._top:
            value = self._top[key]
            if value is None:
                raise KeyError(key)
            return value
        return self._base[key]

    def get(self, key: str, default: Any = None) -> Any:  # the hot path: one or two dict lookups
        if key in self._top:
            value = self._top[key]
            return default if value is None else value
        return self._base.get(key, default)

    def __contains__(self, key: object) -> bool:
        if key in self._top:
            return self._top[key] is not None
        return key in self._base

    def __iter__(self) -> Iterator[str]:
        top = self._top
        for key in self._base:
            if key not in top:
                yield key
        for key, value in top.items():
            if value is not None:
                yield key

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"Layered({dict(self.items())!r})"

    def changed(self, changes: Mapping[str, V | None]) -> Layered[V]:
        """A new map with ``changes`` applied (None removes a key); this one is left as it is."""
        top = dict(self._top)
        length = self._len
        for key, value in changes.items():
            length += (value is not None) - (key in self)
            top[key] = value
        if len(top) > max(MIN_LAYER, len(self._base) // 16):
            base = {k: v for k, v in self._base.items() if k not in top}
            base.update((k, v) for k, v in top.items() if v is not None)
            return Layered(base, None, length)
        return Layered(self._base, top, length)
