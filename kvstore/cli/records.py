"""``kvstore get|put|delete|ls`` and ``kvstore records migrate``."""

from __future__ import annotations

import importlib
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
from pydantic import ValidationError

from kvstore.cli.app import (
    Exit,
    as_store,
    fail,
    literal_console,
    main,
    open_database,
    progress_bar,
    run,
    url_options,
)
from kvstore.errors import ConfigurationError, InvalidRecordError
from kvstore.keys import Key, check_namespace
from kvstore.migrate import migrate_collection
from kvstore.models import Record

if TYPE_CHECKING:
    from backends.base import Entry
    from kvstore.store import Store


def _as_json(store: Store, namespace: str, entry: Entry) -> Any:
    collection = store.built_in.get(namespace)
    if collection is None:
        return store.serializer.loads(entry.value)
    return collection.decode(entry).model_dump(mode="json")


@main.command()
@url_options
@click.argument("namespace")
@click.argument("key", nargs=-1, required=True)
def get(url: str | None, cache_url: str | None, namespace: str, key: tuple[str, ...]) -> None:
    """Print one record as JSON (exit code 4 if there is none).

    \b
    Examples:
      kvstore get state user-1 session-1
      kvstore get user user-1
    """
    console = literal_console(stderr=True)

    async def work() -> int:
        async with as_store(open_database(url, cache_url)) as store:
            backend = await store.backend_ready()
            entry = await backend.get(Key(check_namespace(namespace), key))
            if entry is None:
                console.print(f"no record {namespace} {' '.join(key)}")
                return Exit.NOT_FOUND
            record = _as_json(store, namespace, entry)
            click.echo(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())
            return 0

    sys.exit(run(console, work))


@main.command()
@url_options
@click.argument("namespace", type=click.Choice(["state", "context", "identity", "user"]))
@click.option("--file", "source", type=click.File("rb"), default="-", help="JSON; - is stdin.")
@click.option("--expected-version", type=int, help="Save only if the stored version is this.")
def put(
    url: str | None,
    cache_url: str | None,
    namespace: str,
    source: Any,
    expected_version: int | None,
) -> None:
    """Validate a JSON record against its model and save it.

    \b
    Example:
      echo '{"user_id": "u1", "session_id": "s1", "state": "CHAT"}' | kvstore put state
    """
    console = literal_console(stderr=True)
    database = as_store(open_database(url, cache_url))
    collection = database.built_in[namespace]
    try:
        data = orjson.loads(source.read())
        if isinstance(data, dict):
            for name in ("schema_version", "version", "created_at", "updated_at"):
                data.pop(name, None)
        record = collection.model.model_validate(data)
    except (orjson.JSONDecodeError, ValidationError) as exc:
        fail(console, InvalidRecordError(f"not a valid {collection.model.__name__}: {exc}"))

    async def work() -> None:
        async with database:
            saved = await collection.save(record, expected_version=expected_version)
            keys = " ".join(saved.key_components())
            console.print(f"saved {namespace} {keys} version {saved.version}")

    run(console, work)


@main.command()
@url_options
@click.argument("namespace")
@click.argument("key", nargs=-1, required=True)
@click.option("--expected-version", type=int, help="Delete only if the stored version is this.")
def delete(
    url: str | None,
    cache_url: str | None,
    namespace: str,
    key: tuple[str, ...],
    expected_version: int | None,
) -> None:
    """Delete one record (exit code 4 if there was none).

    \b
    Example:
      kvstore delete identity user-1 calm-leader
    """
    console = literal_console(stderr=True)

    async def work() -> int:
        async with as_store(open_database(url, cache_url)) as store:
            backend = await store.backend_ready()
            existed = await backend.delete(
                Key(check_namespace(namespace), key), expected_version=expected_version
            )
            console.print(f"{'deleted' if existed else 'no record'} {namespace} {' '.join(key)}")
            return 0 if existed else Exit.NOT_FOUND

    sys.exit(run(console, work))


@main.command(name="ls")
@url_options
@click.argument("namespace")
@click.argument("prefix", nargs=-1, required=True, metavar="USER [KEY...]")
@click.option(
    "--limit",
    default=100,
    type=click.IntRange(min=1),
    show_default=True,
    help="At most this many records.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines for scripts.")
def list_records(
    url: str | None,
    cache_url: str | None,
    namespace: str,
    prefix: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """List a user's records in a namespace, in key order.

    \b
    Examples:
      kvstore ls state user-1            the user's sessions
      kvstore ls identity user-1 --json
    """
    console = literal_console()

    async def work() -> None:
        async with as_store(open_database(url, cache_url)) as store:
            backend = await store.backend_ready()
            rows = await backend.list(check_namespace(namespace), prefix, limit=limit)
            if as_json:
                for key, entry in rows:
                    click.echo(
                        orjson.dumps(
                            {
                                "key": list(key.components),
                                "version": entry.version,
                                "updated_at": entry.updated_at,
                                "value": _as_json(store, namespace, entry),
                            }
                        ).decode()
                    )
                return
            from rich.table import Table  # only for the table output

            table = Table("key", "version", "updated (UTC)", "expires (UTC)")
            for key, entry in rows:
                table.add_row(
                    " ".join(key.components),
                    str(entry.version),
                    f"{entry.updated_at:%Y-%m-%d %H:%M:%S}",
                    f"{entry.expires_at:%Y-%m-%d %H:%M:%S}" if entry.expires_at else "-",
                )
            console.print(table)

    run(console, work)


@main.group()
def records() -> None:
    """Operations over every stored record."""


@records.command()
@url_options
@click.option(
    "--namespace",
    multiple=True,
    help="Only these namespaces (default: all built-in ones); with --model, the one to migrate.",
)
@click.option(
    "--model",
    "model_spec",
    help="Your own record class as module:Class (imported from the current directory or "
    "the path; importing it registers its upgrade functions), e.g. myapp.records:Note.",
)
@click.option("--batch-size", default=500, type=click.IntRange(min=1), show_default=True)
def migrate(
    url: str | None,
    cache_url: str | None,
    namespace: tuple[str, ...],
    model_spec: str | None,
    batch_size: int,
) -> None:
    """Rewrite records stored under an older schema version through the registered
    upgrade functions. Idempotent and resumable: records already current are skipped, so
    run it again after an interruption.

    \b
    Examples:
      kvstore records migrate --namespace state
      kvstore records migrate --model myapp.records:Note --namespace notes
    """
    console = literal_console(stderr=True)
    model = import_record(model_spec) if model_spec else None
    if model is not None and len(namespace) != 1:
        raise ConfigurationError("--model migrates one namespace: give exactly one --namespace")

    async def work() -> None:
        async with as_store(open_database(url, cache_url)) as store:
            if model is not None:
                targets = {namespace[0]: store.collection(model, namespace[0])}
            else:
                unknown = sorted(set(namespace) - set(store.built_in))
                if unknown:
                    raise ConfigurationError(
                        f"not a built-in namespace: {', '.join(unknown)} (your own records: "
                        "--model module:Class --namespace NAME)"
                    )
                targets = {name: store.built_in[name] for name in namespace or store.built_in}
            with progress_bar(console) as progress:
                for name, collection in targets.items():
                    task = progress.add_task(f"migrating {name}", total=None)
                    report = await migrate_collection(
                        collection,
                        batch_size=batch_size,
                        progress=partial(progress.advance, task),
                    )
                    progress.update(task, total=report.scanned)
                    console.print(
                        f"{name}: scanned {report.scanned}, migrated {report.migrated}, "
                        f"skipped after a concurrent save {report.conflicts}"
                    )

    run(console, work)


def import_record(spec: str) -> type[Record]:
    """The ``Record`` subclass that ``module:Class`` names (as uvicorn and celery take an
    app), importing the module from the current directory or ``sys.path``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"--model takes module:Class (e.g. myapp.records:Note), not {spec}"
        )
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name}: {exc}") from None
    target = getattr(module, attribute, None)
    if not (isinstance(target, type) and issubclass(target, Record) and target.KEY_FIELDS):
        raise ConfigurationError(f"{spec} is not a Record subclass with KEY_FIELDS")
    return target
