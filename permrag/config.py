"""Where a permrag store lives and how it is reached, resolved in one place.

A store is one home folder. In it: ``permrag.db`` (SQLite: catalog and
policy), ``milvus.db`` (Milvus Lite) and ``config.toml``, written by
``permrag init`` (or :func:`save`), which records the database URL, the
Milvus URI and token, the collection and the encoder, so that every later
command and ``PermRAG.open(home)`` reaches the same store without flags.

Each value comes from, in this order: the call's argument (a CLI flag), the
environment (``PERMRAG_DATABASE_URL``, ``PERMRAG_MILVUS_URI``,
``PERMRAG_MILVUS_TOKEN``, ``PERMRAG_COLLECTION``, ``PERMRAG_ENCODER``), the
home's ``config.toml``, the default. The home itself is the argument, else
``$PERMRAG_HOME``, else ``~/.permrag``.

Secrets (a password in a URL, the Milvus token) are never printed:
:func:`mask` hides them in every message and in ``permrag config show``.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, RepointError

CONFIG_FILE = "config.toml"
KEYS = ("database_url", "milvus_uri", "milvus_token", "collection", "encoder")
SECRET_KEYS = frozenset({"milvus_token"})
ENV = {key: f"PERMRAG_{key.upper()}" for key in KEYS}
DEFAULT_COLLECTION = "permrag"
DEFAULT_DATABASE = "permrag.db"
BINDING_KEYS = ("database_url", "milvus_uri", "collection")  # what binds a home to its store
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600  # the modes of a store's folders and files
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "grpcs://", "unix:")


def milvus_kind(uri: str) -> str:
    """``"lite"`` for a local Milvus Lite file, ``"server"`` for anything
    reached over a network or socket (``http(s)://``, ``tcp://``,
    ``grpc://``, ``unix:``). The only place permrag decides this."""
    return "server" if uri.startswith(_SERVER_SCHEMES) else "lite"


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    milvus_uri: str
    milvus_token: str | None = None
    collection: str = DEFAULT_COLLECTION
    encoder: str | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)  # key → argument/environment/config file/default

    @property
    def milvus_kind(self) -> str:
        return milvus_kind(self.milvus_uri)

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_FILE

    def shown(self) -> dict[str, Any]:
        """Every setting, secrets masked, with where it came from."""
        out: dict[str, Any] = {"home": str(self.home)}
        for key in KEYS:
            value = getattr(self, key)
            if key in SECRET_KEYS and value:
                value = "***"
            elif isinstance(value, str):
                value = mask(value)
            out[key] = {"value": value, "source": self.sources.get(key, "default")}
        return out


def home_path(home: str | os.PathLike[str] | None = None) -> Path:
    raw = home if home is not None else os.environ.get("PERMRAG_HOME") or Path.home() / ".permrag"
    if isinstance(raw, str) and not raw.strip():
        raise ConfigError("the home folder must not be empty (give a path, or leave it out for ~/.permrag)")
    return Path(raw).expanduser().resolve()


def read_file(home: Path) -> dict[str, Any]:
    """The home's config.toml as a dict ({} when there is none)."""
    path = home / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string")
    return data


def resolve(home: str | os.PathLike[str] | None = None, **given: str | None) -> Settings:
    """Settings from arguments, then environment, then config file, then defaults."""
    bad = sorted(set(given) - set(KEYS))
    if bad:
        raise ConfigError(f"unknown setting(s) {', '.join(bad)}")
    path = home_path(home)
    file = read_file(path)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        if given.get(key) not in (None, ""):
            values[key], sources[key] = given[key], "argument"
        elif os.environ.get(ENV[key]):
            values[key], sources[key] = os.environ[ENV[key]], "environment"
        elif file.get(key):
            values[key], sources[key] = file[key], "config file"
    return _settings(path, values, sources)


def recorded(home: Path) -> Settings:
    """The store ``home`` records: its config.toml's values, else the defaults
    (no flags, no environment) — what ``permrag init`` compares against."""
    file = read_file(home)
    values = {key: file[key] for key in KEYS if file.get(key)}
    return _settings(home, values, dict.fromkeys(values, "config file"))


def _settings(home: Path, values: dict[str, Any], sources: dict[str, str]) -> Settings:
    values.setdefault("database_url", f"sqlite:///{home / DEFAULT_DATABASE}")
    values.setdefault("milvus_uri", str(home / "milvus.db"))
    values.setdefault("collection", DEFAULT_COLLECTION)
    check_collection(values["collection"])
    return Settings(home, sources=sources, **values)


def holds_store(home: Path) -> bool:
    """Whether ``home`` records a store: its config.toml (written by ``permrag
    init``) or its own SQLite catalog."""
    return (home / CONFIG_FILE).is_file() or (home / DEFAULT_DATABASE).exists()


def store_elsewhere(settings: Settings) -> bool:
    """Whether an open of ``settings`` must find its store rather than make
    one: the home's config.toml records it, or the home has its own SQLite
    catalog and this open points at another database. (A home's own file
    may be completed: processes opening a new home at once all find it.)"""
    own = settings.home / DEFAULT_DATABASE
    return settings.config_path.is_file() or own.exists() and sqlite_path(settings.database_url) != own


def check_repoint(settings: Settings, *, force: bool = False) -> list[str]:
    """What recording ``settings`` in their home would change of the store it
    holds (database, Milvus, collection), secrets masked; unless ``force``,
    a change raises :class:`RepointError` (``permrag init`` without --force)."""
    if not holds_store(settings.home):
        return []
    changes = repointed(recorded(settings.home), settings)
    if changes and not force:
        raise RepointError(
            f"the home {settings.home} holds a store; this would change its {', '.join(changes)}",
            hint="pass force=True to point the home there (the old store is left as it is)",
            cli_hint="run it again with --force to point the home there (the old store is left as it is)",
        )
    return changes


def repointed(old: Settings, new: Settings) -> list[str]:
    """What pointing a store at ``new`` instead of ``old`` changes, secrets masked."""
    return [f"{key} {mask(getattr(old, key))} -> {mask(getattr(new, key))}" for key in BINDING_KEYS if not _same(key, getattr(old, key), getattr(new, key))]


def _same(key: str, a: str, b: str) -> bool:
    """Whether two values of a binding setting name the same place (a file by any of its paths)."""
    if a == b:
        return True
    if key == "database_url":
        return sqlite_path(a) is not None and sqlite_path(a) == sqlite_path(b)
    if key == "milvus_uri" and milvus_kind(a) == milvus_kind(b) == "lite":
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return False


def check_collection(name: str) -> str:
    # Room for the per-tenant suffix (see backends/milvus.py) within Milvus' 255.
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,199}", name):
        raise ConfigError(f"collection name {name!r} must be letters, digits and '_' (at most 200, not starting with a digit)")
    return name


def save(settings: Settings, keys: tuple[str, ...] = KEYS) -> Path:
    """Write the chosen settings (those not defaulted) to the home's config.toml."""
    lines = ["# permrag store settings (written by `permrag init`); flags and PERMRAG_* variables override them"]
    for key in keys:
        value = getattr(settings, key)
        if value is None or settings.sources.get(key, "default") == "default":
            continue
        lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    path = settings.config_path
    try:
        # Made private before the first byte (it may hold a token), and kept so when it existed wider.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        os.fchmod(fd, PRIVATE_FILE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from None
    return path


_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/@:\s]*:)(?P<pw>[^@/\s]*)(?P<at>@)")
_QUERY_SECRET = re.compile(r"(?i)(?P<key>(?:password|token|secret|api_key)=)[^&\s]*")


def mask(text: str) -> str:
    """``text`` with passwords in URLs and token-like query values replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***{m.group('at')}", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}***", text)


def ensure_home(settings: Settings, *, create: bool = True) -> None:
    """Create the home folder, private to its owner (or check it exists)."""
    home = settings.home
    if home.exists() and not home.is_dir():
        raise ConfigError(f"home {str(home)!r} exists and is not a folder")
    if not home.exists():
        if not create:
            raise ConfigError(f"home {str(home)!r} does not exist; run `permrag init` first")
        try:
            home.parent.mkdir(parents=True, exist_ok=True)
            home.mkdir(mode=PRIVATE_DIR)
            os.chmod(home, PRIVATE_DIR)  # whatever the umask: the home holds documents, the audit log and token hashes
        except FileExistsError:  # another process made it this moment (with the same mode)
            if not home.is_dir():
                raise ConfigError(f"home {str(home)!r} exists and is not a folder") from None
        except OSError as exc:
            raise ConfigError(f"cannot create home {str(home)!r}: {exc}") from exc


def wide_files(settings: Settings) -> list[str]:
    """One warning per store file or folder that other local users may open
    (the home, the SQLite catalog and its WAL/SHM, config.toml, the Milvus Lite folder)."""
    wanted: list[tuple[Path, int]] = [(settings.home, PRIVATE_DIR), (settings.config_path, PRIVATE_FILE)]
    db_file = sqlite_path(settings.database_url)
    if db_file is not None:
        wanted += [(Path(f"{db_file}{end}"), PRIVATE_FILE) for end in ("", "-wal", "-shm")]
    if settings.milvus_kind == "lite":
        wanted.append((Path(settings.milvus_uri), PRIVATE_DIR))
    out = []
    for path, mode in wanted:
        try:
            have = path.stat().st_mode & 0o777
        except OSError:  # not made yet
            continue
        if have & 0o077:
            out.append(f"{path} is mode {have:04o}: other local users can open it; run chmod {mode:o} {path}")
    return out


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite database URL (None for another database or one in memory)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError as SAArgumentError

    try:
        parsed = make_url(url)
    except SAArgumentError:
        return None
    name = parsed.database
    if not parsed.drivername.startswith("sqlite") or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).expanduser().resolve()
