"""Where a permrag store lives: one home folder, resolved in one place.

The home is the ``home`` argument, else ``$PERMRAG_HOME``, else
``~/.permrag``. In it: ``permrag.db`` (SQLite: catalog and policy) and
``milvus.db`` (Milvus Lite). ``database_url`` / ``$PERMRAG_DATABASE_URL`` and
``milvus_uri`` / ``$PERMRAG_MILVUS_URI`` move either part to a server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    milvus_uri: str
    milvus_token: str | None = None

    @property
    def embedded_milvus(self) -> bool:
        return not self.milvus_uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def resolve(
    home: str | os.PathLike[str] | None = None,
    database_url: str | None = None,
    milvus_uri: str | None = None,
    milvus_token: str | None = None,
) -> Settings:
    """Settings from arguments first, then environment, then defaults (no I/O)."""
    raw_home = home if home is not None else os.environ.get("PERMRAG_HOME") or Path.home() / ".permrag"
    path = Path(raw_home).expanduser().resolve()
    url = database_url or os.environ.get("PERMRAG_DATABASE_URL") or f"sqlite:///{path / 'permrag.db'}"
    uri = milvus_uri or os.environ.get("PERMRAG_MILVUS_URI") or str(path / "milvus.db")
    token = milvus_token or os.environ.get("PERMRAG_MILVUS_TOKEN")
    return Settings(path, url, uri, token)


def ensure_home(settings: Settings, *, create: bool = True) -> None:
    """Create the home folder (or check it exists)."""
    home = settings.home
    if home.exists() and not home.is_dir():
        raise ConfigError(f"home {str(home)!r} exists and is not a folder")
    if not home.exists():
        if not create:
            raise ConfigError(f"home {str(home)!r} does not exist; run `permrag init` first")
        try:
            home.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"cannot create home {str(home)!r}: {exc}") from exc
