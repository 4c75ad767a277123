"""``kvstore stats``: how many records the store holds, counted by the store itself."""

from __future__ import annotations

import click
import orjson

from kvstore.cli.app import (
    as_store,
    literal_console,
    main,
    open_database,
    progress_bar,
    run,
    store_kind,
    url_options,
)
from kvstore.errors import ConfigurationError
from kvstore.factory import DEFAULT_SQL_URL


async def sql_counts(url: str) -> dict[str, int]:
    """Live records per namespace of the SQL store at ``url``: one ``GROUP BY`` query
    counted in the database, no value leaving it."""
    from backends.sql import build_sql_backend  # imported by the command that needs it

    backend = build_sql_backend(url)
    try:
        return await backend.count()
    finally:
        await backend.close()


@main.command()
@url_options
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts (counts are numbers).")
def stats(url: str | None, cache_url: str | None, as_json: bool) -> None:
    """Live records per namespace: on SQL (alone or behind a cache) one count query in the
    database; a Redis or memory store is scanned, with a progress bar. For a tiered store,
    also whether its cache answers and which cache generation is in use. Hit and miss
    counters belong to the running service (``db.stats()`` there): a new process would
    only show zeros, so none are printed.

    \b
    Example:
      kvstore stats --json
    """
    console = literal_console()
    record_url = url or DEFAULT_SQL_URL

    async def work() -> None:
        cache: dict[str, object] | None = None
        async with as_store(open_database(url, cache_url)) as store:
            backend = await store.backend_ready()
            if store_kind(record_url) == "sql":
                counts = await sql_counts(record_url)
            elif backend.capabilities.bulk:
                counts = {}
                with progress_bar(literal_console(stderr=True)) as bar:
                    task = bar.add_task("counting", total=None)
                    async for key, _ in backend.scan():
                        counts[key.namespace] = counts.get(key.namespace, 0) + 1
                        bar.advance(task)
            else:
                raise ConfigurationError(f"{store.description} cannot count its records")
            tier = store.stats().tier
            if tier is not None:
                cache = {"answers": tier.breaker == "closed", "generation": tier.generation}
        counts = dict(sorted(counts.items()))
        if as_json:
            click.echo(orjson.dumps({"records": counts, "cache": cache}).decode())
            return
        from rich.table import Table  # only for the table output

        table = Table("namespace", "records")
        for name, count in counts.items():
            table.add_row(name, f"{count:,}")
        console.print(table)
        if cache is not None:
            answers = "answers" if cache["answers"] else "does not answer (breaker open)"
            console.print(f"cache: {answers}; generation {cache['generation']}")

    run(console, work)
