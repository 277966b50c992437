"""LDAP directories (OpenLDAP, Active Directory, 389 DS …) → a :class:`Directory`.

The same value the export importers make (policy/directory.py), so a sync from
LDAP goes through :meth:`Identity.sync` like a file and its guards apply
unchanged: the mass-removal and deny-group checks, dry runs, one policy
version. The whole directory is read first (every page of both searches,
policy/ldap_client.py), then applied in one sync: a connection lost or a
listing cut short by a server limit raises and applies nothing, because a
partial directory would remove the memberships of everyone on the missing
pages. There is no incremental read: each sync reads everything and the sync
applies the difference to the stored state (the same state a fresh import
would leave).

An entry is keyed by its immutable id (``entryUUID``; Active Directory's
``objectGUID``, 16 bytes shown as a UUID), never by its DN, which a rename or
a move changes: rules, ACL entries and denies naming the id survive both.
Users are labelled ``uid`` (else ``sAMAccountName``, ``cn``, ``displayName``),
groups ``cn``. A user is deactivated when ``pwdAccountLockedTime`` (the
ppolicy overlay's lock) is present, Active Directory's ``userAccountControl``
has bit 2 (ACCOUNTDISABLE) or 389 DS / FreeIPA's ``nsAccountLock`` is TRUE
(policy/directory.py ``disabled``, the rule LDIF exports follow too). Memberships come from a group's ``member`` /
``uniqueMember`` DNs, from ``memberOf`` on its members, and from a
``posixGroup``'s ``memberUid``; groups nest. A reference to an entry that
neither search returned (outside the bases or filters) is left out and
reported: it names no user or group permrag knows. A ``memberUid`` several
users share refuses the read: adding all of them would widen a group's
grants, leaving them out would lift its denies.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import ConfigError, IdentityFileError
from .directory import LOCK_ATTRIBUTES, Directory, check_acyclic, disabled, name_of
from .model import GROUP_PREFIX, USER_PREFIX

USER_FILTER = "(|(objectClass=person)(objectClass=posixAccount))"
GROUP_FILTER = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group)(objectClass=posixGroup))"
ID_ATTRIBUTES = ("entryUUID", "objectGUID")
USER_LABELS = ("uid", "sAMAccountName", "cn", "displayName")
GROUP_LABELS = ("cn", "sAMAccountName", "displayName")
MEMBER_ATTRIBUTES = ("member", "uniqueMember", "memberOf", "memberUid")
STATE_ATTRIBUTES = LOCK_ATTRIBUTES
_ATTR = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z")

Entry = tuple[str, dict[str, list[bytes]]]  # (DN, lower-case attribute → raw values)
Progress = Callable[[str, int, int], None]  # (users / groups, pages read, entries read)


@dataclass(frozen=True)
class LdapSource:
    """Where and how to read a directory; checked when made, no I/O.

    ``url`` is ``ldap://HOST[:PORT]`` or ``ldaps://HOST[:PORT]``; ``base`` the DN
    searched for users and groups (``users_base`` / ``groups_base`` narrow each).
    Without ``bind_dn`` the bind is anonymous; with it, ``password`` is required.
    ``starttls`` upgrades an ``ldap://`` connection; certificates are checked
    against the system's CAs or ``ca_file``."""

    url: str
    base: str
    bind_dn: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    users_base: str | None = None
    groups_base: str | None = None
    user_filter: str = USER_FILTER
    group_filter: str = GROUP_FILTER
    id_attributes: tuple[str, ...] = ID_ATTRIBUTES
    user_labels: tuple[str, ...] = USER_LABELS
    group_labels: tuple[str, ...] = GROUP_LABELS
    page_size: int = 500
    timeout: float = 30.0
    ca_file: str | None = None

    def __post_init__(self) -> None:
        self.address()
        for what in ("base", "users_base", "groups_base", "bind_dn"):
            value = getattr(self, what)
            if value is not None or what == "base":
                _check_dn(what, value)
        if self.bind_dn is not None and not self.password:
            raise ConfigError(f"bind DN {self.bind_dn!r} given without a password (an empty password would bind anonymously)")
        if self.password is not None and self.bind_dn is None:
            raise ConfigError("a password was given without a bind DN")
        if self.starttls and self.url.lower().startswith("ldaps:"):
            raise ConfigError(f"{self.url} is already TLS (ldaps://); StartTLS is for ldap:// URLs")
        for what in ("user_filter", "group_filter"):
            _check_filter(what, getattr(self, what))
        for what in ("id_attributes", "user_labels", "group_labels"):
            names = getattr(self, what)
            if isinstance(names, str) or not names or not all(isinstance(n, str) and _ATTR.match(n) for n in names):
                raise ConfigError(f"{what} must be a non-empty tuple of attribute names, not {names!r}")
        if isinstance(self.page_size, bool) or not isinstance(self.page_size, int) or not 1 <= self.page_size <= 100_000:
            raise ConfigError(f"page_size must be an integer from 1 to 100000, not {self.page_size!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {self.timeout!r}")

    def address(self) -> tuple[bool, str, int]:
        """(TLS from the start, host, port) of :attr:`url`."""
        if not isinstance(self.url, str):
            raise ConfigError(f"LDAP URL must be a string, not {type(self.url).__name__}")
        if "@" in self.url.split("//", 1)[-1].split("/", 1)[0]:  # checked first: no message may repeat a password
            raise ConfigError(f"LDAP URL {self.url.split('@')[-1]!r} carries credentials: give a bind DN and a password (file) instead")
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"LDAP URL {self.url!r} is not valid ({exc})") from None
        if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
            raise ConfigError(f"LDAP URL {self.url!r} must be ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"LDAP URL {self.url!r} has a path or query: give the base DN separately (--base)")
        tls = parts.scheme.lower() == "ldaps"
        return tls, parts.hostname, port or (636 if tls else 389)

    def attributes(self) -> list[str]:
        """Every attribute a search asks for (absent ones are simply not returned)."""
        names = ["objectClass", "uid", *self.id_attributes, *self.user_labels, *self.group_labels, *MEMBER_ATTRIBUTES, *STATE_ATTRIBUTES]
        return list(dict.fromkeys(names))


def _check_dn(what: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip() or any(ord(c) < 32 for c in value):
        raise ConfigError(f"{what} must be a DN such as 'dc=example,dc=org', not {value!r}")
    try:
        dn_key(value)
    except ValueError as exc:
        raise ConfigError(f"{what} {value!r} is not a DN ({exc})") from None


def _check_filter(what: str, value: object) -> None:
    if not isinstance(value, str) or not value.startswith("(") or any(ord(c) < 32 for c in value):
        raise ConfigError(f"{what} must be an LDAP filter in parentheses, such as '(objectClass=person)', not {value!r}")
    depth = 0
    for ch in value.replace("\\(", "").replace("\\)", ""):
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            break
    if depth:
        raise ConfigError(f"{what} {value!r} has unbalanced parentheses")


def read_password(path: str) -> str:
    """A bind password from a file (its first line, without the line break)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"password file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read password file {path}: {exc.strerror or exc}") from None
    if not text:
        raise ConfigError(f"password file {path} is empty (its first line is the password)")
    return text


# ---------------------------------------------------------------------- DNs
_PLAIN = re.compile(r"[\\\"+#;<>]")


def dn_key(dn: str) -> str:
    """A DN in a form equal for every spelling of the same DN: attribute types
    and values lower-cased, spaces around separators dropped, escapes decoded
    (and re-escaped the one way), the values of a multi-valued RDN sorted."""
    if not _PLAIN.search(dn):
        rdns = []
        for part in dn.split(","):
            attr, eq, value = part.partition("=")
            if not eq or not attr.strip():
                raise ValueError(f"{part.strip()!r} is not attribute=value")
            rdns.append(f"{attr.strip().lower()}={value.strip().lower()}")
        return ",".join(rdns)
    return ",".join("+".join(sorted(f"{a}={_escape(v)}" for a, v in rdn)) for rdn in _parse_dn(dn))


def _escape(value: str) -> str:
    return "".join("\\" + c if c in ',+"\\' else c for c in value)


def _parse_dn(dn: str) -> list[list[tuple[str, str]]]:
    """RDNs of ``dn``, each a list of (attribute type, decoded value), lower-cased."""
    rdns: list[list[tuple[str, str]]] = [[]]
    attr: str | None = None
    buf, value = "", bytearray()
    i, quoted = 0, False
    while i <= len(dn):
        ch = dn[i] if i < len(dn) else ","
        if attr is None:
            if ch == "=":
                attr, i = buf.strip().lower(), i + 1
                if not attr:
                    raise ValueError("an attribute type is missing before '='")
                continue
            if ch in ",+" or i == len(dn):
                raise ValueError(f"{buf.strip()!r} is not attribute=value")
            buf, i = buf + ch, i + 1
            continue
        if ch == "\\" and i + 1 < len(dn):
            pair = dn[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                value.append(int(pair, 16))
                i += 3
            else:
                value += dn[i + 1].encode()
                i += 2
            continue
        if ch == '"':
            quoted, i = not quoted, i + 1
            continue
        if ch in ",+;" and not quoted or i == len(dn):
            rdns[-1].append((attr, value.decode("utf-8", "replace").strip().lower()))
            if ch in ",;" and i < len(dn):
                rdns.append([])
            attr, buf, value, i = None, "", bytearray(), i + 1
            continue
        value += ch.encode()
        i += 1
    return rdns


def _member_dn(value: str) -> str:
    """A ``uniqueMember`` value (``DN#'0101'B``, name and optional UID) without its UID."""
    head, sep, tail = value.rpartition("#")
    return head if sep and tail.startswith("'") and tail.endswith("'B") else value


# ---------------------------------------------------------------------- entries → Directory
@dataclass(frozen=True)
class LdapRead:
    """One complete read of a directory: the :class:`Directory` and how it was read."""

    directory: Directory
    entries: int  # user and group entries returned
    pages: int  # pages of both searches
    skipped: tuple[str, ...] = ()  # references to entries that neither search returned, left out
    referrals: int = 0  # search continuation references (other servers), not followed


def _text(values: list[bytes]) -> list[str]:
    return [v.decode("utf-8", "replace") for v in values]


def _ident(source: LdapSource, dn: str, attrs: dict[str, list[bytes]]) -> str:
    for name in source.id_attributes:
        raw = attrs.get(name.lower())
        if not raw:
            continue
        if name.lower() == "objectguid" and len(raw[0]) == 16:
            return str(uuid.UUID(bytes_le=raw[0]))
        return name_of(source.url, dn, name, raw[0].decode("utf-8", "replace"))
    raise IdentityFileError(source.url, dn, f"has none of {', '.join(source.id_attributes)}: an entry is keyed by its immutable id (the bind account must be able to read it)")


def _label(source: LdapSource, dn: str, attrs: dict[str, list[bytes]], names: Sequence[str]) -> str:
    for name in names:
        for value in _text(attrs.get(name.lower(), [])):
            if value.strip():
                return name_of(source.url, dn, name, value.strip())
    first = dn.split(",", 1)[0].partition("=")[2].strip()  # the RDN's value, as the entry names itself
    return name_of(source.url, dn, "RDN value", first or dn)


def _locked(attrs: dict[str, list[bytes]]) -> bool:
    return disabled(lambda name: _text(attrs.get(name, [])))


def _entries(source: LdapSource, users: Sequence[Entry], groups: Sequence[Entry]) -> tuple[Directory, dict[str, str], dict[str, str | None]]:
    """The users and groups, without memberships; DN key → member key; uid → user key (None: ambiguous)."""
    out = Directory()
    keys: dict[str, str] = {}
    owners: dict[str, str] = {}
    uids: dict[str, str | None] = {}
    for prefix, entries in ((USER_PREFIX, users), (GROUP_PREFIX, groups)):
        for dn, attrs in entries:
            ident = _ident(source, dn, attrs)
            key, dk = prefix + ident, dn_key(dn)
            if key in owners or dk in keys:
                other = owners.get(key) or dn
                raise IdentityFileError(source.url, dn, f"is read twice or shares its id {ident!r} with {other!r} (does it match both the user and the group filter?)")
            owners[key], keys[dk] = dn, key
            if prefix == USER_PREFIX:
                out.users.add(ident)
                out.labels[key] = _label(source, dn, attrs, source.user_labels)
                if _locked(attrs):
                    out.inactive.add(ident)
                for uid in _text(attrs.get("uid", [])):
                    uids[uid.lower()] = None if uid.lower() in uids else key
            else:
                out.groups[ident] = set()
                out.labels[key] = _label(source, dn, attrs, source.group_labels)
    return out, keys, uids


def build(source: LdapSource, users: Sequence[Entry], groups: Sequence[Entry]) -> tuple[Directory, list[str]]:
    """The :class:`Directory` of the entries; the references left out."""
    out, keys, uids = _entries(source, users, groups)
    skipped: list[str] = []
    for prefix, entries in ((USER_PREFIX, users), (GROUP_PREFIX, groups)):
        for dn, attrs in entries:
            key = keys[dn_key(dn)]
            if prefix == GROUP_PREFIX:
                group = out.groups[key[len(GROUP_PREFIX) :]]
                for value in _text(attrs.get("member", []) + attrs.get("uniquemember", [])):
                    hit = _key_of(keys, _member_dn(value))
                    if hit is None:
                        skipped.append(f"{dn}: member {value}")
                    else:
                        group.add(hit)
                for uid in _text(attrs.get("memberuid", [])):
                    hit = uids.get(uid.lower())
                    if hit is None and uid.lower() in uids:  # which one is meant cannot be known: neither guess is safe
                        raise IdentityFileError(source.url, dn, f"memberUid {uid!r} names several users (they share that uid); give them distinct uids or list members by DN")
                    if hit is None:
                        skipped.append(f"{dn}: memberUid {uid}")
                    else:
                        group.add(hit)
            for value in _text(attrs.get("memberof", [])):
                hit = _key_of(keys, value)
                if hit is None or not hit.startswith(GROUP_PREFIX):
                    skipped.append(f"{dn}: memberOf {value}")
                else:
                    out.groups[hit[len(GROUP_PREFIX) :]].add(key)
    check_acyclic(source.url, out)
    return out, skipped


def _key_of(keys: dict[str, str], dn: str) -> str | None:
    try:
        return keys.get(dn_key(dn))
    except ValueError:
        return None


def source_of(source: LdapSource | str, base: str | None = None, bind_dn: str | None = None, password: str | None = None, starttls: bool = False) -> LdapSource:
    """``source`` itself, or an :class:`LdapSource` made of a URL and the connection arguments."""
    if isinstance(source, LdapSource):
        if base is not None or bind_dn is not None or password is not None or starttls:
            raise ConfigError("give base, bind_dn, password and starttls in the LdapSource, not beside it")
        return source
    return LdapSource(source, base, bind_dn=bind_dn, password=password, starttls=starttls)  # type: ignore[arg-type]
