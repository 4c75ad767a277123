"""Driver and SQLAlchemy exceptions, classified and mapped to kvstore errors.

Every failure is one of: ``STALE`` (a broken connection refused to send the statement; any
operation may be retried), ``LOST`` (the connection broke; a read may be retried on a fresh
one), ``TRANSIENT`` (serialization failure or deadlock: the statement was rolled back, so
any operation may be retried), ``TIMEOUT``, ``DATA`` (the server refused a value, e.g. a
``\\u0000`` that ``jsonb`` cannot hold) or ``FAILED``. Messages carry the masked URL only.
"""

from __future__ import annotations

import random
import sqlite3
from enum import Enum
from typing import Final

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.dialects.sqlite import aiosqlite as sqlite_aiosqlite

from kvstore.errors import BackendUnavailableError, KVStoreError, SerializationError

MAX_ATTEMPTS: Final = 3
"""Tries of a retryable operation (the first included)."""


def backoff(attempt: int) -> float:
    """Seconds before try ``attempt + 1``: exponential from 20 ms, capped, jittered."""
    return min(0.02 * 2.0**attempt, 0.5) * (0.5 + random.random() / 2)  # noqa: S311


class Failure(Enum):
    """What kind of failure a driver exception reports."""

    STALE = "connection was broken before the statement was sent"
    LOST = "connection failed or lost"
    TRANSIENT = "transient conflict"
    TIMEOUT = "timed out"
    DATA = "value refused"
    FAILED = "failed"


def _dbapi_error(dialect: type[sa.engine.Dialect]) -> type[BaseException]:
    """The PEP 249 ``Error`` class a dialect's DBAPI raises (SQLAlchemy's adapter for an
    async driver raises its own, which is no ``SQLAlchemyError``: e.g. from a pooled
    connection opened while PostgreSQL is shutting down or starting up)."""
    error: type[BaseException] = dialect.import_dbapi().Error
    return error


DRIVER_ERRORS: Final[tuple[type[BaseException], ...]] = (
    _dbapi_error(postgresql_asyncpg.dialect),
    _dbapi_error(sqlite_aiosqlite.dialect),
    sa.exc.SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    sqlite3.Error,
    OSError,
    TimeoutError,
)
"""What a database call can raise besides kvstore's own errors."""

_TRANSIENT_STATES: Final = frozenset({"40001", "40P01"})
_LOST_PREFIXES: Final = ("08", "57P01", "57P02", "57P03")


def classify(exc: BaseException) -> Failure:
    """The kind of ``exc``, looking through SQLAlchemy's wrappers to the driver error."""
    for error in _chain(exc):
        state = getattr(error, "sqlstate", None)
        if isinstance(error, asyncpg.PostgresError) and isinstance(state, str):
            if state in _TRANSIENT_STATES:
                return Failure.TRANSIENT
            if state.startswith(_LOST_PREFIXES):
                return Failure.LOST
            if state == "57014":
                return Failure.TIMEOUT
            if state.startswith("22"):
                return Failure.DATA
            return Failure.FAILED
        if isinstance(error, asyncpg.exceptions.InternalClientError):
            # the protocol refused to start the statement (e.g. the server's termination
            # notice arrived while the connection sat idle): nothing was sent
            return Failure.STALE
        if isinstance(error, asyncpg.InterfaceError | ConnectionError | EOFError):
            return Failure.LOST
        if isinstance(error, TimeoutError | sa.exc.TimeoutError):
            return Failure.TIMEOUT
        if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
            return Failure.LOST
        if isinstance(error, OSError):
            return Failure.LOST
        if isinstance(error, ValueError) and "no active connection" in str(error).lower():
            return Failure.LOST
    return Failure.FAILED


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    # the innermost driver error is the most specific; look at it first
    return seen[::-1]


def translate(exc: BaseException, action: str, where: str) -> KVStoreError:
    """The kvstore error for ``exc`` raised while doing ``action`` on ``where`` (a masked
    URL). The caller raises it ``from exc``."""
    failure = classify(exc)
    driver_error = _chain(exc)[0]
    detail = type(driver_error).__name__
    if not isinstance(driver_error, sa.exc.SQLAlchemyError) and str(driver_error):
        # driver messages name hosts and users, never passwords; SQLAlchemy's carry the
        # statement parameters (user data), so those are left out
        detail = f"{detail}: {str(driver_error)[:200]}"
    if failure is Failure.DATA:
        return SerializationError(f"{where} refused the value on {action} ({detail})")
    return BackendUnavailableError(f"{action} on {where}: {failure.value} ({detail})")
