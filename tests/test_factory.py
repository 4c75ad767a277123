"""create_database and URL handling: typed errors, no I/O, no password anywhere."""

from __future__ import annotations

import pytest

from kvstore import ConfigurationError, DatabaseType, create_database
from kvstore.urls import mask_url, split_url


def test_memory_database_builds_without_io() -> None:
    db = create_database(DatabaseType.MEMORY)
    assert "memory" in repr(db)
    assert create_database("memory") is not db


@pytest.mark.parametrize("kind", ["mongo", "", "MEMORY "])
def test_unknown_types_are_configuration_errors(kind: str) -> None:
    with pytest.raises(ConfigurationError):
        create_database(kind)


def test_memory_refuses_urls_and_foreign_options() -> None:
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.MEMORY, "redis://localhost")
    with pytest.raises(ConfigurationError, match="pool_size"):
        create_database(DatabaseType.MEMORY, pool_size=3)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://coach:s3cret@db:5432/coach", "postgresql://coach:***@db:5432/coach"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("sqlite:///kvstore.db", "sqlite:///kvstore.db"),
        (
            "postgresql://u:p%40ss@[::1]:5432/x?sslmode=require",
            "postgresql://u:***@[::1]:5432/x?sslmode=require",
        ),
        ("redis://:S3cret/PW@cache/0", "redis://:***@cache/0"),
        (
            "redis+sentinel://s1:26379/main/0?sentinel_password=s3cret",
            "redis+sentinel://s1:26379/main/0?sentinel_password=***",
        ),
        (
            "postgresql://db/x?password=s3cret&ssl=require",
            "postgresql://db/x?password=***&ssl=require",
        ),
    ],
)
def test_passwords_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("url", ["no-scheme", "postgresql://u:s3cret@host:notaport/db"])
def test_malformed_urls_raise_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        split_url(url)
    assert "s3cret" not in str(error.value)


SECRET = "s3cret"


@pytest.mark.parametrize(
    ("kind", "url", "problem"),
    [
        (DatabaseType.SQL, f"postgresql://u:{SECRET}@db:99999/x", "port"),
        (DatabaseType.SQL, f"postgresql://u:{SECRET}@db/x?poolsize=5", "'poolsize'"),
        (DatabaseType.SQL, f"postgresql://db/x?password={SECRET}&sslmod=disable", "'sslmod'"),
        (DatabaseType.SQL, "sqlite:///x.db?journal=wal", "'journal'"),
        (DatabaseType.REDIS, f"redis://:{SECRET}@cache:99999/0", "1-65535"),
        (DatabaseType.REDIS, f"redis://:{SECRET}@cache/0?poolsize=3", "'poolsize'"),
        (DatabaseType.REDIS, f"redis://:{SECRET}/PW@cache/0", "percent-encode"),
        (
            DatabaseType.REDIS,
            f"redis+sentinel://s1:26379/main/0?sentinel_password={SECRET}&db=1",
            "'db'",
        ),
    ],
)
def test_bad_urls_are_configuration_errors_at_build_time_without_secrets(
    kind: DatabaseType, url: str, problem: str
) -> None:
    """Caught when the store is built (no I/O), not as a raw TypeError or OverflowError at
    the first connection; the message names the problem and never the password."""
    with pytest.raises(ConfigurationError) as error:
        create_database(kind, url)
    assert problem in str(error.value)
    assert SECRET not in str(error.value)


def test_libpq_sslmode_is_taken_as_asyncpg_ssl() -> None:
    db = create_database(DatabaseType.SQL, f"postgresql://u:{SECRET}@db/x?sslmode=disable")
    assert "ssl=disable" in repr(db)
    assert SECRET not in repr(db)


def test_a_password_in_the_query_never_shows_in_repr() -> None:
    db = create_database(DatabaseType.SQL, f"postgresql://db/x?password={SECRET}")
    assert SECRET not in repr(db)
    redis = create_database(
        DatabaseType.REDIS, f"redis+sentinel://s1:26379/main/0?sentinel_password={SECRET}"
    )
    assert SECRET not in repr(redis)
