"""Every name and value that comes from outside, checked in one place.

Tenants, user / group / role names, external ids and attribute values reach
SQL, casbin CSV lines and Milvus rows. One rule covers them all: a non-empty
string of bounded length, without leading or trailing whitespace, without
control characters, line or paragraph separators (U+2028, U+2029, U+0085,
``\\r``: a CSV reader would split a line there) and without lone surrogates
(they cannot be stored as UTF-8). Anything else — quotes, backslashes,
commas, ``*``, any script — is allowed, because nothing here is ever written
into an expression: only integers reach Milvus filters (see search/planner).

Attribute values may be strings, integers, floats, booleans or lists of them;
they are normalised to strings once, here: ``True`` → ``"true"``, ``3`` →
``"3"``, ``0.5`` → ``"0.5"`` (Python's shortest round-trip form; ``1.0`` stays
``"1.0"``, distinct from ``"1"``), so a selector ``level:3`` matches an
attribute given as ``3`` or ``"3"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ArgumentError, CatalogError, PermragError

MAX_NAME = 256  # tenants, users, groups, roles
MAX_ID = 1024  # external ids, attribute values, selectors
ATTR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
RESERVED_ATTRS = frozenset({"doc"})
# Prefixes that name a principal's kind in CSV lines and ACL entries; no role
# may start with one, so "user:alice" can never be read as a role.
PRINCIPAL_PREFIXES = ("user:", "group:", "role:", "agent:")
KINDS = ("user", "group", "role", "agent")  # kinds of principal, in any case or width, never start a role's name
# A colon, or a character that looks like one (fullwidth, small, presentation
# form, modifier letter, ratio): "group：eng" must not pass for a role name.
_FORMS = "user:<id>, group:<id>, agent:<id>, role:<name> or a bare role name"
_COLON = re.compile("[:\uff1a\ufe55\ufe13\ua789\u2236]")
_WORD = re.compile(r"[\w\-]+\Z")
_BAD_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

AttrValue = str | list[str]


def problem(text: object, max_len: int = MAX_NAME) -> str | None:
    """Why ``text`` is not an acceptable name or value, or None."""
    if not isinstance(text, str):
        return f"must be a string, not {type(text).__name__}"
    if not text:
        return "is empty"
    if len(text) > max_len:
        return f"is longer than {max_len} characters"
    if text != text.strip():
        return "has leading or trailing whitespace"
    bad = _BAD_CHAR.search(text)
    if bad is not None:
        ch = bad.group()
        kind = "a lone surrogate" if "\ud800" <= ch <= "\udfff" else "a control or line-separator character"
        return f"contains {kind} (U+{ord(ch):04X})"
    return None


def check(what: str, value: object, *, max_len: int = MAX_NAME, error: type[PermragError] = ArgumentError) -> str:
    """``value`` if acceptable, else ``error`` naming ``what`` and why."""
    why = problem(value, max_len)
    if why is not None:
        raise error(f"{what} {_show(value)} {why}")
    return value  # type: ignore[return-value]


def check_tenant(tenant: object, error: type[PermragError] = CatalogError) -> str:
    return check("tenant", tenant, error=error)


def kind_prefix(text: str) -> str | None:
    """What stands before ``text``'s first colon-like character when it looks
    like a principal's kind — a word, in any script, case or width, maybe
    spaced: ``user``, ``Group``, ``usr``, ``grοup`` (Greek ο), ``1group``,
    ``group `` — else None."""
    colon = _COLON.search(text)
    if colon is None:
        return None
    head = text[: colon.start()]
    return head if _WORD.match(unicodedata.normalize("NFKC", head).strip()) else None


def _kind_word(text: str) -> str | None:
    """The kind ``text`` starts with (``user``, ``group``, ``role``, ``agent``), in any case or width, else None."""
    head = kind_prefix(text)
    word = None if head is None else unicodedata.normalize("NFKC", head).strip().casefold()
    return word if word in KINDS else None


def check_role(role: object, error: type[PermragError]) -> str:
    name = check("role", role, error=error)
    if _kind_word(name) is not None:
        raise error(f"role {name!r} must not start with user:, group:, role: or agent: in any case (they name principals' kinds)")
    return name


def check_id(kind: str, value: object, error: type[PermragError] = ArgumentError) -> str:
    """A user or group id: a name (see :func:`check`) that does not start like a
    principal (``user:bob``, ``group:eng``, ``usr:dave``, ``Group：eng``): stored
    as an id, such a name would make a phantom that holds what the principal
    it looks like was meant to hold — and a deny naming the real one fails open."""
    name = check(kind, value, error=error)
    head = kind_prefix(name)
    if head is not None:
        raise error(f"{kind} id {_show(name)} starts like a principal ({head!r} and a colon); give the bare {kind} id")
    return name


def check_external_id(what: str, value: object, error: type[PermragError] = CatalogError) -> str:
    return check(what, value, max_len=MAX_ID, error=error)


def check_text(what: str, text: object, error: type[PermragError] = CatalogError) -> str:
    """A document text or query: a string that UTF-8 can hold."""
    if not isinstance(text, str):
        raise error(f"{what} must be a string, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} contains a lone surrogate at position {exc.start}") from None
    return text


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


def normalize_value(name: str, value: object) -> str:
    """One attribute value as the string selectors match."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CatalogError(f"attribute {name!r} holds {value!r}; numbers must be finite")
        return repr(value)
    if isinstance(value, str):
        return check(f"attribute {name!r} value", value, max_len=MAX_ID, error=CatalogError)
    raise CatalogError(f"attribute {name!r} holds a {type(value).__name__}; use a string, number, boolean or a list of them")


def check_attrs(attrs: object) -> dict[str, AttrValue]:
    """Validate a row's attributes; returns a normalised copy (lists sorted, deduplicated)."""
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise CatalogError(f"attrs must be a mapping, not {type(attrs).__name__}")
    out: dict[str, AttrValue] = {}
    for name, value in attrs.items():
        if not isinstance(name, str) or not ATTR_NAME.match(name):
            raise CatalogError(f"attribute name {_show(name)} is not a valid name (letters, digits, _ . -)")
        if name in RESERVED_ATTRS:
            raise CatalogError(f"attribute name {name!r} is reserved")
        if isinstance(value, (list, tuple, set, frozenset)):
            out[name] = sorted({normalize_value(name, v) for v in value})
        else:
            out[name] = normalize_value(name, value)
    return out


def attr_pairs(attrs: Mapping[str, AttrValue]) -> list[tuple[str, str]]:
    """Every (attr, value) pair of a row, list values flattened."""
    pairs: list[tuple[str, str]] = []
    for name, value in attrs.items():
        if isinstance(value, str):
            pairs.append((name, value))
        else:
            pairs.extend((name, v) for v in value)
    return pairs


def principal(value: object, error: type[PermragError] = CatalogError) -> str:
    """An ACL entry's principal, normalised: ``user:<id>``, ``group:<id>``,
    ``agent:<id>`` or ``role:<name>``; a bare name is a role (as in a policy rule).

    A name that holds a colon (or a character that looks like one, such as
    the fullwidth ``：``) is an error unless it starts with exactly ``user:``,
    ``group:`` or ``role:`` — ``usr:dave``, ``bogus:x``, ``Group:eng``,
    ``grοup:eng`` (Greek ο), ``group :eng``, ``1group:eng`` are never roles:
    a misspelt kind stored as a role name would name nobody, and a deny
    entry naming nobody fails open. A role whose name holds a colon is
    written ``role:<name>``; a role's name must not start with a kind
    (``role:user:x``, ``role:Group:eng``: :func:`check_role`), nor a user's
    or group's id (``user:group:eng``: :func:`check_id`)."""
    text = check("principal", value, max_len=MAX_NAME + 6, error=error)
    colon = _COLON.search(text)
    if colon is None:
        return "role:" + check_role(text, error)
    kind, name = text[: colon.start()], text[colon.end() :]
    if colon.group() != ":":
        raise error(f"principal {_show(text)} has U+{ord(colon.group()):04X} where a kind needs a colon (:): write {_FORMS}")
    if kind not in KINDS:
        raise error(f"principal {_show(text)} has an unknown kind {kind!r}: write {_FORMS}")
    if not name:
        raise error(f"principal {text!r} names no {kind}: write {kind}:<{'name' if kind == 'role' else 'id'}>")
    return f"{kind}:{check_role(name, error) if kind == 'role' else check_id(kind, name, error)}"


def expiry(value: object, what: str, error: type[PermragError] = ArgumentError) -> float | None:
    """An ``expires_at``: None, epoch seconds, an aware ``datetime`` or an ISO 8601
    string with a time zone (``2026-12-31T00:00:00Z``); returned as epoch seconds."""
    import datetime as _dt

    if value is None:
        return None
    if isinstance(value, bool):
        raise error(f"{what} must be a time, not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise error(f"{what} must be a positive, finite epoch time, not {value!r}")
        return float(value)
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise error(f"{what} {value!r} is not an ISO 8601 time (e.g. 2026-12-31T00:00:00Z)") from None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise error(f"{what} {value.isoformat()!r} has no time zone; add one (e.g. Z or +01:00)")
        return value.timestamp()
    raise error(f"{what} must be a time, not {type(value).__name__}")


def show_time(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC (how explain and exports show expiries)."""
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat().replace("+00:00", "Z")


class Held(str):
    """A role, group or member as a listing shows it: the name (it *is* the
    string), and when holding it ends — ``expires_at``, epoch seconds; None:
    never. Listings leave out what has expired."""

    expires_at: float | None

    def __new__(cls, name: str, expires_at: float | None = None) -> Held:
        obj = super().__new__(cls, name)
        obj.expires_at = expires_at
        return obj

    def shown(self) -> str:
        """``name`` or ``name (until <ISO time>)``."""
        return str(self) if self.expires_at is None else f"{self} (until {show_time(self.expires_at)})"

    def to_json(self) -> Any:
        """``name``, or ``{"name": …, "expires_at": "<ISO time>"}`` for an expiring one."""
        return str(self) if self.expires_at is None else {"name": str(self), "expires_at": show_time(self.expires_at)}


def quote(value: str) -> str:
    """A Milvus string literal: double quotes, with ``\\`` and ``"`` escaped.

    permrag's own filters hold only integers; this is for filters it writes
    into other stores' queries (the langchain-milvus push-down).
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def as_list(value: object, what: str) -> list[Any]:
    """A list argument that must not be a lone string or mapping."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ArgumentError(f"{what} must be a list, not {type(value).__name__}")
    return list(value)


def class_key(payload: object) -> str:
    """A stable key of a JSON value: the SHA-1 of its canonical JSON (sorted
    keys, no spaces). The catalog keys visibility classes by it and
    placement keys signatures by it."""
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(raw.encode()).hexdigest()
