"""The ``permrag`` command: a thin face over the library.

Every command opens the store, makes one library call and prints the result.
Errors are handled in one place (:class:`Main`): a library error prints one
line and exits 1, a usage error exits 2, and nothing — a missing file, an
encoding error, a broken server — ever shows a Python traceback (``--verbose``
adds it to the log instead). The shared options (``--home``,
``--database-url``, ``--milvus-uri``, ``--milvus-token``, ``--collection``)
are declared once, by :class:`StoreCommand`, and work before or after the
command name, also as ``PERMRAG_*`` variables; the home's ``config.toml``
supplies whatever is not given.

Exit codes: 0 success; 1 a library error, or a check that found something
(``policy check`` findings, ``reconcile`` missing rows, ``ingest`` files that
failed to load); 2 a usage error; 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from ..errors import PermragError

log = logging.getLogger(__name__)

SHARED = (
    ("home", "--home", "PERMRAG_HOME", "Home folder (default ~/.permrag)."),
    ("database_url", "--database-url", "PERMRAG_DATABASE_URL", "SQLAlchemy URL (default: SQLite in the home)."),
    ("milvus_uri", "--milvus-uri", "PERMRAG_MILVUS_URI", "Milvus server URI (default: Milvus Lite in the home)."),
    ("milvus_token", "--milvus-token", "PERMRAG_MILVUS_TOKEN", "Milvus token (user:password or an API key); never printed."),
    ("collection", "--collection", "PERMRAG_COLLECTION", "Milvus collection of the store (default: the one it is bound to, or 'permrag')."),
)


def _shared_options() -> list[click.Option]:
    # The environment is read by permrag.config (flags > PERMRAG_* > config.toml > defaults),
    # not by click, so that `config show` can say where each value came from.
    return [click.Option([flag], help=f"{help_text[:-1]} [env {env}]", expose_value=True) for _, flag, env, help_text in SHARED]


class StoreCommand(click.Command):
    """A command that takes the shared store options (declared here, once)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_shared_options())

    def invoke(self, ctx: click.Context) -> Any:
        root: Store = ctx.find_root().obj
        for key, *_ in SHARED:
            value = ctx.params.pop(key, None)
            if value is not None:
                root.given[key] = value
        return super().invoke(ctx)


class Store:
    """The options that pick a store, gathered from the group and the command."""

    def __init__(self, given: dict[str, Any]) -> None:
        self.given = {k: v for k, v in given.items() if v is not None}

    def settings(self) -> Any:
        from ..toolkit import config

        g = self.given
        return config.resolve(
            g.get("home"),
            database_url=g.get("database_url"),
            milvus_uri=g.get("milvus_uri"),
            milvus_token=g.get("milvus_token"),
            collection=g.get("collection"),
        )

    def open(self, *, create: bool = False, **options: Any) -> Any:
        from .. import PermRAG

        g = self.given
        if g.get("collection"):
            options.setdefault("collection", g["collection"])
        return PermRAG.open(
            g.get("home"),
            database_url=g.get("database_url"),
            milvus_uri=g.get("milvus_uri"),
            milvus_token=g.get("milvus_token"),
            create=create,
            **options,
        )


@contextmanager
def store(ctx: click.Context, **options: Any) -> Iterator[Any]:
    """The command's store, closed afterwards."""
    rag = ctx.find_root().obj.open(**options)
    try:
        yield rag
    finally:
        rag.close()


def emit(as_json: bool, data: Any, render: Any) -> None:
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        render()


def fail(message: str, code: int = 1) -> None:
    """Print one error line and exit."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Main(click.Group):
    """The command group; every error leaves it as one line (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except PermragError as exc:
            _log_traceback(exc)
            fail(" ".join(exc.for_cli().split()))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (OSError, UnicodeError) as exc:
            _log_traceback(exc)
            fail(" ".join(f"{exc.__class__.__name__}: {exc}".split()))
        except Exception as exc:  # the promise: no traceback for a CLI user, ever
            _log_traceback(exc)
            fail(f"internal error ({exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}); run with --verbose for details")


def _log_traceback(exc: BaseException) -> None:
    log.debug("command failed", exc_info=exc)


BACKEND_LOGGERS = ("pymilvus", "milvus_lite", "grpc", "grpc._server", "sentence_transformers", "transformers", "huggingface_hub", "jieba")
LOADER_LOGGERS = ("pypdf", "trafilatura", "htmldate", "courlan", "justext", "charset_normalizer", "docx", "markdown_it", "PIL", "fontTools")


def quiet(verbose: bool) -> None:
    """Backends' progress bars and warnings off the user's terminal unless --verbose."""
    # Loaders' parsers log what they tolerate ("EOF marker not found"); Python
    # warnings of any library go to logging too, so stdout and stderr carry
    # only the command's output (--json: JSON alone).
    logging.captureWarnings(True)
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")
    for name in (*BACKEND_LOGGERS, *LOADER_LOGGERS, "py.warnings", "permrag"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from .. import __version__

        click.echo(f"permrag {__version__}")
        ctx.exit(0)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, callback=_version, expose_value=False, is_eager=True, help="Print the version and exit.")
@click.option("--verbose", "-v", is_flag=True, help="Show backend logs and progress bars, and tracebacks of errors.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, **shared: Any) -> None:
    """permrag: row-level permissioned retrieval (roles → roaring bitmaps → Milvus filters)."""
    quiet(verbose)
    ctx.obj = Store(shared)


for _opt in reversed(_shared_options()):
    main.params.append(_opt)

tenant_opt = click.option("--tenant", default="default", show_default=True, help="Tenant (casbin domain).")
json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
