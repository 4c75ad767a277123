"""The ``kvstore`` command line, on SQLite files (the embedded default)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from kvstore.cli import main


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("KVSTORE_URL", url)
    monkeypatch.delenv("KVSTORE_CACHE_URL", raising=False)
    return url


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.output


def test_help_lists_commands() -> None:
    code, output = invoke("--help")
    assert code == 0
    for command in ("demo", "get", "put", "delete", "ls", "export", "import", "db", "stats"):
        assert command in output


def test_demo_plays_the_whole_conversation_on_memory() -> None:
    code, output = invoke("demo", "--url", "memory://", "--turns", "10")
    assert code == 0, output
    assert "New conversation" in output
    assert "Calm Leader (refined)" in output
    assert "Conversation complete" in output


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


def test_put_get_ls_delete(sqlite_url: str) -> None:
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
    assert code == 1
    assert "ConflictError" in output
    code, output = invoke("put", "state", stdin='{"user_id": "u1"}')
    assert code == 1
    assert "InvalidRecordError" in output
    assert invoke("delete", "state", "u1", "s1")[0] == 0
    assert invoke("delete", "state", "u1", "s1")[0] == 4
    assert invoke("get", "state", "u1", "s1")[0] == 4


def test_export_import_round_trip_with_rejects(sqlite_url: str, tmp_path: Path) -> None:
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


def test_db_upgrade_current_purge_stats_and_migrate(sqlite_url: str) -> None:
    code, output = invoke("db", "current")
    assert code == 2, output  # a new file has no schema yet
    assert invoke("db", "upgrade")[0] == 0
    code, output = invoke("db", "current")
    assert code == 0, output
    assert "current 0001" in output
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
