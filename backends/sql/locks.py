"""Session locks on SQL: the statements of the ticket queue (migration 0004).

A lock is the queue of its live tickets in ``kv_lock_tickets``; the oldest live one holds
it. Times are the database's own (``clock_timestamp()`` on PostgreSQL, ``julianday('now')``
on SQLite, as seconds since the epoch): processes on hosts whose clocks disagree see the
same tickets live. A turn runs three statements in one transaction: drop the lock's expired
tickets, raise the lock's fencing token to the ticket if it is the oldest live one, then
renew the ticket (for the lease if granted, else for the wait) and say which it was. A
ticket number is the fencing token of its grant; a ticket that commits after a larger one
was granted (tickets are drawn in one order and may commit in another) could never be
granted with a larger token, so it is dropped and its owner joins the queue again. On
PostgreSQL the token's row lock orders a grant and any fenced write of the same session
(see :data:`backends.sql.statements.FENCED`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    Transaction = Callable[
        [str, Sequence[tuple[sa.Executable, dict[str, Any]]]], Awaitable[list[Any]]
    ]

_NOW: Final = {
    "postgresql": "CAST(extract(epoch FROM clock_timestamp()) AS double precision)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
_FLOAT: Final = {"postgresql": "double precision", "sqlite": "REAL"}
_HEAD: Final = """(SELECT min(ticket) FROM kv_lock_tickets
    WHERE owner = :owner AND name = :name AND expires_at > NOW)"""


_STATEMENTS: Final = {
    "ticket": "INSERT INTO kv_lock_tickets (owner, name, expires_at) "
    "VALUES (:owner, :name, NOW + HOLD) RETURNING ticket",
    "expire": "DELETE FROM kv_lock_tickets WHERE owner = :owner AND name = :name "
    "AND expires_at <= NOW",
    "grant": "INSERT INTO kv_fences (owner, name, token) "
    "SELECT CAST(:owner AS TEXT), CAST(:name AS TEXT), CAST(:ticket AS BIGINT) "
    "WHERE CAST(:ticket AS BIGINT) = HEAD "
    "ON CONFLICT (owner, name) DO UPDATE SET token = GREATEST(kv_fences.token, excluded.token)",
    "renew": "UPDATE kv_lock_tickets SET expires_at = NOW + CASE "
    "WHEN ticket = HEAD THEN LEASE ELSE HOLD END "
    "WHERE ticket = :ticket AND expires_at > NOW "
    "RETURNING (SELECT token FROM kv_fences WHERE owner = :owner AND name = :name)",
    "release": "DELETE FROM kv_lock_tickets WHERE ticket = :ticket AND owner = :owner "
    "AND name = :name",
    "erase_tickets": "DELETE FROM kv_lock_tickets WHERE owner = :owner",
    "erase_fences": "DELETE FROM kv_fences WHERE owner = :owner",
}
"""The lock statements, with NOW, HEAD (the lock's oldest live ticket), HOLD, LEASE and
GREATEST written per dialect; every value is a bound parameter.

* ``ticket``: join the queue; returns the new ticket.
* ``expire``: drop the lock's expired tickets.
* ``grant``: raise the lock's fencing token to the ticket if it is the oldest live one.
* ``renew``: renew the ticket (for the lease if it holds the lock, else for the wait);
  returns the lock's token (the ticket's own once granted), no row if it had expired.
* ``release``: leave the queue. ``erase_*``: a user's erasure takes their locks too."""


class LockStatements:
    """The lock statements (:data:`_STATEMENTS`) in one SQL dialect."""

    def __init__(self, dialect: str) -> None:
        words = {
            "HEAD": _HEAD,
            "NOW": _NOW[dialect],
            "HOLD": f"CAST(:hold AS {_FLOAT[dialect]})",
            "LEASE": f"CAST(:lease AS {_FLOAT[dialect]})",
            "GREATEST": "GREATEST" if dialect == "postgresql" else "max",
        }
        texts = dict(_STATEMENTS)
        for word, text in words.items():
            texts = {name: sql.replace(word, text) for name, sql in texts.items()}
        self.ticket, self.expire, self.grant, self.renew, self.release = (
            sa.text(texts[name]) for name in ("ticket", "expire", "grant", "renew", "release")
        )
        self.erase_tickets = sa.text(texts["erase_tickets"])
        self.erase_fences = sa.text(texts["erase_fences"])


class LockQueue:
    """The lock operations of one SQL backend, each one transaction."""

    def __init__(self, transaction: Transaction, dialect: str) -> None:
        """``transaction`` runs statements in one transaction and returns their rows."""
        self._transaction = transaction
        self._sql = LockStatements(dialect)

    async def ticket(self, owner: str, name: str, hold: float) -> int:
        lock = {"owner": owner, "name": name, "hold": hold}
        [rows] = await self._transaction("lock", [(self._sql.ticket, lock)])
        return int(rows[0][0])

    async def turn(
        self, owner: str, name: str, ticket: int, hold: float, lease: float
    ) -> bool | None:
        lock = {"owner": owner, "name": name}
        mine = {**lock, "ticket": ticket}
        sql = self._sql
        *_, renewed = await self._transaction(
            "lock",
            [
                (sql.expire, lock),
                (sql.grant, mine),
                (sql.renew, {**mine, "hold": hold, "lease": lease}),
            ],
        )
        if not renewed:
            return None
        token = renewed[0][0]
        if token is not None and token > ticket:
            # a later ticket committed first and was granted (a sequence draws numbers in
            # one order, transactions may commit in another): this one can never hold the
            # lock with a larger token, so it leaves the queue and its owner joins again
            await self.release(owner, name, ticket)
            return None
        return bool(token == ticket)

    async def release(self, owner: str, name: str, ticket: int) -> None:
        await self._transaction(
            "unlock", [(self._sql.release, {"owner": owner, "name": name, "ticket": ticket})]
        )

    async def erase(self, owner: str) -> None:
        """Drop every ticket and fence of ``owner`` (a user's erasure)."""
        user = {"owner": owner}
        await self._transaction(
            "delete_owner", [(self._sql.erase_tickets, user), (self._sql.erase_fences, user)]
        )
