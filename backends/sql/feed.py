"""The change feed and cache generations of the SQL backend: statement texts and rows.

Changes are read by revision from ``kv_records`` (saves, including plain-SQL writes of batch
jobs: a trigger gives every written row a new revision) and ``kv_tombstones`` (deletes). On
PostgreSQL revisions are drawn from a sequence, so a transaction can commit a revision
lower than one already visible; each read also returns its snapshot (``xmin``, ``xmax``),
which lets the follower (:class:`backends.tiered.feed.FeedFollower`) tell a revision still
in flight from one that will never appear. On SQLite one writer commits at a time, so
revisions commit in order and no snapshot is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from backends.base import Change, Snapshot
from backends.sql.schema import key_parts, stored_key

if TYPE_CHECKING:
    from collections.abc import Sequence

POSTGRES: Final = {
    "changes": """
        WITH s AS (SELECT pg_current_snapshot() AS snap)
        SELECT pg_snapshot_xmin(s.snap)::text::bigint, pg_snapshot_xmax(s.snap)::text::bigint,
               c.revision, c.namespace, c.owner, c.key, c.deleted
        FROM s LEFT JOIN (
            SELECT * FROM (
                (SELECT revision, namespace, owner, key, false AS deleted FROM kv_records
                 WHERE revision > $1 ORDER BY revision LIMIT $2)
                UNION ALL
                (SELECT revision, namespace, owner, key, true FROM kv_tombstones
                 WHERE revision > $1 ORDER BY revision LIMIT $2)
            ) AS u ORDER BY revision LIMIT $2
        ) AS c ON true ORDER BY c.revision""",
    "head": """
        WITH s AS (SELECT pg_current_snapshot() AS snap)
        SELECT pg_snapshot_xmin(s.snap)::text::bigint, pg_snapshot_xmax(s.snap)::text::bigint,
               GREATEST((SELECT max(revision) FROM kv_records),
                        (SELECT max(revision) FROM kv_tombstones), 0)
        FROM s""",
    "read_generation": "SELECT generation, incarnation FROM kv_cache_generations WHERE name = $1",
    "insert_generation": """
        INSERT INTO kv_cache_generations (name, generation, incarnation, changed_at)
        VALUES ($1, $3, $2, now()) ON CONFLICT (name) DO NOTHING RETURNING generation""",
    "advance_generation": """
        UPDATE kv_cache_generations SET generation = $3, incarnation = $2, changed_at = now()
        WHERE name = $1 AND generation = $4 RETURNING generation""",
}
"""Statements in PostgreSQL's ``$n`` style."""

SQLITE: Final = {
    "changes": """
        SELECT NULL, NULL, * FROM (
            SELECT revision, namespace, owner, key, 0 AS deleted FROM kv_records
            WHERE revision > ?1
            UNION ALL
            SELECT revision, namespace, owner, key, 1 FROM kv_tombstones WHERE revision > ?1
        ) ORDER BY revision LIMIT ?2""",
    "head": "SELECT NULL, NULL, value FROM kv_revision WHERE id = 1",
    "read_generation": "SELECT generation, incarnation FROM kv_cache_generations WHERE name = ?1",
    "insert_generation": """
        INSERT INTO kv_cache_generations (name, generation, incarnation)
        VALUES (?1, ?3, ?2) ON CONFLICT (name) DO NOTHING RETURNING generation""",
    "advance_generation": """
        UPDATE kv_cache_generations SET generation = ?3, incarnation = ?2,
            changed_at = strftime('%Y-%m-%d %H:%M:%f000', 'now')
        WHERE name = ?1 AND generation = ?4 RETURNING generation""",
}
"""The same for SQLite (``?n`` style)."""


def snapshot_of(rows: Sequence[Sequence[Any]]) -> Snapshot | None:
    """The snapshot carried in the first two columns of a feed read (``None``: SQLite)."""
    if not rows or rows[0][0] is None:
        return None
    return Snapshot(xmin=int(rows[0][0]), xmax=int(rows[0][1]))


def changes_of(rows: Sequence[Sequence[Any]]) -> list[Change]:
    """The changes of a feed read (a row without a revision is the snapshot alone)."""
    return [
        Change(stored_key(namespace, (owner, *key_parts(key))), int(revision), bool(deleted))
        for _, _, revision, namespace, owner, key, deleted in rows
        if revision is not None
    ]
