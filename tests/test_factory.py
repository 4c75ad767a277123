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
    ],
)
def test_passwords_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("url", ["no-scheme", "postgresql://u:s3cret@host:notaport/db"])
def test_malformed_urls_raise_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        split_url(url)
    assert "s3cret" not in str(error.value)
