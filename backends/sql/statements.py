"""The hot statements as fixed SQL text: one per operation, the version check inside it.

Written once in PostgreSQL's ``$n`` style; SQLite gets ``?n`` with the same numbers. A save
is one statement (``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING`` or ``UPDATE
... WHERE version = ...``); an expired row counts as absent everywhere. No statement is
built from input: every value is a bound parameter.
"""

from __future__ import annotations

import re
from typing import Final

from backends.sql import feed

_ON_CONFLICT_UPDATE: Final = """
ON CONFLICT (namespace, owner, key) DO UPDATE SET
    value = excluded.value,
    version = CASE WHEN r.expires_at <= excluded.updated_at THEN 1 ELSE r.version + 1 END,
    created_at = CASE WHEN r.expires_at <= excluded.updated_at
        THEN excluded.created_at ELSE r.created_at END,
    updated_at = excluded.updated_at,
    expires_at = excluded.expires_at,
    revision = {revision}
"""
"""An upsert's update of a live row (version + 1) or of an expired one (a new life at 1)."""
_UPSERT: Final = """
INSERT INTO kv_records AS r
    (namespace, owner, key, value, version, created_at, updated_at, expires_at, revision)
VALUES ($1, $2, $3, $4, 1, $5, $5, $6, {revision}){on_conflict_update}"""
SQL: Final = {
    "get": """
        SELECT value, version, created_at, updated_at, expires_at, revision FROM kv_records
        WHERE namespace = $1 AND owner = $2 AND key = $3
          AND (expires_at IS NULL OR expires_at > $4)""",
    # one page of an owner's live rows in a namespace, after a key ('' for the first page)
    "list": """
        SELECT key, value, version, created_at, updated_at, expires_at, revision
        FROM kv_records
        WHERE namespace = $1 AND owner = $2 AND key > $3
          AND (expires_at IS NULL OR expires_at > $4)
        ORDER BY key LIMIT $5""",
    "version": """
        SELECT version FROM kv_records
        WHERE namespace = $1 AND owner = $2 AND key = $3
          AND (expires_at IS NULL OR expires_at > $4)""",
    # no condition: insert, or update the live row, or restart an expired one at version 1
    "put": _UPSERT + "RETURNING version, created_at, revision",
    # expected_version=0: insert, or restart an expired row; a live row blocks it
    "put_new": _UPSERT
    + "WHERE r.expires_at <= excluded.updated_at RETURNING version, created_at, revision",
    # expected_version=N: update the live row at version N, nothing else
    "put_if": """
        UPDATE kv_records SET value = $4, version = version + 1, updated_at = $5,
            expires_at = $6, revision = {revision}
        WHERE namespace = $1 AND owner = $2 AND key = $3 AND version = $7
          AND (expires_at IS NULL OR expires_at > $5)
        RETURNING version, created_at, revision""",
    # returns expires_at, not a liveness expression: SQLite 3.40 evaluates
    # "expires_at IS NULL" wrongly in the RETURNING clause of a DELETE
    "delete": """
        DELETE FROM kv_records WHERE namespace = $1 AND owner = $2 AND key = $3
        RETURNING expires_at, {deleted}""",
    "delete_if": """
        DELETE FROM kv_records
        WHERE namespace = $1 AND owner = $2 AND key = $3 AND version = $4
          AND (expires_at IS NULL OR expires_at > $5)
        RETURNING version, {deleted}""",
}
"""The hot statements, in PostgreSQL's ``$n`` style (SQLite gets ``?n``, same numbers).

Revisions: the statement draws the written row's revision itself (an upsert's update draws
a new one in its ``SET``, evaluated once the row is locked, so one key's revisions grow with
its versions however concurrent saves interleave), on PostgreSQL from the
sequence after forcing the transaction's id (which the change feed relies on: see
:mod:`backends.sql.feed`; ``CASE`` evaluates its condition first), on SQLite as the counter
+ 1 (a trigger moves the counter). Triggers give one to writes that leave the column alone
(batch jobs' plain SQL). The delete trigger draws the tombstone's revision, read back with
``currval`` (PostgreSQL) or from the counter (SQLite)."""

_FENCED_UPSERT: Final = """
WITH fence AS (SELECT token FROM kv_fences WHERE owner = $2 AND name = $7{for_share})
INSERT INTO kv_records AS r
    (namespace, owner, key, value, version, created_at, updated_at, expires_at, revision)
SELECT $1{text}, $2{text}, $3{text}, $4{json}, 1, $5{time}, $5{time}, $6{time}, {revision}
WHERE COALESCE((SELECT token FROM fence), 0) <= $8{on_conflict_update}"""
FENCED: Final = {
    "put_fenced": _FENCED_UPSERT + "RETURNING version, created_at, revision",
    "put_new_fenced": _FENCED_UPSERT
    + "WHERE r.expires_at <= excluded.updated_at RETURNING version, created_at, revision",
    "put_if_fenced": """
        WITH fence AS (SELECT token FROM kv_fences WHERE owner = $2 AND name = $8{for_share})
        UPDATE kv_records SET value = $4, version = version + 1, updated_at = $5,
            expires_at = $6, revision = {revision}
        WHERE namespace = $1 AND owner = $2 AND key = $3 AND version = $7
          AND (expires_at IS NULL OR expires_at > $5)
          AND COALESCE((SELECT token FROM fence), 0) <= $9
        RETURNING version, created_at, revision""",
    "delete_fenced": """
        WITH fence AS (SELECT token FROM kv_fences WHERE owner = $2 AND name = $4{for_share})
        DELETE FROM kv_records WHERE namespace = $1 AND owner = $2 AND key = $3
          AND COALESCE((SELECT token FROM fence), 0) <= $5
        RETURNING expires_at, {deleted}""",
    "delete_if_fenced": """
        WITH fence AS (SELECT token FROM kv_fences WHERE owner = $2 AND name = $6{for_share})
        DELETE FROM kv_records
        WHERE namespace = $1 AND owner = $2 AND key = $3 AND version = $4
          AND (expires_at IS NULL OR expires_at > $5)
          AND COALESCE((SELECT token FROM fence), 0) <= $7
        RETURNING version, {deleted}""",
    "fence": "SELECT token FROM kv_fences WHERE owner = $1 AND name = $2",
}
"""Writes under a session lock (:mod:`backends.sql.locks`): each is the unfenced statement
with the fence check inside it, so the store itself refuses a write whose lock was taken
over; the fence's name and token come after the usual parameters. The ``fence`` part reads
the session's newest token, locked (PostgreSQL: ``FOR SHARE``) so a grant that commits
meanwhile waits for the write or is seen by it. ``fence`` reads the newest token (to tell a
fenced write from a version conflict)."""


_BATCH_PUT: Final = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                         $6::timestamptz[], $7::int[])
        AS i(namespace, owner, key, value, now, expires_at, expected)
),
put AS (
    INSERT INTO kv_records AS r
        (namespace, owner, key, value, version, created_at, updated_at, expires_at, revision)
    SELECT namespace, owner, key, value::jsonb, 1, now, now, expires_at, {revision}
    FROM input WHERE expected IS NULL ORDER BY namespace, owner, key{on_conflict_update}
    RETURNING r.namespace, r.owner, r.key, r.version, r.created_at, r.revision
),
put_new AS (
    INSERT INTO kv_records AS r
        (namespace, owner, key, value, version, created_at, updated_at, expires_at, revision)
    SELECT namespace, owner, key, value::jsonb, 1, now, now, expires_at, {revision}
    FROM input WHERE expected = 0 ORDER BY namespace, owner, key
    ON CONFLICT (namespace, owner, key) DO UPDATE SET
        value = excluded.value, version = 1, created_at = excluded.created_at,
        updated_at = excluded.updated_at, expires_at = excluded.expires_at,
        revision = {revision}
    WHERE r.expires_at <= excluded.updated_at
    RETURNING r.namespace, r.owner, r.key, r.version, r.created_at, r.revision
),
put_if AS (
    UPDATE kv_records AS r SET value = i.value::jsonb, version = r.version + 1,
        updated_at = i.now, expires_at = i.expires_at, revision = {revision}
    FROM input AS i
    WHERE i.expected > 0 AND r.namespace = i.namespace AND r.owner = i.owner
      AND r.key = i.key AND r.version = i.expected
      AND (r.expires_at IS NULL OR r.expires_at > i.now)
    RETURNING r.namespace, r.owner, r.key, r.version, r.created_at, r.revision
)
SELECT * FROM put UNION ALL SELECT * FROM put_new UNION ALL SELECT * FROM put_if"""
"""Group commit (PostgreSQL): many saves in one statement, one row per key, each with its
own version check (``expected``: NULL none, 0 must not exist, N must be at version N), the
same as ``put``, ``put_new`` and ``put_if``; a row whose check failed returns nothing."""

_GET_BATCH_POSTGRES: Final = """
SELECT r.namespace, r.owner, r.key, r.value, r.version, r.created_at, r.updated_at,
       r.expires_at, r.revision
FROM unnest($1::text[], $2::text[], $3::text[]) AS k(namespace, owner, key)
JOIN kv_records AS r ON r.namespace = k.namespace AND r.owner = k.owner AND r.key = k.key
WHERE r.expires_at IS NULL OR r.expires_at > $4"""
_GET_BATCH_SQLITE: Final = """
SELECT r.namespace, r.owner, r.key, r.value, r.version, r.created_at, r.updated_at,
       r.expires_at, r.revision
FROM json_each(?1) AS k
JOIN kv_records AS r ON r.namespace = json_extract(k.value, '$[0]')
    AND r.owner = json_extract(k.value, '$[1]') AND r.key = json_extract(k.value, '$[2]')
WHERE r.expires_at IS NULL OR r.expires_at > ?2"""
"""The live rows of many keys in one fixed statement (``get_many``): PostgreSQL joins
them as three arrays (``unnest``; as an ``IN`` list of 500 tuples the planning alone took
~95 ms), SQLite as one JSON array of ``[namespace, owner, key]`` triples (``json_each``).
Building the equivalent SQLAlchemy Core statement took ~0.7 ms of CPU for 8 keys."""

_POSTGRES_REVISION: Final = (
    "CASE WHEN pg_current_xact_id() IS NOT NULL THEN nextval('kv_revision') END"
)
_NOW: Final = "CAST(extract(epoch FROM clock_timestamp()) AS double precision)"
POSTGRES_LOCKS: Final = {
    "lock_ticket": """
        INSERT INTO kv_lock_tickets (owner, name, expires_at)
        VALUES ($1, $2, {now} + $3::double precision) RETURNING ticket""",
    "lock_turn": """
        WITH expired AS (
            DELETE FROM kv_lock_tickets
            WHERE owner = $1 AND name = $2 AND expires_at <= {now}
        ),
        head AS (
            SELECT min(ticket) AS ticket FROM kv_lock_tickets
            WHERE owner = $1 AND name = $2 AND expires_at > {now}
        ),
        granted AS (
            INSERT INTO kv_fences (owner, name, token)
            SELECT $1, $2, $3::bigint FROM head WHERE head.ticket = $3
            ON CONFLICT (owner, name) DO UPDATE
            SET token = GREATEST(kv_fences.token, excluded.token)
            RETURNING token
        ),
        renewed AS (
            UPDATE kv_lock_tickets SET expires_at = {now} + CASE
                WHEN ticket = (SELECT ticket FROM head) THEN $5::double precision
                ELSE $4::double precision END
            WHERE ticket = $3 AND expires_at > {now}
            RETURNING ticket
        )
        SELECT (SELECT ticket FROM renewed),
               COALESCE((SELECT token FROM granted),
                        (SELECT token FROM kv_fences WHERE owner = $1 AND name = $2))""",
    "lock_release": """
        DELETE FROM kv_lock_tickets WHERE ticket = $3 AND owner = $1 AND name = $2""",
}
"""Session locks on PostgreSQL as single statements on the hot path (the SQLite forms, in
:mod:`backends.sql.locks`, are a transaction of three). A turn's parts share one snapshot:
the fence it reads back is the grant's own ``RETURNING`` if it granted, else the row as it
was; tickets expire on the server's clock."""

_POSTGRES_TYPES: Final = {
    "{text}": "::text",
    "{json}": "::jsonb",
    "{time}": "::timestamptz",
    "{for_share}": " FOR SHARE",
}
_SQLITE_TYPES: Final = dict.fromkeys(_POSTGRES_TYPES, "")


def _typed(text: str, types: dict[str, str]) -> str:
    for placeholder, replacement in types.items():
        text = text.replace(placeholder, replacement)
    return text


POSTGRES_SQL: Final = (
    {
        name: _typed(text, _POSTGRES_TYPES)
        .replace("{on_conflict_update}", _ON_CONFLICT_UPDATE)
        .replace("{revision}", _POSTGRES_REVISION)
        .replace("{deleted}", "currval('kv_revision')")
        for name, text in (SQL | FENCED | {"put_batch": _BATCH_PUT}).items()
    }
    | {"get_batch": _GET_BATCH_POSTGRES}
    | {name: text.replace("{now}", _NOW) for name, text in POSTGRES_LOCKS.items()}
    | feed.POSTGRES
)
"""Every statement as PostgreSQL runs it (benchmarks run the same text on the raw driver)."""
SQLITE_SQL: Final = (
    {
        name: re.sub(
            r"\$(\d)",
            r"?\1",
            _typed(text, _SQLITE_TYPES).replace("{on_conflict_update}", _ON_CONFLICT_UPDATE),
        )
        .replace("{revision}", "(SELECT value + 1 FROM kv_revision WHERE id = 1)")
        .replace("{deleted}", "(SELECT value FROM kv_revision WHERE id = 1)")
        for name, text in (SQL | FENCED).items()
    }
    | {"get_batch": _GET_BATCH_SQLITE}
    | feed.SQLITE
)
"""Every statement as SQLite runs it."""
