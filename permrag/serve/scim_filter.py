"""SCIM filters (RFC 7644 §3.4.2.2), the subset permrag answers, parsed by hand.

Supported: ``attrPath op value`` with ``eq``, ``ne``, ``co``, ``sw``, ``ew``,
``attrPath pr``, joined by ``and`` / ``or`` (``and`` binds tighter). An
attribute path is ``name`` or ``name.sub`` (a multi-valued attribute matches
when any of its values does), optionally after its schema URN. Values are
JSON strings, numbers, ``true``, ``false`` or ``null``. Everything else —
``not``, parentheses, ``gt``/``ge``/``lt``/``le``, ``[...]`` value filters —
is refused with :class:`FilterError` (SCIM ``invalidFilter``), never ignored:
a filter that silently matched more than asked would hand a provisioning
client resources it did not ask for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

CASE_EXACT = frozenset({"id", "externalid", "meta.version"})
OPERATORS = frozenset({"eq", "ne", "co", "sw", "ew", "pr"})
REFUSED = frozenset({"gt", "ge", "lt", "le", "not"})
MAX_FILTER = 2000
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[^\s"()\[\]]+)|(?P<other>[()\[\]]))')
URN = "urn:ietf:params:scim:schemas:"


class FilterError(ValueError):
    """A filter permrag cannot answer exactly (SCIM ``invalidFilter``)."""


@dataclass(frozen=True)
class Compare:
    path: str  # lower-cased, schema URN removed: "username", "members.value"
    op: str
    value: Any = None


def attribute_path(text: str) -> str:
    """``urn:…:User:userName`` / ``userName`` → ``username`` (lower case, no URN)."""
    name = text
    if name.lower().startswith(URN):
        name = name.rsplit(":", 1)[1]
    if not re.fullmatch(r"\$?[A-Za-z][\w$-]*(\.[A-Za-z][\w$-]*)?", name):
        raise FilterError(f"{text!r} is not an attribute path")
    return name.lower()


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FilterError(f"cannot read the filter at {text[pos : pos + 20]!r}")
        kind = m.lastgroup or "other"
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _value(kind: str, text: str) -> Any:
    if kind == "str":
        try:
            return json.loads(text)
        except ValueError:
            raise FilterError(f"bad string {text!r} in the filter") from None
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "null":
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise FilterError(f"{text!r} is not a value (strings are quoted)") from None


def parse(text: str) -> list[list[Compare]]:
    """A filter as OR of ANDs of comparisons."""
    if not isinstance(text, str) or not text.strip():
        raise FilterError("the filter is empty")
    if len(text) > MAX_FILTER:
        raise FilterError(f"the filter is longer than {MAX_FILTER} characters")
    toks = _tokens(text)
    groups: list[list[Compare]] = [[]]
    i = 0
    while True:
        if i >= len(toks) or toks[i][0] != "word":
            found = toks[i][1] if i < len(toks) else "the end"
            if found in ("(", ")", "[", "]"):
                raise FilterError("grouping with parentheses or [ ] is not supported")
            raise FilterError(f"expected an attribute, found {found!r}")
        if toks[i][1].lower() in REFUSED:
            raise FilterError(f"operator {toks[i][1]!r} is not supported (supported: eq, ne, co, sw, ew, pr, and, or)")
        path = attribute_path(toks[i][1])
        if i + 1 >= len(toks) or toks[i + 1][0] != "word":
            raise FilterError(f"expected an operator after {toks[i][1]!r}")
        op = toks[i + 1][1].lower()
        if op not in OPERATORS:
            raise FilterError(f"operator {toks[i + 1][1]!r} is not supported (supported: eq, ne, co, sw, ew, pr, and, or)")
        if op == "pr":
            groups[-1].append(Compare(path, op))
            i += 2
        else:
            if i + 2 >= len(toks) or toks[i + 2][0] == "other":
                raise FilterError(f"expected a value after {toks[i + 1][1]!r}")
            groups[-1].append(Compare(path, op, _value(*toks[i + 2])))
            i += 3
        if i >= len(toks):
            return groups
        joiner = toks[i][1].lower() if toks[i][0] == "word" else toks[i][1]
        if joiner == "or":
            groups.append([])
        elif joiner != "and":
            raise FilterError(f"expected 'and' or 'or', found {toks[i][1]!r}")
        i += 1


def _values(doc: dict[str, Any], path: str) -> list[Any]:
    """Every value at ``path`` (names compared without case)."""
    head, _, sub = path.partition(".")
    found = [v for k, v in doc.items() if k.lower() == head]
    if not found or found[0] is None:
        return []
    items = found[0] if isinstance(found[0], list) else [found[0]]
    if not sub:
        return items
    out = []
    for item in items:
        if isinstance(item, dict):
            out += [v for k, v in item.items() if k.lower() == sub and v is not None]
    return out


def _test(c: Compare, value: Any) -> bool:
    if c.op == "pr":
        return value not in (None, "", [], {})
    if isinstance(value, bool) or isinstance(c.value, bool) or c.value is None or not isinstance(value, str):
        return c.op in ("eq", "ne") and ((value == c.value) == (c.op == "eq"))
    if not isinstance(c.value, str):
        return False
    a, b = (value, c.value) if c.path in CASE_EXACT else (value.casefold(), c.value.casefold())
    return {"eq": a == b, "ne": a != b, "co": b in a, "sw": a.startswith(b), "ew": a.endswith(b)}[c.op]


def matches(groups: list[list[Compare]], doc: dict[str, Any]) -> bool:
    """Whether the resource ``doc`` (its SCIM JSON) passes the filter."""
    for group in groups:
        ok = True
        for c in group:
            values = _values(doc, c.path)
            if c.op == "pr":
                hit = any(_test(c, v) for v in values)
            elif c.op == "ne":
                hit = not any(_test(Compare(c.path, "eq", c.value), v) for v in values)
            else:
                hit = any(_test(c, v) for v in values) or (not values and c.op == "eq" and c.value is None)
            if not hit:
                ok = False
                break
        if ok:
            return True
    return False


NARROWING = {"User": {"id": "id", "username": "userName", "externalid": "externalId"}, "Group": {"id": "id", "displayname": "displayName", "externalid": "externalId"}}


def narrowing(groups: list[list[Compare]] | None, kind: str) -> tuple[str, str] | None:
    """(attribute, value) of an ``eq`` every match must pass (a filter without
    ``or``), on an attribute the store looks up directly; None: read them all.
    Its candidates are then filtered in full, so it only has to be a superset."""
    if groups is None or len(groups) != 1:
        return None
    for c in groups[0]:
        attr = NARROWING[kind].get(c.path)
        if c.op == "eq" and attr is not None and isinstance(c.value, str):
            return attr, c.value
    return None
