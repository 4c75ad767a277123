"""Alembic migrations of the SQL backend's schema (:mod:`backends.sql.schema`).

Run through :func:`backends.sql.migrate.upgrade` (``initialize()`` does it too); the
version is kept in the ``kvstore_alembic_version`` table.
"""
