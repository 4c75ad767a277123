"""A private PostgreSQL cluster for tests that restart or stop the server: ``initdb`` into a
temporary directory, ``pg_ctl`` on a free loopback port, trust authentication. The shared
server on 5432 is never touched.

PostgreSQL refuses to run as root: when the tests run as root, the binaries run as the
``postgres`` user (``runuser``), and the directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

from tests.redis_servers import free_port

RUN_AS = "postgres"
"""The user the server runs as when the tests run as root."""


def find_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: ``$KVSTORE_TEST_PG_BIN``, else the newest
    ``/usr/lib/postgresql/*/bin``, else ``PATH``."""
    configured = os.environ.get("KVSTORE_TEST_PG_BIN")
    if configured:
        return Path(configured)
    versions = [p for p in Path("/usr/lib/postgresql").glob("*") if p.name.isdigit()]
    for version in sorted(versions, key=lambda p: int(p.name), reverse=True):
        if (version / "bin" / "initdb").exists():
            return version / "bin"
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _prefix() -> list[str]:
    """How to run a server binary: as ``postgres`` via runuser when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root needs runuser to start PostgreSQL as postgres")
    return [runuser, "-u", RUN_AS, "--"]


def available() -> str | None:
    """Why a private cluster cannot be started here, or ``None`` if it can."""
    binaries = find_bin()
    if binaries is None or not (binaries / "initdb").exists():
        return "initdb and pg_ctl were not found (set KVSTORE_TEST_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root, and there is no {RUN_AS!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root, and runuser is missing"
    return None


@contextlib.contextmanager
def primary_and_replica() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A primary and a streaming replica of it, both stopped and removed afterwards."""
    primary = PostgresServer()
    replica = PostgresServer()
    try:
        primary.start()
        replica.start_replica_of(primary)
        yield primary, replica
    finally:
        for server in (replica, primary):
            server.stop()
            server.remove()


@dataclass
class PostgresServer:
    """One cluster in a fresh temporary directory (under ``$TMPDIR``: the pytest temporary
    directories of root are closed to other users)."""

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kvstore-pg-")))
    bin: Path = field(default_factory=lambda: find_bin() or Path("/nonexistent"))

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def _pg_ctl_options(self) -> tuple[str, ...]:
        """Where the cluster and its log are; wait up to 60 s for the server."""
        return ("-D", str(self.data), "-l", str(self.log), "-w", "-t", "60")

    def _run(self, *arguments: str, timeout: float = 120) -> None:
        """Run a server binary; its output goes to a file, not a pipe: a server that pg_ctl
        starts inherits the descriptors, and a pipe would never reach its end."""
        command = [*_prefix(), str(self.bin / arguments[0]), *arguments[1:]]
        output = self.directory / f"{arguments[0]}.out"
        with output.open("ab") as sink:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                cwd=self.directory,
            )
        if result.returncode != 0:
            said = output.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"{arguments[0]} failed ({result.returncode}): {said}\n{self.log_tail()}"
            )

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def start(self) -> PostgresServer:
        """``initdb`` (first time only), then start and wait until it accepts connections."""
        if os.geteuid() == 0:
            user = pwd.getpwnam(RUN_AS)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        if not self.data.exists():
            self._run(
                "initdb",
                *("-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"),
                *("--locale", "C", "--no-sync"),
            )
        options = " ".join(
            (
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.directory}",
                # A clean shutdown (pg_ctl -m fast) writes everything out; fsync only guards
                # against the host crashing, which no test does. It makes a loaded CI faster.
                "-c fsync=off",
                "-c max_connections=200",
            )
        )
        self._run("pg_ctl", "start", *self._pg_ctl_options, "-o", options)
        return self

    def start_replica_of(self, primary: PostgresServer) -> PostgresServer:
        """Make this cluster a streaming replica of ``primary`` (``pg_basebackup -R``:
        a base backup, ``standby.signal`` and the connection to the primary) and start it."""
        if os.geteuid() == 0:
            user = pwd.getpwnam(RUN_AS)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
            *("-D", str(self.data), "-R", "-X", "stream", "--no-sync"),
        )
        return self.start()

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m <mode>``: sessions are cut; committed data stays."""
        self._run("pg_ctl", "restart", *self._pg_ctl_options, "-m", mode)

    def processes(self) -> list[int]:
        """The postmaster's pid and those of its children (backends, background workers)."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                # the parent pid is the 4th field, after the parenthesised command name
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[1]) == postmaster:
                    children.append(int(entry.name))
        return [postmaster, *children]

    def freeze(self) -> None:
        """SIGSTOP the server and every process of it: connections stay open, nothing
        answers (a VM pause, a host under swap)."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop at once (``-m immediate``); if pg_ctl cannot, SIGKILL the postmaster."""
        if not self.data.exists():
            return
        try:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid_file = self.data / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pid_file.read_text().splitlines()[0]), 9)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
