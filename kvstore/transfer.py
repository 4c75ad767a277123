"""Export and import: records as JSON Lines, streamed, validated, idempotent.

One line per record::

    {"namespace": "state", "key": ["user-1", "session-1"], "version": 3,
     "created_at": "2026-11-26T10:00:00+00:00", "updated_at": "...", "expires_at": null,
     "value": {"user_id": "user-1", "session_id": "session-1", "state": "CHAT", ...}}

Export streams with :meth:`Backend.scan` (constant memory); import validates every line
(the built-in namespaces against their record model), writes in batches with
:meth:`Backend.restore` (versions and timestamps kept; re-running changes nothing), and sends
each bad line to a rejects file with its line number and reason instead of stopping.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import orjson

from backends.base import Backend, Entry
from kvstore.errors import ConfigurationError, KVStoreError, SerializationError
from kvstore.keys import Key
from kvstore.models import ContextRecord, IdentityRecord, Record, StateRecord, UserRecord
from serializers import JSONSerializer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

BUILT_IN_MODELS: dict[str, type[Record]] = {
    "state": StateRecord,
    "context": ContextRecord,
    "identity": IdentityRecord,
    "user": UserRecord,
}
"""The record model of each built-in namespace; lines of these are validated on import."""


def entry_to_line(key: Key, entry: Entry) -> bytes:
    """One export line (with the trailing newline)."""
    return (
        orjson.dumps(
            {
                "namespace": key.namespace,
                "key": list(key.components),
                "version": entry.version,
                "created_at": entry.created_at,
                "updated_at": entry.updated_at,
                "expires_at": entry.expires_at,
                "value": orjson.Fragment(entry.value),
            }
        )
        + b"\n"
    )


class BadLineError(KVStoreError):
    """An import line that is not a valid exported record."""


_JSON = JSONSerializer()


def line_to_entry(line: bytes) -> tuple[Key, Entry]:
    """Parse and validate one export line; raise :class:`BadLineError` saying why not.

    The line is checked first for what the stored format cannot carry (the parser would
    turn an integer outside 64 bits into a float; PostgreSQL refuses NUL characters), so
    a value is stored as written or not at all."""
    try:
        _JSON.check(line, "value")
        data = orjson.loads(line)
    except SerializationError as exc:
        raise BadLineError(str(exc)) from None
    except orjson.JSONDecodeError as exc:
        raise BadLineError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadLineError("not a JSON object")
    try:
        key = Key(data["namespace"], tuple(data["key"]))
        version = data["version"]
        if not isinstance(version, int) or version < 1:
            raise BadLineError("version must be a positive integer")
        created_at = _timestamp(data["created_at"])
        updated_at = _timestamp(data["updated_at"])
        expires_at = None if data["expires_at"] is None else _timestamp(data["expires_at"])
        value = data["value"]
    except (KeyError, TypeError) as exc:
        raise BadLineError(f"missing or malformed field: {exc}") from None
    except KVStoreError as exc:
        raise BadLineError(str(exc)) from None
    if not isinstance(value, dict):
        raise BadLineError("value must be a JSON object")
    model = BUILT_IN_MODELS.get(key.namespace)
    if model is not None:
        record = _validate(model, value)
        if record.key_components() != key.components:
            raise BadLineError("key does not match the record's own ids")
    return key, Entry(orjson.dumps(value), version, created_at, updated_at, expires_at)


def _validate(model: type[Record], value: dict[str, Any]) -> Record:
    try:
        return model.from_stored(dict(value))
    except SerializationError as exc:
        first = str(exc).splitlines()[:3]
        raise BadLineError(f"not a valid {model.__name__}: {' '.join(first)}") from None


def _timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise BadLineError("timestamps must be ISO 8601 strings")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadLineError(f"not an ISO 8601 timestamp: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise BadLineError("timestamps must carry a UTC offset")
    return parsed


def open_text(path: Path, mode: str) -> IO[bytes]:
    """Open ``path`` for binary reading or writing, gzip-compressed if it ends in ``.gz``."""
    if mode not in ("rb", "wb"):
        raise ConfigurationError("mode must be rb or wb")
    if path.suffix == ".gz":
        return gzip.open(path, mode)  # type: ignore[return-value]
    return path.open(mode)


async def export_lines(
    backend: Backend, *, namespace: str | None = None, owner: str | None = None
) -> AsyncIterator[bytes]:
    """Export lines of every live record (of one namespace and/or owner), in key order."""
    _require_bulk(backend)
    async for key, entry in backend.scan(namespace=namespace, owner=owner):
        yield entry_to_line(key, entry)


@dataclass
class ImportReport:
    """What an import did."""

    read: int = 0
    written: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


async def import_lines(
    backend: Backend | None,
    lines: Iterator[bytes],
    *,
    rejects: IO[bytes] | None = None,
    dry_run: bool = False,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Validate and restore every good line; report (and copy to ``rejects``) every bad one.

    A ``dry_run`` writes nothing and reports what a real run would write: a record the
    store lacks (or holds expired, or at an older version), as ``restore`` decides. A dry
    run into a store that does not exist yet passes ``backend=None``: everything would be
    written."""
    if backend is not None:
        _require_bulk(backend)
    elif not dry_run:
        raise ConfigurationError("only a dry run can import without a store")
    report = ImportReport()
    batch: list[tuple[Key, Entry]] = []

    async def flush() -> None:
        if not batch:
            return
        if not dry_run:
            assert backend is not None
            written = await backend.restore(batch)
        elif backend is None:
            written = len(batch)
        else:
            held = await backend.get_many([key for key, _ in batch])
            written = sum(
                1
                for (_, entry), current in zip(batch, held, strict=True)
                if current is None or current.version < entry.version
            )
        report.written += written
        report.unchanged += len(batch) - written
        batch.clear()

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report.read += 1
        try:
            batch.append(line_to_entry(line))
        except BadLineError as bad:
            report.rejected.append((number, str(bad)))
            if rejects is not None:
                rejects.write(line if line.endswith(b"\n") else line + b"\n")
        if len(batch) >= batch_size:
            await flush()
        if progress is not None:
            progress(1)
    await flush()
    return report


def _require_bulk(backend: Backend) -> None:
    if not backend.capabilities.bulk:
        raise ConfigurationError(
            f"{type(backend).__name__} cannot stream or restore records; export from and "
            "import into the SQL store (or a tiered store, which uses its SQL store)"
        )
