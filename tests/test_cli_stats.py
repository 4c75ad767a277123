"""``kvstore stats``: live records per namespace, counted by the database without reading
the rows; expired rows not purged yet are not counted; counters are numbers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from backends.base import Entry
from backends.sql import build_sql_backend
from kvstore.cli import main
from kvstore.keys import Key
from tests import postgres


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'stats.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        asyncio.run(postgres.execute(url, "DELETE FROM kv_records"))
    monkeypatch.setenv("KVSTORE_URL", url)
    monkeypatch.delenv("KVSTORE_CACHE_URL", raising=False)
    return url


async def fill(url: str) -> None:
    """notes: 5 live, 3 expired; state: 2 live (one expiring later), gone: 4 expired."""
    now = datetime.now(UTC)
    past, future = now - timedelta(hours=1), now + timedelta(hours=1)

    def entry(expires_at: datetime | None) -> Entry:
        return Entry(b'{"schema_version": 1}', 1, now, now, expires_at)

    items = [(Key("notes", ("u1", f"n{n}")), entry(None)) for n in range(5)]
    items += [(Key("notes", ("u2", f"n{n}")), entry(past)) for n in range(3)]
    items += [
        (Key("state", ("u1", "s1")), entry(None)),
        (Key("state", ("u1", "s2")), entry(future)),
    ]
    items += [(Key("gone", ("u3", f"g{n}")), entry(past)) for n in range(4)]
    backend = build_sql_backend(url)
    try:
        await backend.initialize()
        await backend.restore(items)
    finally:
        await backend.close()


def test_stats_counts_live_records_per_namespace_as_numbers(store_url: str) -> None:
    asyncio.run(fill(store_url))
    result = CliRunner().invoke(main, ["stats", "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == {"records": {"notes": 5, "state": 2}, "cache": None}
    result = CliRunner().invoke(main, ["stats"])
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.stdout.splitlines() if "│" in line] == [
        ["│", "notes", "│", "5", "│"],
        ["│", "state", "│", "2", "│"],
    ]


def test_stats_scans_a_store_without_a_count_query() -> None:
    result = CliRunner().invoke(main, ["stats", "--json", "--url", "memory://"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == {"records": {}, "cache": None}
