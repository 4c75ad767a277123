"""SQL URLs and options: normalization, defaults, validation, no password anywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from backends.sql import SQLBackend
from backends.sql.config import SQLConfig, parse_sql_url
from kvstore import ConfigurationError, DatabaseType, create_database
from kvstore.store import Store

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("url", "driver", "dialect"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg", "postgresql"),
        ("postgres://u@h/db", "postgresql+asyncpg", "postgresql"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg", "postgresql"),
        ("sqlite:///kv.db", "sqlite+aiosqlite", "sqlite"),
        ("sqlite+aiosqlite:////tmp/kv.db", "sqlite+aiosqlite", "sqlite"),
    ],
)
def test_plain_urls_map_to_the_async_drivers(url: str, driver: str, dialect: str) -> None:
    config = parse_sql_url(url)
    assert (config.url.drivername, config.dialect) == (driver, dialect)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "postgresql+psycopg://u@h/db",
        "sqlite://",
        "sqlite:///:memory:",
        # a host, user or password means the URL was meant for a server (found by the fuzz
        # test: SQLAlchemy refused it only when the engine was made, with its own error)
        "sqlite://coach:secret@127.0.0.1:1/0",
        "sqlite://host/kv.db",
    ],
)
def test_unsupported_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_sql_url(url)


def test_defaults_are_the_documented_ones() -> None:
    config = parse_sql_url("postgresql://u@h/db")
    assert (config.pool_size, config.max_overflow, config.pool_pre_ping) == (10, 0, False)
    assert (config.pool_recycle, config.connect_timeout, config.statement_timeout) == (
        3600.0,
        10.0,
        30.0,
    )
    assert config.echo is False


def test_options_come_from_the_query_and_keywords_win() -> None:
    config = parse_sql_url(
        "postgresql://u@h/db?pool_size=3&pool_pre_ping=true&statement_timeout=2.5&ssl=require",
        {"pool_size": 7},
    )
    assert (config.pool_size, config.pool_pre_ping, config.statement_timeout) == (7, True, 2.5)
    assert dict(config.url.query) == {"ssl": "require"}  # driver parameters pass through


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?pool_size=many",
        "postgresql://u@h/db?pool_size=0",
        "postgresql://u@h/db?connect_timeout=-1",
        "postgresql://u@h/db?echo=maybe",
    ],
)
def test_bad_option_values_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_sql_url(url)


def test_create_database_builds_without_io_and_masks_the_password() -> None:
    db = create_database(
        DatabaseType.SQL, "postgres://coach:s3cret@nowhere.invalid/coach", pool_size=2
    )
    assert isinstance(db, Store)
    assert isinstance(db.backend, SQLBackend)
    assert db.backend.config == SQLConfig(
        url=db.backend.config.url, dialect="postgresql", pool_size=2
    )
    assert "s3cret" not in repr(db)
    assert "s3cret" not in repr(db.backend)
    assert "***" in repr(db)


def test_create_database_refuses_options_of_other_backends() -> None:
    with pytest.raises(ConfigurationError, match="key_prefix"):
        create_database(DatabaseType.SQL, "sqlite:///kv.db", key_prefix="x")


def test_the_default_is_kvstore_url_then_a_local_sqlite_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KVSTORE_URL", raising=False)
    db = create_database(DatabaseType.SQL)
    assert isinstance(db, Store)
    assert isinstance(db.backend, SQLBackend)
    assert db.backend.config.url.database == "kvstore.db"
    monkeypatch.setenv("KVSTORE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    db = create_database(DatabaseType.SQL)
    assert isinstance(db, Store)
    assert isinstance(db.backend, SQLBackend)
    assert db.backend.config.url.database == str(tmp_path / "env.db")
