"""``kvstore export|import``: records to and from JSON Lines files (backup and restore)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click
from rich.text import Text

from kvstore.cli.app import (
    Exit,
    as_store,
    literal_console,
    main,
    open_database,
    progress_bar,
    run,
    say_error,
    store_kind,
    url_options,
)
from kvstore.errors import ConfigurationError
from kvstore.factory import DEFAULT_SQL_URL
from kvstore.transfer import ImportReport, export_lines, import_lines, open_text

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from backends.base import Backend


def _missing_sqlite_file(url: str) -> bool:
    """Whether ``url`` names a SQLite file that is not there yet."""
    if not url.startswith("sqlite"):
        return False
    from sqlalchemy.engine import make_url  # imported by the commands that need it

    path = make_url(url).database
    return path is not None and not Path(path).exists()


@contextlib.contextmanager
def open_rejects(path: Path | None) -> Iterator[IO[bytes] | None]:
    """The rejects file open for writing (``None``: a dry run, which writes no file)."""
    if path is None:
        yield None
        return
    with path.open("wb") as sink:
        yield sink


async def dry_run_into(
    url: str | None, load: Callable[[Backend | None], Awaitable[ImportReport]]
) -> ImportReport:
    """Run ``load`` as a dry run against the store at ``url`` without creating or migrating
    it: a SQLite file not there yet or a database without kvstore's tables holds nothing
    (``load(None)``: every record would be written); a schema behind the code's exits with
    code 5, since reading it would mean migrating it."""
    target = url or DEFAULT_SQL_URL
    if store_kind(target) == "sql":
        from backends.sql.migrate import code_head, current_revision

        if _missing_sqlite_file(target):
            return await load(None)
        revision = await current_revision(target)
        if revision is None:
            return await load(None)
        head = code_head()
        if revision != head:
            say_error(
                "schema behind",
                f"the database is at revision {revision}, the code at {head}: a dry run does "
                "not migrate it (kvstore db upgrade does)",
            )
            raise SystemExit(Exit.SCHEMA_BEHIND)
    async with as_store(open_database(target)) as store:
        return await load(await store.backend_ready())


@main.command(name="export")
@url_options
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="JSON Lines file; gzip if it ends in .gz.",
)
@click.option("--namespace", help="Only this namespace.")
@click.option("--user", "owner", help="Only this user's records.")
def export_command(
    url: str | None,
    cache_url: str | None,
    output: Path,
    namespace: str | None,
    owner: str | None,
) -> None:
    """Stream records to JSON Lines (constant memory), one record per line.

    \b
    Examples:
      kvstore export -o backup.jsonl.gz
      kvstore export --user user-1 -o user-1.jsonl
    """
    console = literal_console(stderr=True)

    # written under a temporary name, renamed when complete: an interrupted export never
    # leaves a file that looks like a whole backup
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    if not output.parent.is_dir():
        raise ConfigurationError(f"no directory {output.parent} to write {output.name} in")

    async def work() -> int:
        count = 0
        try:
            async with as_store(open_database(url, cache_url)) as store:
                backend = await store.backend_ready()
                with open_text(partial, "wb") as sink, progress_bar(console) as progress:
                    task = progress.add_task("exporting", total=None)
                    async for line in export_lines(backend, namespace=namespace, owner=owner):
                        sink.write(line)
                        count += 1
                        if count % 1000 == 0:
                            progress.update(task, completed=count)
                    progress.update(task, completed=count, total=count)
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
        console.print(f"exported {count} records to {output}")
        return count

    run(console, work)


@main.command(name="import")
@url_options
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--rejects",
    type=click.Path(path_type=Path),
    help="Where bad lines go (default: SOURCE.rejects.jsonl).",
)
@click.option(
    "--dry-run", is_flag=True, help="Validate and count what a real run would write; write nothing."
)
@click.option("--batch-size", default=500, type=click.IntRange(min=1), show_default=True)
def import_command(
    url: str | None,
    cache_url: str | None,
    source: Path,
    rejects: Path | None,
    dry_run: bool,
    batch_size: int,
) -> None:
    """Load an export file idempotently: versions and timestamps are kept, a record is
    written only where the store has none or an older version, so re-running changes
    nothing. Bad lines are reported with their line number and copied to a rejects file;
    they never stop the good ones (exit code 3 if there were any). A dry run writes
    nothing, no rejects file either, and never creates or migrates a database: it compares
    the file with what the SQL store holds (a cache in front is not consulted).

    \b
    Examples:
      kvstore import backup.jsonl.gz
      kvstore import backup.jsonl --dry-run
    """
    console = literal_console(stderr=True)
    rejects_path = rejects or source.with_name(source.name + ".rejects.jsonl")

    async def load(backend: Backend | None) -> ImportReport:
        with (
            open_text(source, "rb") as lines,
            open_rejects(None if dry_run else rejects_path) as reject_sink,
            progress_bar(console) as progress,
        ):
            task = progress.add_task("importing", total=None)
            return await import_lines(
                backend,
                iter(lines),
                rejects=reject_sink,
                dry_run=dry_run,
                batch_size=batch_size,
                progress=lambda n: progress.advance(task, n),
            )

    async def work() -> int:
        try:
            if dry_run:
                report = await dry_run_into(url, load)
            else:
                async with as_store(open_database(url, cache_url)) as store:
                    report = await load(await store.backend_ready())
        except BaseException:
            if rejects_path.exists() and not rejects_path.stat().st_size:
                rejects_path.unlink()  # interrupted before any bad line: no empty file left
            raise
        for number, reason in report.rejected[:50]:
            console.print(Text.assemble((f"line {number}:", "red"), f" {reason}"))
        if len(report.rejected) > 50:
            where = "" if dry_run else f" in {rejects_path}"
            console.print(f"... and {len(report.rejected) - 50} more{where}")
        verb = "would write" if dry_run else "written"
        console.print(
            f"read {report.read}, {verb} {report.written}, unchanged {report.unchanged}, "
            f"rejected {len(report.rejected)}"
            + (f" (see {rejects_path})" if report.rejected and not dry_run else "")
        )
        if not report.rejected:
            rejects_path.unlink(missing_ok=True)
            return 0
        return Exit.REJECTED

    sys.exit(run(console, work))
