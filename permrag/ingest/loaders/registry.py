"""The loader registry: file suffix → a function that reads one file.

A loader takes a path and returns a :class:`Parsed` document: its title (if
the format has one) and its text as :class:`Section` s, each with the page
and heading it comes from, so that chunks can keep them. Built-in loaders
(:mod:`.formats`) register the same way a user's do::

    from permrag.ingest.loaders import Parsed, Section, register_loader

    @register_loader(".csv")
    def read_csv(path):
        return Parsed([Section(path.read_text())])

A loader that takes a ``data`` keyword gets the file's bytes as the caller
read (and hashed) them, and should parse those rather than read the file
again; one that does not is given the path alone, and a folder sync then
checks that the file did not change while it was read.

Suffixes are matched case-insensitively (``.MD`` is Markdown). A loader
raises :class:`~permrag.errors.CatalogError` for a file it cannot read (the
folder loader reports it and goes on); any other exception is reported the
same way with its type, since parsers of real files fail in many ways.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ArgumentError


@dataclass(frozen=True)
class Section:
    """A run of text from one place of a file: ``page`` (1-based, PDFs) and
    ``heading`` (the heading path, ``"Leave > Sick leave"``) where known."""

    text: str
    page: int | None = None
    heading: str | None = None


@dataclass(frozen=True)
class Parsed:
    """What a loader read from one file."""

    sections: list[Section]
    title: str | None = None
    meta: dict[str, str | int] = field(default_factory=dict)  # extra attributes from the format (author, …)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections if s.text.strip())


Loader = Callable[[Path], Parsed]
_LOADERS: dict[str, Loader] = {}


def register_loader(*suffixes: str, loader: Loader | None = None) -> Callable[[Loader], Loader]:
    """Register ``loader`` for ``suffixes`` (``".pdf"``); usable as a decorator.
    A later registration for a suffix replaces the earlier one."""
    norm = []
    for s in suffixes:
        if not isinstance(s, str) or not s.startswith(".") or len(s) < 2:
            raise ArgumentError(f"a loader suffix is like '.pdf', not {s!r}")
        norm.append(s.lower())
    if not norm:
        raise ArgumentError("register_loader needs at least one suffix")

    def add(fn: Loader) -> Loader:
        if not callable(fn):
            raise ArgumentError(f"a loader must be callable, not {type(fn).__name__}")
        for s in norm:
            _LOADERS[s] = fn
        return fn

    if loader is not None:
        add(loader)
    return add


def unregister_loader(*suffixes: str) -> None:
    """Forget the loaders of ``suffixes`` (files with them are then skipped)."""
    for s in suffixes:
        _LOADERS.pop(s.lower(), None)


def loader_for(path: Path) -> Loader | None:
    """The loader for ``path``'s suffix, or None."""
    return _LOADERS.get(path.suffix.lower())


def takes_data(loader: Loader) -> bool:
    """Whether ``loader`` accepts the file's bytes as ``data=``."""
    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return "data" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def parse(loader: Loader, path: Path, data: bytes) -> Parsed:
    """``loader``'s reading of ``path``, from ``data`` where it takes them."""
    return loader(path, data=data) if takes_data(loader) else loader(path)  # type: ignore[call-arg]


def suffixes() -> list[str]:
    """Every registered suffix, sorted."""
    return sorted(_LOADERS)
