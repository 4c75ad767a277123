"""The ``kvstore`` command group and what its commands share: URL options, opening the
database, running a coroutine with clean errors and exit codes."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text

from kvstore.errors import ConfigurationError, KVStoreError
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
    wrapping at the terminal's width (an error stays one line for grep and for logs)."""
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, soft_wrap=True)


def progress_bar(console: Console) -> Progress:
    """A bar with a count and a rate, on ``console`` (commands give a stderr one, so that
    stdout stays their report or JSON)."""
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
    )


def run(console: Console, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` on a fresh event loop; a kvstore error becomes a clean exit code 1."""
    try:
        return asyncio.run(_call(work))
    except KVStoreError as error:
        fail(console, error)


def fail(console: Console, error: KVStoreError) -> NoReturn:
    """Print a kvstore error (never a traceback or a password) and exit with code 1."""
    console.print(Text.assemble(("error:", "red"), f" {type(error).__name__}: {error}"))
    raise SystemExit(1) from None


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


class KVStoreGroup(click.Group):
    """The command group: a kvstore error raised anywhere in a command (building the store
    from a bad URL included) ends in one line and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KVStoreError as error:
            fail(literal_console(stderr=True), error)


@click.group(cls=KVStoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kvstore")
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
    Exit codes: 0 done, 1 error (one line, never a traceback), 2 usage error,
    3 rejected lines or cache differences, 4 no such record, 5 schema behind.
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
