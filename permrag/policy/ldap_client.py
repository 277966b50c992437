"""Reading a directory over LDAP with ``ldap3``: connect, bind, every page.

Both searches (users, groups) are paged (RFC 2696 simple paged results,
marked critical: a server that cannot page answers an error, not a listing
cut at its size limit). The result of every page is checked: anything but
success — a size, time or administrative limit, a missing base — raises,
and so does a connection lost between pages, naming how far the read got.
Nothing is returned unless both listings were read to their last page
(policy/ldap.py applies nothing else). Referrals to other servers are not
followed: they are counted and reported.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendError, ConfigError
from .ldap import Entry, LdapRead, LdapSource, Progress, build

try:
    import ldap3
    from ldap3.core import exceptions as lx
except ModuleNotFoundError:  # the optional extra permrag[ldap]
    ldap3 = None

log = logging.getLogger(__name__)

PAGED_RESULTS = "1.2.840.113556.1.4.319"
LIMITS = {3: "timeLimitExceeded", 4: "sizeLimitExceeded", 11: "adminLimitExceeded"}
BAD_BASE = {32: "noSuchObject", 34: "invalidDNSyntax", 50: "insufficientAccessRights"}


@dataclass
class Fetched:
    users: list[Entry] = field(default_factory=list)
    groups: list[Entry] = field(default_factory=list)
    pages: int = 0
    referrals: int = 0


def read(source: LdapSource, progress: Progress | None = None) -> LdapRead:
    """Every user and group of ``source``, all pages of both searches, as one
    :class:`LdapRead`; or an error (:class:`~permrag.errors.BackendError`,
    :class:`~permrag.errors.ConfigError`) and nothing read."""
    if ldap3 is None:
        raise ConfigError("LDAP sync needs the ldap3 package", hint="pip install 'permrag[ldap]'")
    got = fetch(source, progress)
    directory, skipped = build(source, got.users, got.groups)
    if skipped:
        log.warning("LDAP sync from %s: %d reference(s) to entries outside the bases or filters left out, e.g. %s", source.url, len(skipped), skipped[0])
    if got.referrals:
        log.warning("LDAP sync from %s: %d referral(s) to other servers not followed", source.url, got.referrals)
    return LdapRead(directory, len(got.users) + len(got.groups), got.pages, tuple(skipped), got.referrals)


def fetch(source: LdapSource, progress: Progress | None = None) -> Fetched:
    """Every user and group entry of ``source``, read to the last page of both searches."""
    conn = _connect(source)
    out = Fetched()
    try:
        for kind, base, filt, into in (
            ("users", source.users_base or source.base, source.user_filter, out.users),
            ("groups", source.groups_base or source.base, source.group_filter, out.groups),
        ):
            _search(conn, source, kind, base, filt, into, out, progress)
        return out
    except lx.LDAPInvalidFilterError as exc:
        raise ConfigError(f"LDAP filter refused: {exc}") from None
    except (lx.LDAPCommunicationError, lx.LDAPResponseTimeoutError, OSError) as exc:
        read = len(out.users) + len(out.groups)
        raise BackendError(
            f"the connection to {source.url} was lost after {read} entries ({out.pages} page(s)) of the directory: {_why(exc)}; a partial directory is never applied, nothing was changed"
        ) from None
    finally:
        _close(conn)


def _why(exc: BaseException) -> str:
    """The exception's text, without the tuple reprs ldap3 wraps socket errors in."""
    text = " ".join(str(exc).split())
    for _ in range(3):
        wrapped = re.fullmatch(r"\(?(['\"])(.*)\1,?\)?", text)
        if wrapped is None:
            break
        text = wrapped.group(2)
    return text[:300] or exc.__class__.__name__


def _tls_why(exc: BaseException, host: str) -> str:
    if "doesn't match any name" in str(exc):
        return f"the server's certificate is not for {host!r} (its names do not include the URL's host)"
    return _why(exc)


def _close(conn: Any) -> None:
    try:
        conn.unbind()
    except (lx.LDAPException, OSError):
        pass


def _tls(source: LdapSource) -> Any:
    tls_on, _, _ = source.address()
    if not (tls_on or source.starttls):
        return None
    try:
        return ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=source.ca_file)
    except lx.LDAPSSLConfigurationError as exc:
        raise ConfigError(f"CA file {source.ca_file}: {_why(exc)}") from None


def _connect(source: LdapSource) -> Any:
    tls_on, host, port = source.address()
    seconds = math.ceil(source.timeout)  # ldap3 packs whole seconds into the socket options
    server = ldap3.Server(host, port=port, use_ssl=tls_on, tls=_tls(source), get_info=ldap3.NONE, connect_timeout=seconds)
    auth = ldap3.SIMPLE if source.bind_dn else ldap3.ANONYMOUS
    conn = ldap3.Connection(
        server, user=source.bind_dn, password=source.password, authentication=auth, raise_exceptions=False,
        receive_timeout=seconds, auto_referrals=False, auto_range=False, read_only=True, check_names=False, return_empty_attributes=False,
    )  # fmt: skip
    try:
        conn.open()
        if source.starttls and not conn.start_tls():
            raise ConfigError(f"{source.url} refused StartTLS: {_describe(conn.result)}")
        if not conn.bind():
            _close(conn)
            who = f"as {source.bind_dn!r}" if source.bind_dn else "anonymously"
            code = (conn.result or {}).get("result")
            advice = "check the bind DN and the password file" if code == 49 else "check the bind DN, the password and the account's rights"
            raise ConfigError(f"{source.url} refused the bind {who}: {_describe(conn.result)}; {advice}")
    except lx.LDAPStartTLSError as exc:
        _close(conn)
        raise ConfigError(f"StartTLS with {source.url} failed: {_tls_why(exc, host)} (does the server offer TLS, and is its certificate trusted?)") from None
    except (lx.LDAPSSLConfigurationError, lx.LDAPCertificateError, ssl.SSLError) as exc:
        _close(conn)
        raise ConfigError(f"TLS with {source.url} failed: {_tls_why(exc, host)}") from None
    except lx.LDAPSocketOpenError as exc:
        raise BackendError(f"cannot reach the LDAP server {source.url}: {_why(exc)}") from None
    except (lx.LDAPCommunicationError, lx.LDAPResponseTimeoutError, OSError) as exc:
        _close(conn)
        raise BackendError(f"the LDAP server {source.url} closed the connection during the bind: {_why(exc)}") from None
    return conn


def _describe(result: dict[str, Any] | None) -> str:
    result = result or {}
    text = str(result.get("description") or "no answer")
    message = " ".join(str(result.get("message") or "").split())
    return f"{text} ({message})" if message else text


def _search(conn: Any, source: LdapSource, kind: str, base: str, filt: str, into: list[Entry], out: Fetched, progress: Progress | None) -> None:
    """Every page of one search into ``into``, then the rest of every ranged
    attribute; raises unless each page and range succeeded."""
    cookie: bytes | None = None
    attributes = source.attributes()
    ranged: list[tuple[int, str, int]] = []  # (entry, attribute, next value to read)
    while True:
        conn.search(
            base, filt, ldap3.SUBTREE, attributes=attributes, paged_size=source.page_size, paged_criticality=True,
            paged_cookie=cookie, dereference_aliases=ldap3.DEREF_NEVER,
        )  # fmt: skip
        result = conn.result or {}
        if result.get("result") != 0:
            _failed(source, kind, base, result, len(into))
        for r in conn.response or ():
            if r.get("type") == "searchResEntry":
                attrs: dict[str, list[bytes]] = {}
                for name, values in r["raw_attributes"].items():
                    nxt = _merge(attrs, name, values)
                    if nxt is not None:
                        ranged.append((len(into), nxt[0], nxt[1]))
                into.append((r["dn"], attrs))
            elif r.get("type") == "searchResRef":
                out.referrals += 1
        out.pages += 1
        if progress is not None:
            progress(kind, out.pages, len(into))
        control = (result.get("controls") or {}).get(PAGED_RESULTS)
        cookie = control["value"]["cookie"] if control else None
        if not cookie:
            break
    for i, attr, low in ranged:  # after the paged search: no other search may run inside it
        _read_ranges(conn, source, into[i], attr, low)


def _merge(attrs: dict[str, list[bytes]], name: str, values: list[bytes]) -> tuple[str, int] | None:
    """Add ``values`` of attribute ``name`` to ``attrs``; for a range that is not
    the last (Active Directory's ``member;range=0-1499``), (attribute, next value)."""
    attr, _, span = name.lower().partition(";range=")
    if values:
        attrs.setdefault(attr, []).extend(values)
    high = span.partition("-")[2]
    if not span or high == "*":
        return None
    return attr, int(high) + 1


def _read_ranges(conn: Any, source: LdapSource, entry: Entry, attr: str, low: int) -> None:
    """The remaining ranges of ``attr`` of ``entry`` (AD returns large groups' members 1,500 at a time)."""
    dn, attrs = entry
    while True:
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[f"{attr};range={low}-*"], dereference_aliases=ldap3.DEREF_NEVER)
        found = [r for r in conn.response or () if r.get("type") == "searchResEntry"]
        if (conn.result or {}).get("result") != 0 or len(found) != 1:
            raise BackendError(f"reading {attr} of {dn!r} from value {low} on {source.url} failed: {_describe(conn.result)}; nothing was changed")
        before = len(attrs.get(attr, []))
        nxt = None
        for name, values in found[0]["raw_attributes"].items():
            if name.lower().partition(";range=")[0] == attr:
                nxt = _merge(attrs, name, values)
        if nxt is None:
            return
        if len(attrs.get(attr, [])) == before:
            raise BackendError(f"{source.url} returned no more values of {attr} of {dn!r} (from value {low}); nothing was changed")
        low = nxt[1]


def _failed(source: LdapSource, kind: str, base: str, result: dict[str, Any], read: int) -> None:
    code = result.get("result")
    if code in BAD_BASE:
        raise ConfigError(f"the {kind} search of {source.url} under base DN {base!r} failed: {_describe(result)}; check the base DN and the account's rights")
    if code in LIMITS:
        raise BackendError(
            f"{source.url} stopped the {kind} listing after {read} entries ({_describe(result)}): a partial directory is never applied, "
            "nothing was changed; lift the sync account's limits (OpenLDAP: limits ... size.prtotal=unlimited)"
        )
    if code == 12:
        raise BackendError(f"{source.url} cannot page search results (RFC 2696): {_describe(result)}; nothing was changed")
    raise BackendError(f"the {kind} search of {source.url} failed after {read} entries: {_describe(result)}; nothing was changed")
