"""The SQL backend: the system of record on PostgreSQL (asyncpg) or SQLite (aiosqlite).

By role: :mod:`~backends.sql.store` the backend, :mod:`~backends.sql.hot_path` its fixed
statements on pooled driver connections, :mod:`~backends.sql.statements` their text,
:mod:`~backends.sql.queries` SQLAlchemy Core for the rest, :mod:`~backends.sql.core` what
runs it (retries, streams, purges), :mod:`~backends.sql.feed` the
change feed, :mod:`~backends.sql.schema` the tables, :mod:`~backends.sql.migrate` Alembic,
:mod:`~backends.sql.config` URLs and engines, :mod:`~backends.sql.errors` driver errors.
"""

from backends.reports import SQLStats
from backends.sql.bulk import TOMBSTONE_RETENTION
from backends.sql.statements import POSTGRES_SQL, SQLITE_SQL
from backends.sql.store import SQLBackend, build_sql_backend

__all__ = [
    "POSTGRES_SQL",
    "SQLITE_SQL",
    "TOMBSTONE_RETENTION",
    "SQLBackend",
    "SQLStats",
    "build_sql_backend",
]
