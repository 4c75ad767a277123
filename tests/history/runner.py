"""The test side of the history test: worker processes started, driven and always killed,
and the test's own log of what it did (faults, reads of SQL, batch updates) on the same
CLOCK_MONOTONIC time line as the workers' logs."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection
    from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: workers run ``python -m tests.history.worker`` from there."""

READY_DEADLINE = 90.0
"""Seconds for every worker to start and open its store (imports are slow on a loaded
2-core machine)."""
REPLY_DEADLINE = 30.0
"""Seconds a worker may take to answer one command."""
EXIT_DEADLINE = 30.0

Event = dict[str, Any]


class WorkerFailedError(Exception):
    """A worker did not do what it was told: it died, refused, or did not answer in time."""


@dataclass
class WorkerSpec:
    """One worker of a scenario."""

    name: str
    keys: list[str]
    write_keys: list[str]
    skew: float = 0.0
    crash_after: int | None = None
    cache_url: str | None = None
    """Where this worker's cache is, if not the scenario's Redis (a proxy)."""
    read_ratio: float = 0.7
    pause_ms: float = 2.0
    """The most a worker pauses between two operations (a random part of it)."""
    options: dict[str, object] = field(default_factory=dict)
    """More ``create_database`` options of this worker's store (JSON values)."""


class WorkerProcess:
    """``python -m tests.history.worker`` with a pipe each way; stderr and the log go to
    files in ``directory``."""

    def __init__(
        self, spec: WorkerSpec, *, sql_url: str, cache_url: str, directory: Path, seed: int
    ) -> None:
        self.spec = spec
        self.log_path = directory / f"{spec.name}.jsonl"
        self.stderr_path = directory / f"{spec.name}.stderr"
        arguments = [
            *("--name", spec.name, "--sql", sql_url, "--cache", spec.cache_url or cache_url),
            *("--log", str(self.log_path), "--seed", str(seed)),
            *("--read-ratio", str(spec.read_ratio), "--skew", str(spec.skew)),
            *("--pause-ms", str(spec.pause_ms)),
            *("--keys", *spec.keys),
            *("--write-keys", *spec.write_keys),
        ]
        for name, value in spec.options.items():
            arguments += ["--option", f"{name}={json.dumps(value)}"]
        if spec.crash_after is not None:
            arguments += ["--crash-after", str(spec.crash_after)]
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.history.worker", *arguments],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def name(self) -> str:
        return self.spec.name

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for raw in stdout:
                self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def stderr_tail(self, size: int = 2000) -> str:
        try:
            return self.stderr_path.read_text("utf-8", "replace")[-size:]
        except OSError:
            return ""

    def send(self, command: Event) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(command) + "\n").encode())
            self.process.stdin.flush()
        except OSError as exc:
            raise WorkerFailedError(f"{self.name}: cannot send {command}: {exc!r}") from exc

    def expect(self, event: str, deadline: float) -> Event:
        """The next message of the worker, which must be ``event``."""
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerFailedError(
                    f"{self.name}: no {event!r} in time\n{self.stderr_tail()}"
                ) from None
            if line is None:
                self.process.wait(timeout=5)
                raise WorkerFailedError(
                    f"{self.name} exited ({self.process.returncode}) instead of {event!r}\n"
                    f"{self.stderr_tail()}"
                )
            if not line.strip():
                continue
            message: Event = json.loads(line)
            if message.get("event") == "failed":
                raise WorkerFailedError(
                    f"{self.name} could not open the store: {message.get('error')}: "
                    f"{message.get('message')}"
                )
            if message.get("event") != event:
                raise WorkerFailedError(f"{self.name}: expected {event!r}, got {message}")
            return message

    def call(self, command: Event) -> Event:
        """Send one operation (``save``, ``get``, ``delete``) and return its log record."""
        self.send(command)
        return self.expect("result", time.monotonic() + REPLY_DEADLINE)

    def kill(self) -> None:
        """SIGKILL the worker if it still runs, reap it and close the pipes (the reader
        thread first sees the end of its output)."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@dataclass
class Run:
    """The workers of one scenario and the test's own log; a context manager that kills
    every worker on exit, whatever happened."""

    directory: Path
    sql_url: str
    cache_url: str
    specs: list[WorkerSpec]
    seed: int = 1
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    """The test's own log: faults and observations, with monotonic ns times."""
    started_ns: int = 0
    """When the load started (``run`` sent to every worker)."""

    def __enter__(self) -> Run:
        self.directory.mkdir(parents=True, exist_ok=True)
        for number, spec in enumerate(self.specs):
            self.workers[spec.name] = WorkerProcess(
                spec,
                sql_url=self.sql_url,
                cache_url=self.cache_url,
                directory=self.directory,
                seed=self.seed * 100 + number,
            )
        deadline = time.monotonic() + READY_DEADLINE
        for worker in self.workers.values():
            worker.expect("ready", deadline)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for worker in self.workers.values():
            worker.kill()
        with (self.directory / "test-events.jsonl").open("w") as log:
            for event in self.events:
                log.write(json.dumps(event) + "\n")

    # -- the load ------------------------------------------------------------------------

    def start_load(self) -> None:
        for worker in self.workers.values():
            worker.send({"cmd": "run"})
        self.started_ns = time.monotonic_ns()
        self.note("load started")
        deadline = time.monotonic() + REPLY_DEADLINE
        for worker in self.workers.values():
            worker.expect("running", deadline)

    def elapsed(self) -> float:
        """Seconds since the load started."""
        return (time.monotonic_ns() - self.started_ns) / 1e9

    def sleep_until(self, seconds: float) -> None:
        """Sleep until ``seconds`` after the load started."""
        time.sleep(max(0.0, seconds - self.elapsed()))

    def stop_load(self, *, dead: Collection[str] = ()) -> None:
        """Stop the load on every worker but the ``dead`` ones."""
        self.note("load stopping")
        live = [w for w in self.workers.values() if w.name not in dead]
        for worker in live:
            worker.send({"cmd": "stop"})
        deadline = time.monotonic() + REPLY_DEADLINE
        for worker in live:
            worker.expect("done", deadline)

    def quit(self) -> dict[str, int | None]:
        """Tell every worker to quit; return their exit codes (None: did not exit)."""
        for worker in self.workers.values():
            if worker.process.poll() is None:
                with contextlib.suppress(WorkerFailedError):
                    worker.send({"cmd": "quit"})
        deadline = time.monotonic() + EXIT_DEADLINE
        codes: dict[str, int | None] = {}
        for worker in self.workers.values():
            try:
                codes[worker.name] = worker.process.wait(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                codes[worker.name] = None
        return codes

    # -- the test's own log --------------------------------------------------------------

    def note(self, what: str, **details: Any) -> Event:
        """Log something the test did, at the time it returned."""
        now = time.monotonic_ns()
        event: Event = {"w": "test", "op": "note", "what": what, "start": now, "end": now}
        event.update(details)
        self.events.append(event)
        return event

    def observed(self, key: str, start: int, version: int | None, marker: str | None) -> None:
        """The test read ``key`` from the system of record (SQL) between ``start`` and now:
        that version is known committed from now on, like an acknowledged write."""
        self.events.append(
            {
                "w": "test",
                "op": "observe",
                "key": key,
                "start": start,
                "end": time.monotonic_ns(),
                "version": version,
                "marker": marker,
            }
        )

    def batch_updated(self, key: str, start: int, marker: str) -> None:
        """A plain SQL UPDATE (a batch job) committed ``marker`` into ``key`` just now."""
        self.events.append(
            {
                "w": "test",
                "op": "batch",
                "key": key,
                "start": start,
                "end": time.monotonic_ns(),
                "batch": marker,
            }
        )

    def logs(self) -> list[Path]:
        return [worker.log_path for worker in self.workers.values()]
