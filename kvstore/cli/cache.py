"""``kvstore cache follow|warm|verify``: the tiered store's cache, from the command line."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import click
import orjson

from kvstore.cli.app import (
    Exit,
    literal_console,
    main,
    open_database,
    progress_bar,
    run,
    url_options,
)
from kvstore.errors import ConfigurationError
from kvstore.keys import check_namespace

if TYPE_CHECKING:
    from kvstore.interface import Database

EVERY = sys.maxsize
"""The limit that means every record of the namespace: the tier streams them in chunks."""


def _tiered(url: str | None, cache_url: str | None) -> Database:
    """The tiered store the URLs name; a configuration error without a cache URL."""
    if not cache_url:
        raise ConfigurationError("cache commands need --cache-url (or $KVSTORE_CACHE_URL)")
    return open_database(url, cache_url)


def _limit(limit: int, every: bool) -> int:
    return EVERY if every else limit


@main.group()
def cache() -> None:
    """The tiered store's cache: warm it up, check it against SQL, follow SQL's changes."""


@cache.command()
@url_options
@click.option(
    "--seconds", type=click.FloatRange(min=0), help="Stop after this long (default: until Ctrl-C)."
)
def follow(url: str | None, cache_url: str | None, seconds: float | None) -> None:
    """Apply SQL's change feed to the cache until interrupted: for deployments whose service
    processes run with follow_changes=False. Prints what it applied when it stops.

    \b
    Example:
      kvstore cache follow --url postgresql://... --cache-url redis://cache:6379/0
    """
    console = literal_console()

    async def work() -> None:
        async with _tiered(url, cache_url) as database:
            tier = database.stats().tier
            if tier is None or not tier.following:
                raise ConfigurationError("this system of record has no change feed")
            console.print("following the change feed (Ctrl-C stops)")
            try:
                if seconds is None:
                    await asyncio.Event().wait()
                else:
                    await asyncio.sleep(seconds)
            finally:
                stats = database.stats().tier
                if stats is not None:
                    console.print(
                        f"applied {stats.feed_changes} changes; backlog {stats.feed_backlog}, "
                        f"feed read errors {stats.feed_errors}, "
                        f"cache generation {stats.generation}"
                    )

    run(console, work)


@cache.command()
@url_options
@click.option("--namespace", default="state", show_default=True)
@click.option("--user", "owner", help="Only this user's records.")
@click.option(
    "--limit",
    default=1000,
    type=click.IntRange(min=1),
    show_default=True,
    help="The newest this many.",
)
@click.option("--all", "every", is_flag=True, help="Every record of the namespace.")
def warm(
    url: str | None,
    cache_url: str | None,
    namespace: str,
    owner: str | None,
    limit: int,
    every: bool,
) -> None:
    """Load the most recently updated records from SQL into the cache, 500 per cache call
    with a progress bar (never over newer cache entries, never a deleted record back).
    Fails, exit code 1, if the cache does not answer.

    \b
    Examples:
      kvstore cache warm --namespace state --limit 5000
      kvstore cache warm --all
    """
    console = literal_console()
    wanted = _limit(limit, every)

    async def work() -> None:
        async with _tiered(url, cache_url) as database:
            with progress_bar(literal_console(stderr=True)) as bar:
                task = bar.add_task(f"warming {namespace}", total=None)
                report = await database.warm_cache(
                    check_namespace(namespace),
                    owner=owner,
                    limit=wanted,
                    progress=lambda n: bar.advance(task, n),
                )
        console.print(
            f"read {report.read} {namespace} records, put {report.landed} into the cache "
            f"({report.read - report.landed} cached already or changed meanwhile)"
        )

    run(console, work)


@cache.command()
@url_options
@click.option("--namespace", default="state", show_default=True)
@click.option("--user", "owner", help="Only this user's records.")
@click.option(
    "--limit",
    default=10_000,
    type=click.IntRange(min=1),
    show_default=True,
    help="The newest this many.",
)
@click.option("--all", "every", is_flag=True, help="Every record of the namespace.")
@click.option("--repair", is_flag=True, help="Invalidate every stale or extra cache entry.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def verify(
    url: str | None,
    cache_url: str | None,
    namespace: str,
    owner: str | None,
    limit: int,
    every: bool,
    repair: bool,
    as_json: bool,
) -> None:
    """Compare the cache with SQL, 500 keys per cache call with a progress bar; exit code 3
    if they differ (and were not repaired), 1 if the cache does not answer (nothing is
    reported as verified that was not).

    \b
    Examples:
      kvstore cache verify --namespace state
      kvstore cache verify --all --repair
      kvstore cache verify --user user-1 --repair
    """
    console = literal_console()
    wanted = _limit(limit, every)

    async def work() -> int:
        async with _tiered(url, cache_url) as database:
            with progress_bar(literal_console(stderr=True)) as bar:
                task = bar.add_task(f"verifying {namespace}", total=None)
                report = await database.verify_cache(
                    check_namespace(namespace),
                    owner=owner,
                    repair=repair,
                    limit=wanted,
                    progress=lambda n: bar.advance(task, n),
                )
        differences = [*report.stale, *report.extra]
        if as_json:
            click.echo(
                orjson.dumps(
                    {
                        "checked": report.checked,
                        "stale": [list(k.components) for k in report.stale],
                        "extra": [list(k.components) for k in report.extra],
                        "missing": report.missing,
                        "repaired": report.repaired,
                    }
                ).decode()
            )
        else:
            from rich.table import Table  # only for the table output

            table = Table("checked", "stale", "extra", "not cached", "repaired")
            table.add_row(
                str(report.checked),
                str(len(report.stale)),
                str(len(report.extra)),
                str(report.missing),
                "yes" if report.repaired else "no",
            )
            console.print(table)
            for key in differences[:20]:
                console.print(f"  differs: {namespace} {' '.join(key.components)}")
        return 0 if not differences or report.repaired else Exit.REJECTED

    raise SystemExit(run(console, work))
