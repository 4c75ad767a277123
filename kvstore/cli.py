"""The ``kvstore`` command line."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click
from rich.console import Console

from kvstore import demo as demo_module
from kvstore.errors import KVStoreError
from kvstore.factory import DatabaseType, create_database
from kvstore.urls import mask_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from kvstore.interface import Database

T = TypeVar("T")

URL_HELP = "Store URL: memory://, sqlite:///file.db, postgresql://..., redis://... ($KVSTORE_URL)."
CACHE_HELP = "Cache URL for a tiered store: redis://... or memory:// ($KVSTORE_CACHE_URL)."


def open_database(url: str | None, cache_url: str | None = None) -> Database:
    """The database a URL names (and a tiered one when a cache URL is given)."""
    if cache_url:
        return create_database(DatabaseType.TIERED, url, cache_url=cache_url)
    if url is None or url == "memory://":
        return create_database(DatabaseType.MEMORY)
    if url.startswith(("redis://", "rediss://", "unix://", "redis+")):
        return create_database(DatabaseType.REDIS, url)
    return create_database(DatabaseType.SQL, url)


def run(console: Console, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` on a fresh event loop; a kvstore error becomes a clean exit code 1."""
    try:
        return asyncio.run(_call(work))
    except KVStoreError as error:
        fail(console, error)


def fail(console: Console, error: KVStoreError) -> NoReturn:
    """Print a kvstore error (never a traceback or a password) and exit with code 1."""
    console.print(f"[red]error:[/] {type(error).__name__}: {error}")
    raise SystemExit(1) from None


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kvstore")
def main() -> None:
    """kvstore: typed records in SQL, Redis, or Redis in front of SQL.

    \b
    Examples:
      kvstore demo                          play (and resume) a coaching conversation
      KVSTORE_URL=postgresql://localhost/coach kvstore demo
    """


@main.command()
@click.option("--url", envvar="KVSTORE_URL", help=URL_HELP)
@click.option("--cache-url", envvar="KVSTORE_CACHE_URL", help=CACHE_HELP)
@click.option(
    "--turns", default=demo_module.TURNS_PER_RUN, show_default=True, help="Turns per run."
)
@click.option("--reset", is_flag=True, help="Erase the demo user's records first.")
def demo(url: str | None, cache_url: str | None, turns: int, reset: bool) -> None:
    """Play a short coaching conversation; run it again to resume where it stopped."""
    console = Console()
    try:
        database = open_database(url, cache_url)
    except KVStoreError as error:
        fail(console, error)
    console.print(f"[dim]store: {database!r} {mask_url(url) if url else ''}[/]")

    async def work() -> None:
        async with database:
            if reset:
                erased = await demo_module.reset(database)
                console.print(f"erased {erased} records of {demo_module.USER_ID}")
            await demo_module.play(database, console, turns=turns)

    run(console, work)


if __name__ == "__main__":  # pragma: no cover
    main()
