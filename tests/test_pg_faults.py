"""PostgreSQL failing under load, on a private cluster the test starts (tests/pg_servers.py):
restarted (``pg_ctl restart -m fast`` and ``-m immediate``, which runs crash recovery) and
frozen (every server process SIGSTOPped for 3 s). Sixteen tasks read and save their own
sessions throughout, on the SQL store and on a tiered store in front of it.

The invariants: a call either succeeds or raises ``BackendUnavailableError`` (nothing
else escapes); no call hangs (a 60 s guard, never a timing claim); the store serves again
once the server does; and nothing acknowledged is lost: each session holds what was last
acknowledged, or a later attempt whose outcome its caller could not know.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import pytest

from kvstore import BackendUnavailableError, Database, DatabaseType, StateRecord, create_database
from tests import pg_servers

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKERS = 16
HANG_GUARD = 60.0
"""Seconds one call may take before the test fails as hung."""
USER = "fault-user"


@dataclass
class Load:
    """What the workers saw."""

    attempts: dict[str, int] = field(default_factory=dict)
    """Per session, the number of the last save attempted (its state is ``N<number>``)."""
    acked: dict[str, int] = field(default_factory=dict)
    """Per session, the number of the last save acknowledged."""
    uncertain: set[str] = field(default_factory=set)
    """Sessions whose attempts since the last acknowledgement all failed (at their read or
    their save: a save may never have been sent)."""
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    saved: int = 0
    served_after_fault: int = 0
    recovered: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once every worker could have been served a few times after the fault."""


def number_of(record: StateRecord) -> int:
    return int(record.state[1:])


async def drive(db: Database, load: Load, fault_over: asyncio.Event, stop: asyncio.Event) -> None:
    async def worker(index: int) -> None:
        session = f"s{index}"
        number = 0
        while not stop.is_set():
            number += 1
            load.attempts[session] = number
            try:
                async with asyncio.timeout(HANG_GUARD):
                    await db.get_state(USER, session)
                    record = StateRecord(user_id=USER, session_id=session, state=f"N{number}")
                    await db.save_state(record)
            except BackendUnavailableError as error:
                load.errors[str(error).split(" on ")[0]] += 1  # the action that failed
                load.uncertain.add(session)
                await asyncio.sleep(0.05)
                continue
            except TimeoutError:
                pytest.fail(f"a call on session {session} hung for {HANG_GUARD:.0f} s")
            load.acked[session] = number
            load.saved += 1
            load.uncertain.discard(session)
            if fault_over.is_set():
                load.served_after_fault += 1
                if load.served_after_fault >= 3 * WORKERS:
                    load.recovered.set()

    await asyncio.gather(*(worker(i) for i in range(WORKERS)))


async def check_nothing_lost(db: Database, load: Load) -> None:
    for session, acked in load.acked.items():
        stored = await db.get_state(USER, session)
        assert stored is not None, session
        if session in load.uncertain:
            # Every attempt after the acknowledged one failed, at its read or its save:
            # any of them may have landed, or none.
            assert acked <= number_of(stored) <= load.attempts[session], (session, acked)
        else:
            assert number_of(stored) == acked, (session, stored.state, acked)


def store(kind: str, url: str) -> Database:
    options = {"statement_timeout": 1.0, "connect_timeout": 1.0, "pool_size": 8}
    if kind == "sql":
        return create_database(DatabaseType.SQL, url, **options)  # type: ignore[arg-type]
    return create_database(
        DatabaseType.TIERED,
        url,
        cache_url="memory://",
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("kind", ["sql", "tiered"])
@pytest.mark.parametrize("fault", ["restart fast", "restart immediate", "freeze 3 s"])
def test_postgres_failing_under_load_gives_typed_errors_and_loses_nothing(
    private_postgres: pg_servers.PostgresServer, kind: str, fault: str
) -> None:
    asyncio.run(_run(private_postgres, kind, fault))


async def _run(server: pg_servers.PostgresServer, kind: str, fault: str) -> None:
    load = Load()
    fault_over, stop = asyncio.Event(), asyncio.Event()
    async with store(kind, server.url) as db:
        workers = asyncio.create_task(drive(db, load, fault_over, stop))
        try:
            await asyncio.sleep(1.0)
            if fault.startswith("restart"):
                await asyncio.to_thread(server.restart, fault.split()[1])
            else:
                server.freeze()
                try:
                    await asyncio.sleep(3.0)
                finally:
                    server.thaw()
            fault_over.set()
            async with asyncio.timeout(HANG_GUARD):
                await load.recovered.wait()
        finally:
            stop.set()
            await workers
        await check_nothing_lost(db, load)
    print(f"\n{kind}, {fault}: {load.saved} saves acknowledged; errors {dict(load.errors)}")
    assert load.acked, "no save was acknowledged at all"
    if fault.startswith("freeze"):
        assert load.errors, "a 3 s freeze against 1 s statement timeouts failed no call"
