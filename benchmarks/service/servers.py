"""The processes of the service benchmark: a private PostgreSQL cluster, a private
``redis-server`` that can go back to an old snapshot, and uvicorn with worker processes.

Each can be hurt on purpose (restart, freeze, SIGKILL) and is stopped by its owner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import httpx

from kvstore import DatabaseType, create_database
from tests.pg_servers import PostgresServer
from tests.redis_servers import RedisServer, free_port, redis_cli

if TYPE_CHECKING:
    from collections.abc import Mapping

REPOSITORY = Path(__file__).resolve().parents[2]
FENCED_LINE = "coach turn fenced off"
"""What a worker logs when the store refused a write of its turn (examples/coach/turns.py)."""


@dataclass
class Postgres:
    """A private cluster (so it can be restarted) with one fresh database, ``kvsvc_...``."""

    server: PostgresServer = field(default_factory=PostgresServer)
    name: str = field(default_factory=lambda: f"kvsvc_{uuid.uuid4().hex[:8]}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.server.port}/{self.name}"

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        admin = await asyncpg.connect(self.server.url, timeout=30)
        try:
            await admin.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await admin.close()
        async with create_database(DatabaseType.SQL, self.url) as db:
            await db.initialize()  # the tables, before four workers race to make them

    async def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is cut, committed data stays."""
        await asyncio.to_thread(self.server.restart, "fast")

    def stop(self) -> None:
        self.server.thaw()
        self.server.stop()
        self.server.remove()


@dataclass
class Redis:
    """A private ``redis-server``; :meth:`snapshot` keeps its data of now, which
    :meth:`restart` can bring back later (the cache going back in time)."""

    directory: Path
    server: RedisServer = field(init=False)

    def __post_init__(self) -> None:
        self.server = RedisServer(self.directory)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def _dump(self) -> Path:
        return self.directory / "dump.rdb"

    @property
    def _old(self) -> Path:
        return self.directory / "old.rdb"

    def start(self) -> None:
        self.server.start()
        self._dump.unlink(missing_ok=True)  # loaded: the next restart starts empty

    def snapshot(self) -> None:
        redis_cli(self.server.port, "SAVE")
        shutil.move(self._dump, self._old)

    def restart(self, *, from_snapshot: bool) -> None:
        """SIGKILL, then start empty or from the snapshot."""
        process = self.server.process
        if process is not None:
            process.kill()
            process.wait()
        self.server.process = None
        if from_snapshot:
            shutil.copyfile(self._old, self._dump)
        self.start()

    async def freeze(self, seconds: float) -> None:
        process = self.server.process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.server.process is not None:
            self.server.process.send_signal(signal.SIGCONT)
        self.server.stop()


@dataclass
class Service:
    """``uvicorn --factory examples.coach.app:create_app --workers N`` on a free port; its
    output goes to ``log``."""

    environment: Mapping[str, str]
    log: Path
    workers: int = 4
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            *(sys.executable, "-m", "uvicorn", "--factory", "examples.coach.app:create_app"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)),
            # a worker frozen past its lock's lease is not taken for hung and killed (5 s)
            *("--timeout-worker-healthcheck", "15", "--no-access-log", "--log-level", "warning"),
        ]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                command,
                cwd=REPOSITORY,
                env={**os.environ, **self.environment},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def worker_pids(self) -> list[int]:
        """The worker processes (multiprocessing children running the server) now."""
        if self.process is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                command = (entry / "cmdline").read_bytes()
                if int(fields[1]) == self.process.pid and b"spawn_main" in command:
                    found.append(int(entry.name))
        return found

    async def ready(self, within: float = 120.0) -> None:
        """Wait until every worker runs and the service answers ``/health``."""
        give_up = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while time.monotonic() < give_up:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"uvicorn exited: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    seen = {(await client.get("/health")).json()["pid"] for _ in range(8)}
                    if len(self.worker_pids()) == self.workers and seen:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the service did not start within {within} s: {self.log_tail()}")

    def fenced(self) -> int:
        """Turns whose writes the store refused: a worker had lost its lock."""
        return self.log.read_text(errors="replace").count(FENCED_LINE)

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:]

    def stop(self) -> None:
        """SIGTERM (uvicorn stops its workers), SIGKILL after 30 s; frozen workers thawed."""
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in self.worker_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait()
        self.process = None
