"""Private ``redis-server`` processes for tests: a standalone server or a three-master
cluster on free loopback ports, in a temporary directory, stopped by the caller."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
CREATE_FLAGS = ("--cluster-yes",)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too; at most 55535,
    the highest a cluster node accepts."""
    while True:
        port = random.randint(20000, 45000)
        if _is_free(port) and _is_free(port + 10000):
            return port


def _wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} did not start")


def _spawn(arguments: list[str], port: int) -> subprocess.Popen[bytes]:
    """Start ``redis-server`` with ``arguments`` and wait until ``port`` listens."""
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server is not on PATH")
    process = subprocess.Popen(
        [REDIS_SERVER, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(port, time.monotonic() + 10)
    except BaseException:
        _terminate(process)  # a server that never listened is not left running either
        raise
    return process


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class RedisServer:
    """One ``redis-server`` on a loopback port; :meth:`start` again after :meth:`stop`."""

    directory: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = _spawn(
            [
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                *self.extra,
            ],
            self.port,
        )
        return self

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None


def redis_cli(port: int, *args: str | int) -> str:
    """``redis-cli -p port args...``'s output: the tests' view of their servers."""
    if REDIS_CLI is None:
        raise RuntimeError("redis-cli is not on PATH")
    return subprocess.run(
        [REDIS_CLI, "-p", str(port), *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout


@dataclass
class RedisClusterServers:
    """Three masters with ``cluster-enabled yes``, joined by ``redis-cli --cluster create``;
    with ``replicas=1``, a replica each (and a 1 s node timeout, so a failover takes
    seconds)."""

    directory: Path
    nodes: list[RedisServer] = field(default_factory=list)
    replicas: int = 0

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterServers:
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is not on PATH")
        extra: tuple[str, ...] = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        if self.replicas:
            extra = (*extra, "--cluster-node-timeout", "1000")
        for number in range(3 * (1 + self.replicas)):
            node = RedisServer(self.directory / f"node{number}", extra=extra)
            self.nodes.append(node)
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        flags = ("--cluster-replicas", str(self.replicas), *CREATE_FLAGS)
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addresses, *flags],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for node in self.nodes:
            while "cluster_state:ok" not in redis_cli(node.port, "cluster", "info") or not (
                self._synced(node)
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("the test cluster did not become ready")
                time.sleep(0.1)
        return self

    @staticmethod
    def _synced(node: RedisServer) -> bool:
        """A master, or a replica whose first sync with its master is done."""
        info = redis_cli(node.port, "info", "replication")
        return "role:master" in info or "master_link_status:up" in info

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class RedisSentinel:
    """A Sentinel (``redis-server --sentinel``) monitoring ``master`` as ``mymaster``."""

    directory: Path
    master_port: int
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisSentinel:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master_port} 1\n"
        )
        self.process = _spawn([str(config), "--sentinel"], self.port)
        return self

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None
