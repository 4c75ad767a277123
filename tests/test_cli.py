"""The ``kvstore`` command line, on SQLite files (the embedded default)."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg
import orjson
import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from backends.base import Entry
from backends.sql import build_sql_backend
from backends.sql.migrate import current_revision, head_revision, upgrade
from kvstore import BackendUnavailableError, DatabaseType, Id, Record, create_database
from kvstore.cli import main
from kvstore.collection import Collection
from kvstore.keys import Key
from tests import postgres
from tests.redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("KVSTORE_URL", url)
    monkeypatch.delenv("KVSTORE_CACHE_URL", raising=False)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """$KVSTORE_URL set to an empty SQLite file, or to the session's emptied PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cli.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        asyncio.run(postgres.execute(url, "DELETE FROM kv_records"))
    monkeypatch.setenv("KVSTORE_URL", url)
    monkeypatch.delenv("KVSTORE_CACHE_URL", raising=False)
    return url


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Exit code and everything printed (stdout and stderr)."""
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.output


def invoke_json(*args: str) -> tuple[int, Any]:
    """Exit code and the JSON on stdout (progress bars go to stderr)."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, orjson.loads(result.stdout)


def test_help_lists_commands() -> None:
    code, output = invoke("--help")
    assert code == 0
    for command in ("demo", "get", "put", "delete", "ls", "export", "import", "db", "stats"):
        assert command in output


def test_connection_options_go_before_or_after_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVSTORE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.delenv("KVSTORE_CACHE_URL", raising=False)
    record = orjson.dumps({"user_id": "u1", "session_id": "s", "state": "A"}).decode()
    before, after = f"sqlite:///{tmp_path / 'before.db'}", f"sqlite:///{tmp_path / 'after.db'}"
    assert invoke("--url", before, "put", "state", stdin=record)[0] == 0
    assert invoke("put", "state", "--url", after, stdin=record)[0] == 0
    assert invoke("--url", before, "get", "state", "u1", "s", "--url", after)[0] == 0
    assert invoke("get", "state", "u1", "s")[0] == 4  # $KVSTORE_URL: nothing there
    assert invoke("--url", before, "get", "state", "u1", "s")[0] == 0
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["after.db", "before.db", "env.db"]
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert invoke("--url", fresh, "db", "upgrade")[0] == 0  # db commands too
    assert invoke("db", "current", "--url", fresh)[0] == 0
    assert invoke("--url", fresh, "purge-expired")[0] == 0
    assert invoke("db", "current")[0] == 0  # $KVSTORE_URL: env.db, upgraded by its put


def test_demo_plays_the_whole_conversation_on_memory() -> None:
    code, output = invoke("demo", "--url", "memory://", "--turns", "10")
    assert code == 0, output
    assert "New conversation" in output
    assert "Calm Leader (refined)" in output
    assert "Conversation complete" in output


def test_a_cache_url_alone_puts_the_cache_in_front_of_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KVSTORE_URL", raising=False)
    code, output = invoke("demo", "--cache-url", "memory://", "--turns", "1")
    assert code == 0, output
    assert "sqlite+aiosqlite:///kvstore.db + memory://" in output
    assert (tmp_path / "kvstore.db").exists()
    monkeypatch.setenv("KVSTORE_CACHE_URL", "memory://")  # as the issue ran it
    code, output = invoke("demo", "--turns", "1")
    assert code == 0, output
    assert output.startswith("store: tiered(sqlite+aiosqlite:///kvstore.db + memory://)")


def test_demo_resumes_after_the_process_restarts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    runs = [
        subprocess.run(
            [sys.executable, "-c", "from kvstore.cli import main; main()", "demo"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for _ in range(3)
    ]
    assert "New conversation" in runs[0]
    assert "Resuming at turn 4" in runs[1]
    assert "Conversation complete" in runs[2] or "Resuming at turn 7" in runs[2]
    assert (tmp_path / "kvstore.db").exists()  # the embedded default


def test_demo_with_a_bad_url_exits_cleanly_without_the_password() -> None:
    code, output = invoke("demo", "--url", "mysql://root:hunter2@db/x")
    assert code == 1
    assert "ConfigurationError" in output
    assert "hunter2" not in output


def test_put_get_ls_delete(store_url: str) -> None:
    record = {"user_id": "u1", "session_id": "s1", "state": "CHAT", "data": {"n": 1}}
    code, output = invoke("put", "state", stdin=orjson.dumps(record).decode())
    assert code == 0, output
    assert "version 1" in output
    code, output = invoke("get", "state", "u1", "s1")
    assert code == 0
    assert orjson.loads(output)["data"] == {"n": 1}
    code, output = invoke("ls", "state", "u1", "--json")
    assert code == 0
    assert [orjson.loads(line)["key"] for line in output.splitlines()] == [["u1", "s1"]]
    code, output = invoke(
        "put", "state", "--expected-version", "0", stdin=orjson.dumps(record).decode()
    )
    assert code == 6  # a conflict: read again and retry
    assert "ConflictError" in output
    code, output = invoke("put", "state", stdin='{"user_id": "u1"}')
    assert code == 1
    assert "InvalidRecordError" in output
    assert invoke("delete", "state", "u1", "s1")[0] == 0
    assert invoke("delete", "state", "u1", "s1")[0] == 4
    assert invoke("get", "state", "u1", "s1")[0] == 4


@pytest.mark.parametrize("user", ["[/b]", "u[x]", "[bold]me", ":smile:", "a\\[b]"])
def test_ids_and_values_are_printed_literally(sqlite_url: str, user: str) -> None:
    """Square brackets and emoji codes in what a user typed or stored are never read as
    markup: no traceback, nothing eaten."""
    record = {"user_id": user, "session_id": "s[1]", "state": "[red]X[/]"}
    code, output = invoke("put", "state", stdin=orjson.dumps(record).decode())
    assert code == 0, output
    assert f"saved state {user} s[1] version 1" in output
    code, output = invoke("get", "state", user, "s[1]")
    assert code == 0, output
    assert orjson.loads(output)["state"] == "[red]X[/]"
    code, output = invoke("ls", "state", user)
    assert code == 0, output
    assert "s[1]" in output
    code, output = invoke("ls", "state", "[bad]")
    assert code == 0, output
    code, output = invoke("delete", "state", user, "s[1]")
    assert (code, output.strip()) == (0, f"deleted state {user} s[1]")
    code, output = invoke("get", "state", user, "s[1]")
    assert (code, output.strip()) == (4, f"no record state {user} s[1]")


def test_an_error_message_shows_the_pattern_it_names(sqlite_url: str) -> None:
    code, output = invoke("ls", "no/such[ns]", "u1")
    assert code != 0
    assert "no/such[ns]" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "args",
    [
        ("put", "state", "--url", "postgresql://u:s3cret@db/x?sslmod=disable"),
        ("get", "state", "u1", "s1", "--url", "redis://:s3cret@cache/0?poolsize=3"),
        ("purge-expired", "--url", "redis://127.0.0.1:6379/9"),
        ("purge-expired", "--url", "mysql://u:s3cret@db/x"),
        ("ls", "state", "u1", "--url", "postgresql://u:s3cret@db:99999/x"),
    ],
)
def test_a_bad_url_is_one_line_without_the_password(args: tuple[str, ...]) -> None:
    code, output = invoke(*args, stdin="{}")
    assert code == 1
    assert output.startswith("error: ConfigurationError: ")
    assert output.count("\n") == 1  # never wrapped at 80 columns
    assert "Traceback" not in output
    assert "s3cret" not in output


def test_export_import_round_trip_with_rejects(store_url: str, tmp_path: Path) -> None:
    for n in range(20):
        record = {"user_id": f"u{n}", "session_id": "s", "state": "A"}
        assert invoke("put", "state", stdin=orjson.dumps(record).decode())[0] == 0
    backup = tmp_path / "backup.jsonl.gz"
    code, output = invoke("export", "-o", str(backup))
    assert code == 0, output
    assert "exported 20 records" in output
    lines = gzip.decompress(backup.read_bytes()).splitlines(keepends=True)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(b"".join(lines[:5]) + b"{not json\n" + b"".join(lines[5:]))

    target = f"sqlite:///{tmp_path / 'restored.db'}"
    code, output = invoke("import", str(damaged), "--url", target)
    assert code == 3, output
    assert "line 6" in output
    assert "written 20" in output
    rejects = tmp_path / "damaged.jsonl.rejects.jsonl"
    assert rejects.read_bytes() == b"{not json\n"
    code, output = invoke("import", str(backup), "--url", target)
    assert code == 0, output
    assert "written 0, unchanged 20" in output
    code, output = invoke("get", "state", "u7", "s", "--url", target)
    assert orjson.loads(output)["version"] == 1


def test_an_interrupted_export_or_import_leaves_no_file_that_looks_complete(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        record = {"user_id": f"u{n}", "session_id": "s", "state": "A"}
        assert invoke("put", "state", stdin=orjson.dumps(record).decode())[0] == 0
    backup = tmp_path / "backup.jsonl.gz"
    assert invoke("export", "-o", str(backup))[0] == 0
    whole = backup.read_bytes()

    async def broken(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        yield b'{"line": 1}\n'
        raise BackendUnavailableError("the database went away mid-export")

    monkeypatch.setattr("kvstore.cli.transfer.export_lines", broken)
    code, output = invoke("export", "-o", str(backup))
    assert code == 7  # the server did not answer
    assert "went away" in output
    assert backup.read_bytes() == whole  # the earlier, complete backup is untouched
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]

    async def cut(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailableError("the database went away mid-import")

    monkeypatch.setattr("kvstore.cli.transfer.import_lines", cut)
    code, output = invoke("import", str(backup))
    assert code == 7
    assert not (tmp_path / "backup.jsonl.gz.rejects.jsonl").exists()  # nor an empty rejects

    async def stopped(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("kvstore.cli.transfer.import_lines", stopped)
    code, output = invoke("import", str(backup))
    assert (code, output.strip()) == (130, "error: interrupted: stopped by Ctrl-C")
    assert not (tmp_path / "backup.jsonl.gz.rejects.jsonl").exists()


def test_a_dry_run_import_writes_nothing_and_reports_what_a_real_run_would(
    sqlite_url: str, tmp_path: Path
) -> None:
    for n in range(4):
        record = {"user_id": f"u{n}", "session_id": "s", "state": "A"}
        assert invoke("put", "state", stdin=orjson.dumps(record).decode())[0] == 0
    record = {"user_id": "u0", "session_id": "s", "state": "B"}
    assert invoke("put", "state", stdin=orjson.dumps(record).decode())[0] == 0  # u0 at v2
    backup = tmp_path / "backup.jsonl"
    assert invoke("export", "-o", str(backup))[0] == 0

    fresh = tmp_path / "fresh.db"
    code, output = invoke("import", str(backup), "--dry-run", "--url", f"sqlite:///{fresh}")
    assert (code, output.strip().splitlines()[-1]) == (
        0,
        "read 4, would write 4, unchanged 0, rejected 0",
    )
    assert not fresh.exists()  # a dry run creates no database

    partial = f"sqlite:///{tmp_path / 'partial.db'}"
    older = {"user_id": "u0", "session_id": "s", "state": "old"}  # v1 < the backup's v2
    assert invoke("put", "state", "--url", partial, stdin=orjson.dumps(older).decode())[0] == 0
    same = {"user_id": "u1", "session_id": "s", "state": "A"}  # v1 = the backup's v1
    assert invoke("put", "state", "--url", partial, stdin=orjson.dumps(same).decode())[0] == 0
    code, output = invoke("import", str(backup), "--dry-run", "--url", partial)
    dry = output.strip().splitlines()[-1]
    assert (code, dry) == (0, "read 4, would write 3, unchanged 1, rejected 0")
    code, output = invoke("get", "state", "u0", "s", "--url", partial)
    assert orjson.loads(output)["state"] == "old"  # nothing written
    code, output = invoke("import", str(backup), "--url", partial)
    assert output.strip().splitlines()[-1] == dry.replace("would write", "written")


NOTES_V2 = """
from typing import ClassVar

from kvstore import Id, Record


class Note(Record):
    SCHEMA_VERSION: ClassVar[int] = 2
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
    user_id: Id
    note_id: Id
    title: str


@Note.upgrade(from_version=1)
def _title_from_text(data):
    data["title"] = data.pop("text").upper()
    return data
"""


def test_records_migrate_takes_a_users_own_record_class(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--model module:Class migrates a namespace of the caller's own records (the case that
    needs it: the built-in ones are all at schema version 1); idempotent."""

    class Note(Record):  # the shape the records were stored in (schema version 1)
        KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
        user_id: Id
        note_id: Id
        text: str

    async def store_v1() -> None:
        async with create_database(DatabaseType.SQL, sqlite_url) as db:
            notes = db.collection(Note, "notes")
            for n in range(3):
                await notes.save(Note(user_id="u1", note_id=f"n{n}", text=f"note {n}"))

    asyncio.run(store_v1())
    (tmp_path / "my_notes_v2.py").write_text(NOTES_V2)
    monkeypatch.chdir(tmp_path)
    args = ("records", "migrate", "--model", "my_notes_v2:Note", "--namespace", "notes")
    code, output = invoke(*args)
    assert code == 0, output
    assert "notes: scanned 3, migrated 3" in output
    code, output = invoke(*args)
    assert "notes: scanned 3, migrated 0" in output  # already current: idempotent
    stored = asyncio.run(_raw_values(sqlite_url, "notes"))
    assert [(v["schema_version"], v["title"]) for v in stored] == [
        (2, "NOTE 0"),
        (2, "NOTE 1"),
        (2, "NOTE 2"),
    ]
    for bad, message in [
        ("my_notes_v2", "module:Class"),
        ("no_such_module:Note", "cannot import"),
        ("my_notes_v2:Record", "not a Record subclass"),
    ]:
        code, output = invoke("records", "migrate", "--model", bad, "--namespace", "notes")
        assert (code, "Traceback" in output) == (1, False), output
        assert message in output
    code, output = invoke("records", "migrate", "--namespace", "notes")
    assert code == 1
    assert "not a built-in namespace: notes" in output


def test_an_interrupted_migration_resumes_where_it_stopped(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after 40 of 100 rewrites: exit code 130; the next run migrates the rest (the
    records already current are skipped), the one after finds nothing to do."""

    class Note(Record):
        KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
        user_id: Id
        note_id: Id
        text: str

    async def store_v1() -> None:
        async with create_database(DatabaseType.SQL, sqlite_url) as db:
            notes = db.collection(Note, "notes")
            for n in range(100):
                await notes.save(Note(user_id=f"u{n % 7}", note_id=f"n{n}", text=f"note {n}"))

    asyncio.run(store_v1())
    (tmp_path / "my_notes_resume.py").write_text(NOTES_V2)
    monkeypatch.chdir(tmp_path)
    args = (
        *("records", "migrate", "--model", "my_notes_resume:Note"),
        *("--namespace", "notes", "--batch-size", "10"),
    )
    saved = 0
    save = Collection.save

    async def save_until_interrupted(self: Any, *a: Any, **k: Any) -> Any:
        nonlocal saved
        if saved == 40:
            raise KeyboardInterrupt
        saved += 1
        return await save(self, *a, **k)

    monkeypatch.setattr(Collection, "save", save_until_interrupted)
    code, output = invoke(*args)
    assert (code, output.strip().splitlines()[-1]) == (130, "error: interrupted: stopped by Ctrl-C")
    monkeypatch.setattr(Collection, "save", save)
    stored = asyncio.run(_raw_values(sqlite_url, "notes"))
    assert sum(v["schema_version"] == 2 for v in stored) == 40
    code, output = invoke(*args)
    assert (code, "notes: scanned 100, migrated 60" in output) == (0, True), output
    code, output = invoke(*args)
    assert (code, "notes: scanned 100, migrated 0" in output) == (0, True), output


async def _raw_values(url: str, namespace: str) -> list[Any]:
    backend = build_sql_backend(url)
    try:
        return [orjson.loads(e.value) async for _, e in backend.scan(namespace=namespace)]
    finally:
        await backend.close()


def test_db_upgrade_current_purge_stats_and_migrate(sqlite_url: str) -> None:
    code, output = invoke("db", "current")
    assert code == 5, output  # a new file has no schema yet (2 is click's usage error)
    assert invoke("db", "upgrade")[0] == 0
    code, output = invoke("db", "current")
    assert code == 0, output
    assert f"current {head_revision()}" in output
    assert invoke("put", "user", stdin='{"user_id": "u1"}')[0] == 0
    code, output = invoke("purge-expired")
    assert code == 0
    assert "deleted 0 expired records" in output
    code, output = invoke("stats", "--json")
    assert code == 0
    assert orjson.loads(output)["records"] == {"user": 1}
    code, output = invoke("records", "migrate")
    assert code == 0, output
    assert "user: scanned 1, migrated 0" in output


@pytest.fixture
def tiered_env(
    postgres_url: str, private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> str:
    """KVSTORE_URL and KVSTORE_CACHE_URL for the session's PostgreSQL and private Redis,
    both emptied."""
    asyncio.run(postgres.execute(postgres_url, "DELETE FROM kv_records"))
    asyncio.run(_flush(private_redis.url))
    monkeypatch.setenv("KVSTORE_URL", postgres_url)
    monkeypatch.setenv("KVSTORE_CACHE_URL", private_redis.url)
    return postgres_url


async def _flush(url: str) -> None:
    client = Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


@pytest.mark.postgres
@pytest.mark.redis
def test_cache_follow_applies_a_batch_jobs_change_to_the_cache(tiered_env: str) -> None:
    record = {"user_id": "u1", "session_id": "s", "state": "A"}
    assert invoke("put", "state", stdin=orjson.dumps(record).decode())[0] == 0
    assert orjson.loads(invoke("get", "state", "u1", "s")[1])["state"] == "A"  # cached
    follower = subprocess.Popen(  # a process of its own, as it runs in a deployment
        [
            sys.executable,
            "-c",
            "from kvstore.cli import main; main()",
            "cache",
            "follow",
            "--seconds",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert follower.stdout is not None
        started = follower.stdout.readline()  # it follows from here on
        assert b"following" in started, started
        asyncio.run(
            postgres.execute(
                tiered_env,
                "UPDATE kv_records SET value = jsonb_set(value, '{state}', '\"B\"') "
                "WHERE owner = 'u1'",
            )
        )
        output, _ = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0, output
    assert b"applied" in output
    code, output_text = invoke("get", "state", "u1", "s")
    assert code == 0, output_text
    assert orjson.loads(output_text)["state"] == "B"


def test_cache_verify_finds_and_repairs_a_difference_then_warm(tiered_env: str) -> None:
    for n in range(5):
        record = {"user_id": f"u{n}", "session_id": "s", "state": "A"}
        assert invoke("put", "state", stdin=orjson.dumps(record).decode())[0] == 0
    code, report = invoke_json("cache", "verify", "--json")
    assert code == 0, report
    assert report["checked"] == 5
    behind_the_back = (
        "UPDATE kv_records SET value = jsonb_set(value, '{state}', '\"B\"'), "
        "version = version + 1 WHERE owner = 'u3'"
    )
    asyncio.run(postgres.execute(tiered_env, behind_the_back))
    code, output = invoke("get", "state", "u3", "s")
    assert orjson.loads(output)["state"] == "A"  # the hot read comes from the cache
    code, report = invoke_json("cache", "verify", "--json")
    assert code == 3, report
    assert report["stale"] == [["u3", "s"]]
    code, output = invoke("cache", "verify", "--repair")
    assert code == 0, output
    code, output = invoke("get", "state", "u3", "s")
    assert orjson.loads(output)["state"] == "B"
    code, output = invoke("cache", "warm", "--limit", "3")
    assert code == 0, output
    assert "read 3 state records, put" in output
    code, stats = invoke_json("stats", "--json")
    assert code == 0, stats
    assert stats["records"] == {"state": 5}
    assert stats["cache"]["answers"] is True
    assert stats["cache"]["generation"] >= 1  # the session's database may have had others


def test_cache_verify_and_warm_work_at_their_defaults_on_a_larger_store(tiered_env: str) -> None:
    """25,000 records: verify's default 10,000 and warm's 5,000 go to the cache in chunks
    (one batch of thousands used to miss the 0.1 s cache deadline: 'nothing was verified',
    and 'warmed 0' with exit code 0); --all streams every record."""
    asyncio.run(_fill(tiered_env, 25_000))
    code, output = invoke("cache", "warm", "--limit", "5000")
    assert code == 0, output
    # every fill lands, unless the change feed's catching up at start-up took its lease
    # first (a tombstone revokes leases): then the record is simply not cached yet
    found = re.search(r"read 5000 state records, put (\d+) into the cache", output)
    assert found is not None, output
    landed = int(found[1])
    assert landed > 0
    code, report = invoke_json("cache", "verify", "--json")
    assert code == 0, report
    assert report["checked"] == 10_000
    assert (report["stale"], report["extra"], report["missing"]) == ([], [], 10_000 - landed)
    code, output = invoke("cache", "warm", "--all")
    assert code == 0, output
    assert "read 25000 state records" in output
    code, report = invoke_json("cache", "verify", "--all", "--json")
    assert code == 0, report
    assert report["checked"] == 25_000
    assert (report["stale"], report["extra"]) == ([], [])
    assert report["missing"] < 100  # only fills a concurrent feed repair took the lease of
    assert invoke("cache", "verify", "--limit", "0")[0] == 2  # a usage error


@pytest.mark.postgres
@pytest.mark.slow
def test_export_import_round_trip_of_100k_records(postgres_url: str, tmp_path: Path) -> None:
    asyncio.run(postgres.execute(postgres_url, "DELETE FROM kv_records"))
    asyncio.run(_fill(postgres_url, 100_000))
    backup = tmp_path / "all.jsonl.gz"
    code, output = invoke("export", "--url", postgres_url, "-o", str(backup))
    assert code == 0, output
    assert "exported 100000 records" in output
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    code, output = invoke("import", str(backup), "--url", target, "--batch-size", "2000")
    assert code == 0, output
    assert "written 100000" in output
    copy = tmp_path / "copy.jsonl.gz"
    assert invoke("export", "--url", target, "-o", str(copy))[0] == 0
    original = sorted(map(_normalized, gzip.decompress(backup.read_bytes()).splitlines()))
    copied = sorted(map(_normalized, gzip.decompress(copy.read_bytes()).splitlines()))
    assert original == copied


def _normalized(line: bytes) -> tuple[object, ...]:
    """An export line with its value parsed (PostgreSQL's jsonb orders keys its own way)."""
    data = orjson.loads(line)
    return (
        data["namespace"],
        tuple(data["key"]),
        data["version"],
        data["created_at"],
        data["updated_at"],
        orjson.dumps(data["value"], option=orjson.OPT_SORT_KEYS),
    )


async def _fill(url: str, count: int) -> None:
    backend = build_sql_backend(url)
    try:
        now = datetime.now(UTC)
        items = [
            (
                Key("state", (f"user-{n // 10}", f"session-{n % 10}")),
                Entry(
                    orjson.dumps(
                        {
                            "user_id": f"user-{n // 10}",
                            "session_id": f"session-{n % 10}",
                            "state": "CHAT",
                            "data": {"n": n},
                            "schema_version": 1,
                        }
                    ),
                    1 + n % 3,
                    now,
                    now,
                ),
            )
            for n in range(count)
        ]
        for start in range(0, count, 5000):
            await backend.restore(items[start : start + 5000])
    finally:
        await backend.close()


@pytest.mark.postgres
def test_a_dry_run_creates_no_table_writes_no_rejects_and_never_migrates(
    postgres_url: str, tmp_path: Path
) -> None:
    """Into a PostgreSQL database without kvstore's tables, a dry run reports that every
    record would be written and leaves the database as it was; bad lines are reported but
    no rejects file is written; a schema behind the code's is exit code 5, not migrated."""
    backup = tmp_path / "backup.jsonl"
    line = {
        "namespace": "state",
        "key": ["u1", "s"],
        "version": 1,
        "created_at": "2026-12-01T00:00:00+00:00",
        "updated_at": "2026-12-01T00:00:00+00:00",
        "expires_at": None,
        "value": {"user_id": "u1", "session_id": "s", "state": "A"},
    }
    backup.write_bytes(orjson.dumps(line) + b"\n{bad\n")
    name = postgres.unique_name("cli_dry")
    empty = asyncio.run(postgres.create_database(name))
    try:
        code, output = invoke("import", str(backup), "--dry-run", "--url", empty)
        assert code == 3, output  # the bad line
        assert output.strip().splitlines()[-1] == "read 2, would write 1, unchanged 0, rejected 1"
        assert not (tmp_path / "backup.jsonl.rejects.jsonl").exists()
        assert asyncio.run(_tables(empty)) == 0
        asyncio.run(upgrade(empty, "0002"))  # a schema behind the code's
        code, output = invoke("import", str(backup), "--dry-run", "--url", empty)
        assert code == 5, output
        assert output.startswith("error: schema behind: the database is at revision 0002")
        assert asyncio.run(current_revision(empty)) == "0002"
    finally:
        asyncio.run(postgres.drop_database(name))


async def _tables(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        return count
    finally:
        await connection.close()
