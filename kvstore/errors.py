"""The errors kvstore raises. Every one derives from :class:`KVStoreError`::

    KVStoreError
    ├── ConfigurationError        bad URL, unknown scheme, bad option, missing driver
    ├── InvalidKeyError           an id or namespace that can't be a key (also a ValueError)
    ├── InvalidRecordError        a record of the wrong kind, or too large (also a ValueError)
    ├── SerializationError        a value JSON cannot carry faithfully; nothing was written
    ├── ConflictError             ``expected_version`` did not match the stored version
    ├── BackendUnavailableError   the server is unreachable, failing or too slow
    │   └── CacheLostError        the cache lost keys (flushed, restarted, failed over)
    └── DatabaseClosedError       the database was closed

Driver exceptions are chained (``raise ... from exc``) and never escape unmapped. No message
carries a password or a full connection string with credentials.
"""

from __future__ import annotations


class KVStoreError(Exception):
    """Base class of every error kvstore raises."""


class ConfigurationError(KVStoreError):
    """The store was configured wrongly: bad URL, unknown scheme, bad option, missing driver."""


class InvalidKeyError(KVStoreError, ValueError):
    """An id or namespace that cannot be part of a key (empty, too long, control characters)."""


class SerializationError(KVStoreError):
    """A value JSON cannot carry faithfully (NaN, infinity, lone surrogate, huge integer)."""


class ConflictError(KVStoreError):
    """A conditional write or delete found another version than the one expected."""

    def __init__(self, message: str, *, expected: int, actual: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class FencedError(ConflictError):
    """A write under a session lock was refused: a newer lock of that session has been
    granted since (this holder's lease ran out and another took over). ``expected`` is the
    write's fence token, ``actual`` the newest one granted."""


class LockTimeoutError(KVStoreError):
    """A session lock was not granted within the ``timeout`` the caller gave."""


class BackendUnavailableError(KVStoreError):
    """The backend server is unreachable, failing or did not answer in time."""


class CacheLostError(BackendUnavailableError):
    """The cache tier lost what it held (flushed, restarted from a snapshot, failed over):
    the tiered store moves to a new cache generation before using it again. Never reaches
    callers of the tiered store."""


class DatabaseClosedError(KVStoreError):
    """An operation was attempted on a closed database."""


class InvalidRecordError(KVStoreError, ValueError):
    """A record of the wrong kind for the collection, or larger than the size limit."""
