"""Alembic migrations of the SQL backend's schema (:mod:`backends.sql_schema`).

Run through :func:`backends.sql_migrate.upgrade` (``initialize()`` does it too); the
version is kept in the ``kvstore_alembic_version`` table.
"""
