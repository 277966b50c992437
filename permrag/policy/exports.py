"""The files of one identity sync → one :class:`Directory`.

Every file is read and parsed before anything is applied. SCIM files are one
export together (policy/scim.py: references across files, pages merged,
partial listings refused); LDIF and CSV files are each complete in
themselves. The union must be free of group cycles.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import IdentityFileError, PolicyError
from .directory import FORMATS, Directory, check_acyclic, detect, parse_csv, parse_ldif
from .scim import Page, parse_page, resolve


def _parse(path: str, text: str, fmt: str | None) -> Directory | Page:
    fmt = fmt or detect(path, text)
    if fmt == "scim":
        return parse_page(path, text)
    if fmt == "ldif":
        return parse_ldif(path, text)
    if fmt == "csv":
        return parse_csv(path, text)
    raise PolicyError(f"unknown identity format {fmt!r} (expected one of {', '.join(FORMATS)})")


def parse(path: str, text: str, fmt: str | None = None) -> Directory:
    """One export file's directory."""
    got = _parse(path, text, fmt)
    return resolve([got]) if isinstance(got, Page) else got


def read_text(src: str | os.PathLike[str]) -> str:
    name = str(src)
    try:
        return Path(src).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IdentityFileError(name, f"byte {exc.start}", "not UTF-8") from None
    except OSError as exc:
        raise PolicyError(f"cannot read identity file {name}: {exc.strerror or exc}") from None


def read(sources: Sequence[str | os.PathLike[str]], fmt: str | None = None) -> Directory:
    """The directory of one sync's files."""
    if not sources:
        raise PolicyError("an identity sync needs at least one export file")
    out = Directory()
    pages: list[Page] = []
    for src in sources:
        got = _parse(str(src), read_text(src), fmt)
        if isinstance(got, Page):
            pages.append(got)
        else:
            out.merge(got)
    if pages:
        out.merge(resolve(pages))
    check_acyclic(", ".join(map(str, sources)), out)
    return out
