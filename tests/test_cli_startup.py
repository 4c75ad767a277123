"""How the command line starts: what it imports, how it ends, and how long it takes (printed
by the benchmark, never asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from backends.sql.migrate import code_head, head_revision

KVSTORE = str(Path(sys.executable).with_name("kvstore"))
"""The console script, as a user runs it."""


def test_the_command_line_starts_without_the_drivers() -> None:
    """`kvstore --help` and the commands' definitions import no database driver, SQLAlchemy,
    Alembic or rich's tables and progress bars: a command imports what it uses when it
    runs."""
    heavy = (
        *("sqlalchemy", "asyncpg", "aiosqlite", "redis", "hiredis", "alembic"),
        *("rich.table", "rich.progress"),
    )
    probe = f"import sys, kvstore.cli; print([m for m in {heavy!r} if m in sys.modules])"
    found = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()
    assert found == "[]"


def test_a_store_at_the_current_schema_opens_without_alembic(tmp_path: Path) -> None:
    """The schema check of every start compares with code_head() (equal to Alembic's head
    here) by plain SQL; Alembic is imported only when there is something to migrate."""
    assert head_revision() == code_head()
    url = f"sqlite:///{tmp_path / 'kv.db'}"
    probe = (
        "import asyncio, sys\n"
        "from kvstore import DatabaseType, create_database\n"
        "async def main():\n"
        f"    async with create_database(DatabaseType.SQL, {url!r}) as db:\n"
        "        await db.get_user('u1')\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
        ).stdout.strip()
        for _ in range(2)
    ]
    assert runs == ["True", "False"]  # the first run created the tables; the second did not


def test_the_console_script_flushes_its_output_and_keeps_its_exit_code(tmp_path: Path) -> None:
    """The script ends the process without the interpreter's teardown: what a command
    printed to a pipe still arrives, and its exit code is kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["KVSTORE_URL"] = f"sqlite:///{tmp_path / 'kv.db'}"

    def kvstore(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [KVSTORE, *args], input=stdin, env=env, capture_output=True, timeout=60, check=False
        )

    record = {"user_id": "u1", "session_id": "s1", "state": "A", "data": {"x": "X" * 100_000}}
    saved = kvstore("put", "state", stdin=orjson.dumps(record))
    assert (saved.returncode, saved.stderr) == (0, b"saved state u1 s1 version 1\n")
    found = kvstore("get", "state", "u1", "s1")
    assert found.returncode == 0
    assert orjson.loads(found.stdout)["data"] == record["data"]  # all of it, through a pipe
    missing = kvstore("get", "state", "u1", "nope")
    assert (missing.returncode, missing.stderr) == (4, b"no record state u1 nope\n")
    usage = kvstore("get")
    assert usage.returncode == 2
    assert b"Missing argument 'NAMESPACE'" in usage.stderr


@pytest.mark.slow
def test_the_startup_benchmark_prints_its_numbers() -> None:
    """`python -m benchmarks.cli_startup` prints a median and a range per command (run with
    -s to see them; the README quotes them)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli_startup"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    print(done.stdout)
    rows = re.findall(r"^\| `(kvstore [^`]+)` \| [\d.]+ \| [\d.]+-[\d.]+ \|$", done.stdout, re.M)
    assert rows == ["kvstore --help", "kvstore get state u1 s1 (SQLite, no such record)"]
