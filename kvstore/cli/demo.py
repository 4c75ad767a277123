"""``kvstore demo``: the first thing a newcomer runs."""

from __future__ import annotations

import click
from rich.console import Console
from rich.text import Text

from kvstore import demo as demo_module
from kvstore.cli.app import fail, main, open_database, run, url_options
from kvstore.errors import KVStoreError
from kvstore.store import Store
from kvstore.urls import mask_url


@main.command()
@url_options
@click.option(
    "--turns",
    default=demo_module.TURNS_PER_RUN,
    type=click.IntRange(min=0),
    show_default=True,
    help="Turns to play.",
)
@click.option("--reset", is_flag=True, help="Erase the demo user's records first.")
def demo(url: str | None, cache_url: str | None, turns: int, reset: bool) -> None:
    """Play a short coaching conversation; run it again to resume where it stopped."""
    console = Console()
    try:
        database = open_database(url, cache_url)
    except KVStoreError as error:
        fail(console, error)
    where = database.description if isinstance(database, Store) else mask_url(url or "")
    console.print(Text(f"store: {where}", style="dim"))

    async def work() -> None:
        async with database:
            if reset:
                erased = await demo_module.reset(database)
                console.print(f"erased {erased} records of {demo_module.USER_ID}")
            await demo_module.play(database, console, turns=turns)

    run(console, work)
