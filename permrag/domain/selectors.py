"""Row selectors: the object part of a permission rule.

A selector is one of

* ``*`` — every row of the tenant;
* ``doc:<external_id>`` — the row with that external id, and every chunk whose
  parent is that id;
* ``<attr>:<value>`` — rows whose attribute ``attr`` has ``value`` (for a
  list-valued attribute: any of its values). ``*`` in the value is a glob
  matching any run of characters, including none; nothing else is special.

The compiler resolves selectors through the catalog's inverted index; the
per-row :func:`Selector.matches` is what casbin's matcher and ``explain`` use.
Both must agree, and the oracle tests check that they do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from ..errors import SelectorError
from .names import ATTR_NAME, MAX_ID, problem

AttrValue = str | Sequence[str]


@dataclass(frozen=True)
class Selector:
    """A parsed selector. ``kind`` is ``"all"``, ``"doc"`` or ``"attr"``."""

    kind: str
    attr: str = ""
    value: str = ""

    @property
    def is_glob(self) -> bool:
        return self.kind == "attr" and "*" in self.value

    def __str__(self) -> str:
        if self.kind == "all":
            return "*"
        if self.kind == "doc":
            return f"doc:{self.value}"
        return f"{self.attr}:{self.value}"

    def matches_value(self, value: str) -> bool:
        """Whether one attribute value matches (attr selectors only)."""
        if not self.is_glob:
            return value == self.value
        return _glob(self.value).fullmatch(value) is not None

    def matches(self, external_id: str, attrs: Mapping[str, AttrValue], parent: str | None = None) -> bool:
        """Whether a row with these fields is selected (tenant not checked)."""
        if self.kind == "all":
            return True
        if self.kind == "doc":
            return external_id == self.value or parent == self.value
        values = attrs.get(self.attr)
        if values is None:
            return False
        if isinstance(values, str):
            return self.matches_value(values)
        return any(self.matches_value(v) for v in values)


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.S)


@lru_cache(maxsize=65536)
def parse_selector(text: str) -> Selector:
    """Parse ``text`` or raise :class:`SelectorError` saying why not."""
    why = problem(text, MAX_ID)
    if why is not None:
        raise SelectorError(f"selector {text!r} {why}")
    if text == "*":
        return Selector("all")
    name, sep, value = text.partition(":")
    if not sep:
        raise SelectorError(f"malformed selector {text!r}: expected '*', 'doc:<external_id>' or '<attr>:<value>'")
    if not value:
        raise SelectorError(f"malformed selector {text!r}: empty value after ':'")
    if name == "doc":
        return Selector("doc", value=value)
    if not ATTR_NAME.match(name):
        raise SelectorError(f"malformed selector {text!r}: {name!r} is not an attribute name")
    return Selector("attr", attr=name, value=value)
