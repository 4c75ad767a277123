"""What a user sees when something goes wrong, and what they typed or stored shown as it is:
every error one line on stderr with a distinct exit code, never a traceback."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from kvstore.cli import main
from kvstore.cli.app import Exit


@pytest.fixture(autouse=True)
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("KVSTORE_URL", url)
    monkeypatch.delenv("KVSTORE_CACHE_URL", raising=False)
    monkeypatch.delenv("KVSTORE_TRACEBACK", raising=False)
    return url


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr."""
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def put(record: dict[str, Any]) -> tuple[int, str, str]:
    return invoke("put", "state", stdin=orjson.dumps(record).decode())


def test_help_lists_every_exit_code_and_each_is_distinct() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    listed = dict(
        re.findall(r"(\d+) ([a-z][a-z ]+?)(?= {2,}|\n|$| \()", out.split("Exit codes")[1])
    )
    assert {int(number) for number in listed} == {int(e) for e in Exit}
    assert len({int(e) for e in Exit}) == len(Exit)


@pytest.mark.parametrize(
    ("args", "stdin", "code", "starts"),
    [
        (("get", "state", "u1", "s1"), None, Exit.NOT_FOUND, "no record state u1 s1"),
        (("delete", "state", "u1", "s1"), None, Exit.NOT_FOUND, "no record state u1 s1"),
        (("get", "state"), None, Exit.USAGE, "Usage: "),
        (("put", "nope"), None, Exit.USAGE, "Usage: "),
        (("ls", "state", "u1", "--limit", "0"), None, Exit.USAGE, "Usage: "),
        (("put", "state"), "{not json", Exit.ERROR, "error: InvalidRecordError: not a valid"),
        (("get", "Bad NS", "u1"), None, Exit.ERROR, "error: InvalidKeyError: namespace must"),
        (("get", "state", "a\x01b"), None, Exit.ERROR, "error: InvalidKeyError: id contains"),
        (
            ("ls", "state", "u1", "--url", "postgresql://u:s3cret@127.0.0.1:1/x"),
            None,
            Exit.UNAVAILABLE,
            "error: BackendUnavailableError: ",
        ),
        (
            ("get", "state", "u1", "s1", "--url", "redis://:s3cret@127.0.0.1:1/0"),
            None,
            Exit.UNAVAILABLE,
            "error: BackendUnavailableError: ",
        ),
        (
            ("export", "-o", "/nonexistent/dir/x.jsonl"),
            None,
            Exit.ERROR,
            "error: ConfigurationError: no directory /nonexistent/dir",
        ),
        (("cache", "warm"), None, Exit.ERROR, "error: ConfigurationError: cache commands"),
    ],
)
def test_every_error_is_one_line_on_stderr_with_its_exit_code(
    args: tuple[str, ...], stdin: str | None, code: int, starts: str
) -> None:
    got, out, err = invoke(*args, stdin=stdin)
    assert got == code, err
    assert err.startswith(starts), err
    if code != Exit.USAGE:  # click's usage message has its own three lines
        assert err.count("\n") == 1, err
        assert out == ""
    assert "Traceback" not in out + err
    assert "s3cret" not in out + err


def test_a_file_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"namespace": "state"}\n' * 100)[:30])
    code, _, err = invoke("import", str(cut))
    assert (code, err.count("\n")) == (Exit.ERROR, 1), err
    assert err.endswith(
        "error: EOFError: Compressed file ended before the end-of-stream marker was reached\n"
    )
    assert not (tmp_path / "cut.jsonl.gz.rejects.jsonl").exists()


def test_a_conflict_has_its_own_exit_code() -> None:
    record = {"user_id": "u1", "session_id": "s1", "state": "A"}
    assert put(record)[0] == 0
    code, _, err = invoke(
        "put", "state", "--expected-version", "0", stdin=orjson.dumps(record).decode()
    )
    assert (code, err.count("\n")) == (Exit.CONFLICT, 1)
    assert err.startswith("error: ConflictError: ")


def test_a_bug_is_one_line_with_exit_code_70_and_its_traceback_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("something kvstore did not expect\nsecond line")

    monkeypatch.setattr("kvstore.cli.records._as_json", broken)
    assert put({"user_id": "u1", "session_id": "s1", "state": "A"})[0] == 0
    code, _, err = invoke("get", "state", "u1", "s1")
    assert (code, err) == (
        Exit.INTERNAL,
        "error: internal error (RuntimeError): something kvstore did not expect second line\n",
    )
    monkeypatch.setenv("KVSTORE_TRACEBACK", "1")
    result = CliRunner().invoke(main, ["get", "state", "u1", "s1"])
    assert isinstance(result.exception, RuntimeError)  # for whoever debugs it


def test_a_long_error_is_not_wrapped_when_the_output_is_not_a_terminal() -> None:
    namespace = "x" * 70 + "[y]"
    code, _, err = invoke("get", namespace, "u1")
    assert code == Exit.ERROR
    assert err.count("\n") == 1
    assert len(err) > 120
    assert namespace in err


PLANES = {
    "basic multilingual": "ünïcødé-日本語-한국어-עברית-العربية",
    "supplementary multilingual (emoji)": "🧘‍♀️🙂𓂀𐍈",
    "supplementary ideographic": "𠀀𠜎𪚥",
    "tertiary ideographic": "𰀀𰀁",
    "supplementary special-purpose": "a\U000e0061b",
    "private use": "\U000f0000\U0010fffd",
    "markup-like": "[bold red]x[/] [link=http://e]y[/link] :smile: \\[z]",
    "brackets and backslashes": "[/b]\\[u[x]]\\",
}


@pytest.mark.parametrize("user", PLANES.values(), ids=PLANES.keys())
def test_ids_and_values_from_every_unicode_plane_are_shown_literally(user: str) -> None:
    record = {"user_id": user, "session_id": f"s {user}", "state": user[:60], "data": {user: user}}
    code, _, err = put(record)
    assert (code, err) == (0, f"saved state {user} s {user} version 1\n")
    code, out, _ = invoke("get", "state", user, f"s {user}")
    assert code == 0
    stored = orjson.loads(out)
    assert (stored["user_id"], stored["state"], stored["data"]) == (user, user[:60], {user: user})
    code, out, _ = invoke("ls", "state", user, "--json")
    assert [orjson.loads(line)["key"] for line in out.splitlines()] == [[user, f"s {user}"]]
    code, out, _ = invoke("ls", "state", user)
    assert code == 0
    assert f"{user} s {user}" in out  # the whole key in one cell, however long
    code, _, err = invoke("delete", "state", user, f"s {user}")
    assert (code, err) == (0, f"deleted state {user} s {user}\n")


def test_ls_help_names_its_arguments() -> None:
    code, out, _ = invoke("ls", "--help")
    assert code == 0
    assert "Usage: main ls [OPTIONS] NAMESPACE USER [KEY...]" in out
    assert "PREFIX" not in out


def test_the_demo_says_what_the_store_is_not_its_repr() -> None:
    code, out, _ = invoke("demo", "--url", "memory://", "--turns", "1")
    assert code == 0, out
    assert out.splitlines()[0] == "store: memory://"
    assert "<Database" not in out


def test_version_names_the_installed_distribution() -> None:
    code, out, _ = invoke("--version")
    assert code == 0
    assert re.fullmatch(r"kvstore, version \d+\.\d+\.\d+\S*\n", out), out
