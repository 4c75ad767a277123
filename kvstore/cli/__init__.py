"""The ``kvstore`` command line: ``kvstore --help`` lists the commands."""

from kvstore.cli import demo, records, sql
from kvstore.cli.app import main

__all__ = ["demo", "main", "records", "sql"]
