"""kvstore: an async key-value store for typed records.

Records are pydantic models, serialized to JSON and stored through one async
:class:`Database` interface over a memory, SQL, Redis or tiered (cache + SQL) backend.
"""

# ruff: noqa: E402 - the imports below come after the install check
from kvstore.install import check_siblings

check_siblings()

from backends.reports import SQLStats, Stats, TieredStats, VerifyReport, WarmReport
from kvstore.collection import Collection, Page
from kvstore.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    DatabaseClosedError,
    FencedError,
    InvalidKeyError,
    InvalidRecordError,
    KVStoreError,
    LockTimeoutError,
    SerializationError,
)
from kvstore.factory import DatabaseType, create_database
from kvstore.interface import Database
from kvstore.keys import Fence
from kvstore.locks import SessionLock
from kvstore.models import (
    ContextRecord,
    Id,
    IdentityRecord,
    JsonObject,
    Record,
    StateRecord,
    UserRecord,
)

__all__ = [
    "BackendUnavailableError",
    "Collection",
    "ConfigurationError",
    "ConflictError",
    "ContextRecord",
    "Database",
    "DatabaseClosedError",
    "DatabaseType",
    "Fence",
    "FencedError",
    "Id",
    "IdentityRecord",
    "InvalidKeyError",
    "InvalidRecordError",
    "JsonObject",
    "KVStoreError",
    "LockTimeoutError",
    "Page",
    "Record",
    "SQLStats",
    "SerializationError",
    "SessionLock",
    "StateRecord",
    "Stats",
    "TieredStats",
    "UserRecord",
    "VerifyReport",
    "WarmReport",
    "create_database",
]
