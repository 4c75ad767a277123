"""The ``kvstore`` command line: ``kvstore --help`` lists the commands."""

from kvstore.cli import cache, demo, records, sql, stats, transfer
from kvstore.cli.app import entry, main

__all__ = ["cache", "demo", "entry", "main", "records", "sql", "stats", "transfer"]
