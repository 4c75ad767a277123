"""The ``kvstore`` command group and what its commands share: URL options, opening the
database, running a coroutine with clean errors and exit codes."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text

from kvstore.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    KVStoreError,
)
from kvstore.factory import DEFAULT_SQL_URL, DatabaseType, create_database
from kvstore.store import Store

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rich.progress import Progress

    from kvstore.interface import Database

T = TypeVar("T")

URL_HELP = (
    "Store URL: sqlite:///file.db (default: sqlite:///kvstore.db), postgresql://..., "
    "redis://..., memory:// ($KVSTORE_URL)."
)
CACHE_HELP = "Cache URL for a tiered store: redis://... or memory:// ($KVSTORE_CACHE_URL)."


def url_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--url`` and ``--cache-url`` after the command, or before it (``kvstore --url X
    import ...``), or ``$KVSTORE_URL`` and ``$KVSTORE_CACHE_URL``, in that order."""

    @functools.wraps(command)
    def with_urls(*args: Any, url: str | None, cache_url: str | None, **kwargs: Any) -> None:
        given = click.get_current_context().find_root().params
        command(
            *args,
            url=url or given.get("url"),
            cache_url=cache_url or given.get("cache_url"),
            **kwargs,
        )

    with_urls = click.option("--cache-url", help=CACHE_HELP)(with_urls)
    return click.option("--url", help=URL_HELP)(with_urls)


def store_kind(url: str) -> Literal["memory", "redis", "sql"]:
    """The kind of store a URL names: ``memory://``, a Redis URL, or else SQL (whose
    builder rejects what it is not)."""
    if url == "memory://":
        return "memory"
    if url.startswith(("redis://", "rediss://", "unix://", "redis+")):
        return "redis"
    return "sql"


def open_database(url: str | None, cache_url: str | None = None) -> Database:
    """The database a URL names (and a tiered one when a cache URL is given)."""
    if cache_url:  # in front of the store URL, or of the embedded default
        return create_database(DatabaseType.TIERED, url or DEFAULT_SQL_URL, cache_url=cache_url)
    if url is None:
        return create_database(DatabaseType.SQL)  # the embedded default: ./kvstore.db
    kind = store_kind(url)
    if kind == "memory":
        return create_database(DatabaseType.MEMORY)
    if kind == "redis":
        return create_database(DatabaseType.REDIS, url)
    return create_database(DatabaseType.SQL, url)


def as_store(database: Database) -> Store:
    """``database`` as the kvstore ``Store`` every built store is (for the commands that
    need its backend's primitives: raw keys, scans, capabilities)."""
    if not isinstance(database, Store):
        raise ConfigurationError("this command needs a kvstore Store")
    return database


def literal_console(*, stderr: bool = False) -> Console:
    """A console that prints text as given: no markup, emoji codes or highlighting, so
    what a user typed or stored (an id like ``u[x]`` or ``[/b]``) shows literally, and no
    wrapping at the terminal's width (an error stays one line for grep and for logs). Not
    on a terminal, tables are as wide as their contents: nothing is cut to 80 columns."""
    console = Console(stderr=stderr, markup=False, emoji=False, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = UNBOUNDED_WIDTH
    return console


UNBOUNDED_WIDTH = 1_000_000
"""The width of a console that is not a terminal (a pipe, a file, a log)."""


def progress_bar(console: Console) -> Progress:
    """A bar with a count and a rate, on ``console`` (commands give a stderr one, so that
    stdout stays their report or JSON); drawn only on a terminal, so a log or a pipe gets
    the command's report and errors alone."""
    from rich.progress import (  # imported by the commands that show one
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(show_speed=True),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


class Exit(IntEnum):
    """The exit codes of every command (listed in ``kvstore --help`` and the README)."""

    OK = 0
    ERROR = 1
    """A kvstore error: bad input, bad URL or option, a file that cannot be read or written."""
    USAGE = 2
    """click's usage error: an unknown option, a missing argument, a bad value."""
    REJECTED = 3
    """``import`` rejected lines; ``cache verify`` found differences it did not repair."""
    NOT_FOUND = 4
    """``get`` or ``delete``: no such record."""
    SCHEMA_BEHIND = 5
    """``db current``: the database's schema is behind the code's."""
    CONFLICT = 6
    """``--expected-version`` did not match the stored version: read again and retry."""
    UNAVAILABLE = 7
    """A server did not answer (down, unreachable, too slow): retry later."""
    INTERNAL = 70
    """A bug in kvstore (sysexits' EX_SOFTWARE): one line; ``KVSTORE_TRACEBACK=1`` shows it."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT, as shells report it)."""


def run(console: Console, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` on a fresh event loop (errors end as :class:`KVStoreGroup` says)."""
    del console  # errors go to stderr whatever console the command reports on
    return asyncio.run(_call(work))


def exit_code(error: KVStoreError) -> Exit:
    """The exit code of a kvstore error."""
    if isinstance(error, ConflictError):
        return Exit.CONFLICT
    if isinstance(error, BackendUnavailableError):
        return Exit.UNAVAILABLE
    return Exit.ERROR


def fail(console: Console | None, error: KVStoreError) -> NoReturn:
    """Print a kvstore error on stderr in one line (never a traceback or a password) and
    exit with its code (:func:`exit_code`)."""
    del console  # always stderr: stdout stays the command's report or JSON
    say_error(type(error).__name__, str(error))
    raise SystemExit(exit_code(error)) from None


def say_error(kind: str, message: str) -> None:
    """``error: kind: message`` on stderr, on one line whatever the message holds."""
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    literal_console(stderr=True).print(Text.assemble(("error:", "red"), f" {kind}: {one_line}"))


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


class KVStoreGroup(click.Group):
    """The command group: whatever a command raises ends in one line on stderr and an exit
    code of :class:`Exit`, never a traceback: a kvstore error (building the store from a bad
    URL included) as :func:`fail` says, a file that cannot be read or written as
    ``Exit.ERROR``, anything else as ``Exit.INTERNAL`` (a bug; ``KVSTORE_TRACEBACK=1``
    shows its traceback), Ctrl-C as ``Exit.INTERRUPTED``."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KVStoreError as error:
            fail(None, error)
        except (OSError, EOFError) as error:  # files: missing directory, full disk, bad gzip
            say_error(type(error).__name__, str(error))
            raise SystemExit(Exit.ERROR) from None
        except KeyboardInterrupt:
            say_error("interrupted", "stopped by Ctrl-C")
            raise SystemExit(Exit.INTERRUPTED) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as error:
            if os.environ.get("KVSTORE_TRACEBACK") == "1":
                raise
            say_error(f"internal error ({type(error).__name__})", str(error) or repr(error))
            raise SystemExit(Exit.INTERNAL) from None


def _print_version(ctx: click.Context) -> None:
    """``kvstore --version``: the installed distribution's version, whatever the
    distribution is named (the import name is ``kvstore``; the distribution's may differ)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    names = ["kvstore-tiered", "kvstore", *packages_distributions().get("kvstore", [])]
    for name in names:
        try:
            click.echo(f"kvstore, version {version(name)}")
            break
        except PackageNotFoundError:
            continue
    else:
        click.echo("kvstore, version unknown (not installed as a distribution)")
    ctx.exit()


@click.group(cls=KVStoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _, given: _print_version(ctx) if given else None,
    help="Show the version and exit.",
)
@click.option("--url", envvar="KVSTORE_URL", help=URL_HELP)
@click.option("--cache-url", envvar="KVSTORE_CACHE_URL", help=CACHE_HELP)
def main(url: str | None, cache_url: str | None) -> None:
    """kvstore: typed records in SQL, Redis, or Redis in front of SQL.

    Every command reads the store URL from --url or $KVSTORE_URL (default: the SQLite file
    ./kvstore.db) and, for a tiered store, the cache from --cache-url or $KVSTORE_CACHE_URL.

    \b
    Examples:
      kvstore demo                              a coaching conversation that resumes
      kvstore ls state user-1                   a user's sessions
      kvstore export -o backup.jsonl.gz         back up everything
      kvstore import backup.jsonl.gz            restore it (idempotent)
      kvstore cache verify --repair             check the cache against SQL

    \b
    Exit codes (errors print one line on stderr, never a traceback):
      0 done                1 error               2 usage error
      3 rejected lines or cache differences       4 no such record
      5 schema behind       6 version conflict    7 server unavailable (retry)
      70 internal error     130 interrupted
    """


def entry() -> NoReturn:
    """The ``kvstore`` console script: run the command, flush what it printed, and end the
    process at once with its exit code. Every command closes what it opened (stores, files)
    before it returns, so nothing is left for the interpreter's teardown, which would take
    a tenth of a second more to free every module of SQLAlchemy and pydantic."""
    try:
        main()
    except SystemExit as done:
        status = done.code
    else:  # pragma: no cover - click's standalone mode always exits
        status = 0
    if status is not None and not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)
