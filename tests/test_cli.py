"""The ``kvstore`` command line."""

from __future__ import annotations

from click.testing import CliRunner

from kvstore.cli import main


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output


def test_demo_plays_the_whole_conversation_on_memory() -> None:
    result = CliRunner().invoke(main, ["demo", "--url", "memory://", "--turns", "10"])
    assert result.exit_code == 0, result.output
    assert "New conversation" in result.output
    assert "Calm Leader (refined)" in result.output
    assert "Conversation complete" in result.output


def test_demo_with_a_bad_url_exits_cleanly_without_the_password() -> None:
    result = CliRunner().invoke(main, ["demo", "--url", "mysql://root:hunter2@db/x"])
    assert result.exit_code == 1
    assert "ConfigurationError" in result.output
    assert "hunter2" not in result.output
