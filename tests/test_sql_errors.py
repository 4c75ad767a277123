"""Driver exceptions are classified by what they mean for a retry."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest
import sqlalchemy as sa

from backends.sql.errors import Failure, classify, translate
from kvstore import BackendUnavailableError, SerializationError


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (asyncpg.exceptions.SerializationError("x"), Failure.TRANSIENT),
        (asyncpg.exceptions.DeadlockDetectedError("x"), Failure.TRANSIENT),
        (asyncpg.exceptions.AdminShutdownError("x"), Failure.LOST),
        (asyncpg.exceptions.ConnectionDoesNotExistError("x"), Failure.LOST),
        (asyncpg.exceptions.QueryCanceledError("x"), Failure.TIMEOUT),
        (asyncpg.exceptions.UntranslatableCharacterError("x"), Failure.DATA),
        (asyncpg.exceptions.UndefinedTableError("x"), Failure.FAILED),
        (asyncpg.exceptions.InternalClientError("x"), Failure.STALE),
        (asyncpg.InterfaceError("connection is closed"), Failure.LOST),
        (ConnectionRefusedError(111, "refused"), Failure.LOST),
        (TimeoutError(), Failure.TIMEOUT),
        (sqlite3.OperationalError("database is locked"), Failure.FAILED),
        (sa.exc.TimeoutError("pool exhausted"), Failure.TIMEOUT),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value.name,
)
def test_driver_errors_are_classified(error: BaseException, failure: Failure) -> None:
    assert classify(error) is failure


def test_sqlalchemy_wrappers_are_looked_through() -> None:
    driver_error = asyncpg.exceptions.SerializationError("could not serialize")
    wrapped = sa.exc.OperationalError(
        "UPDATE kv_records SET value=$1", {"v": "secret"}, driver_error
    )
    assert classify(wrapped) is Failure.TRANSIENT
    error = translate(wrapped, "save", "postgresql+asyncpg://u:***@db/coach")
    assert isinstance(error, BackendUnavailableError)
    assert "secret" not in str(error)
    assert "***" in str(error)


def test_refused_values_become_serialization_errors() -> None:
    error = translate(asyncpg.exceptions.UntranslatableCharacterError("\\u0000"), "save", "db")
    assert isinstance(error, SerializationError)
