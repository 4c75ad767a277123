"""``kvstore db upgrade|current|partition`` and ``kvstore purge-expired``: the SQL store's
upkeep."""

from __future__ import annotations

import time

import click

from kvstore.cli.app import Exit, literal_console, main, run
from kvstore.factory import DEFAULT_SQL_URL
from kvstore.urls import mask_url

SQL_URL_HELP = "SQL URL ($KVSTORE_URL; default sqlite:///kvstore.db)."


def _sql_url(url: str | None) -> str:
    """The URL after the command, else before it (``kvstore --url X db upgrade``; both read
    ``$KVSTORE_URL``), else the embedded default."""
    return url or click.get_current_context().find_root().params.get("url") or DEFAULT_SQL_URL


@main.group()
def db() -> None:
    """Schema migrations of the SQL store (Alembic)."""


@db.command(name="upgrade")
@click.option("--url", help=SQL_URL_HELP)
def upgrade_command(url: str | None) -> None:
    """Bring the database to the current schema (safe to run again, or concurrently).

    \b
    Example:
      KVSTORE_URL=postgresql://coach@db/coach kvstore db upgrade
    """
    console = literal_console()
    target = _sql_url(url)

    async def work() -> None:
        from backends.sql.migrate import head_revision, upgrade

        revision = await upgrade(target)
        console.print(f"{mask_url(target)} is at revision {revision} (head {head_revision()})")

    run(console, work)


@db.command(name="current")
@click.option("--url", help=SQL_URL_HELP)
def current_command(url: str | None) -> None:
    """Print the database's schema revision (exit code 5 if it is behind the code's)."""
    console = literal_console()
    target = _sql_url(url)

    async def work() -> int:
        from backends.sql.migrate import current_revision, head_revision

        revision = await current_revision(target)
        head = head_revision()
        console.print(f"current {revision or 'none (never migrated)'}, head {head}")
        return 0 if revision == head else Exit.SCHEMA_BEHIND

    raise SystemExit(run(console, work))


@db.command(name="partition")
@click.option("--url", help=SQL_URL_HELP)
@click.option(
    "--partitions",
    default=16,
    show_default=True,
    type=click.IntRange(min=2, max=1024),
    help="Hash partitions by owner (16: measured in docs/scale.md).",
)
def partition_command(url: str | None, partitions: int) -> None:
    """Hash-partition the records table of a PostgreSQL store by owner, copying its rows
    in one transaction: reads go on, writes wait until it commits (docs/scale.md).

    \b
    Example:
      KVSTORE_URL=postgresql://coach@db/coach kvstore db partition --partitions 16
    """
    console = literal_console()
    target = _sql_url(url)

    async def work() -> None:
        from backends.sql.migrate import partition

        started = time.perf_counter()
        copied = await partition(target, partitions)
        done = (
            "already"
            if copied is None
            else f"{copied} records copied in {time.perf_counter() - started:.1f} s"
        )
        console.print(
            f"{mask_url(target)}: kv_records is in {partitions} partitions by owner ({done})"
        )

    run(console, work)


@main.command(name="purge-expired")
@click.option("--url", help=SQL_URL_HELP)
@click.option(
    "--batch-size",
    default=1000,
    type=click.IntRange(min=1),
    show_default=True,
    help="Rows per transaction.",
)
def purge_expired(url: str | None, batch_size: int) -> None:
    """Delete expired records from the SQL store, in batches (they are never returned
    anyway; this reclaims the space).

    \b
    Example:
      kvstore purge-expired --batch-size 5000
    """
    console = literal_console()

    async def work() -> None:
        from backends.sql import build_sql_backend

        backend = build_sql_backend(_sql_url(url))
        try:
            deleted = await backend.purge_expired(batch_size=batch_size)
        finally:
            await backend.close()
        console.print(f"deleted {deleted} expired records")

    run(console, work)
