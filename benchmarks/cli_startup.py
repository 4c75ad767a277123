"""How long the command line takes to start: ``kvstore --help`` and ``kvstore get`` of a
missing record on the embedded default, each a new process, median and range of 7.

    python -m benchmarks.cli_startup

Runs with ``PYTHONDONTWRITEBYTECODE`` unset, after one run of each command that writes the
bytecode: with it set (as in some CI and container images) every run compiles every module
again, which is no start-up time a user sees twice.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 7
COMMANDS = {
    "kvstore --help": ["--help"],
    "kvstore get state u1 s1 (SQLite, no such record)": ["get", "state", "u1", "s1"],
}


def main() -> None:
    kvstore = str(Path(sys.executable).with_name("kvstore"))
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "KVSTORE_URL": f"sqlite:///{workdir}/kv.db"}
        env.pop("KVSTORE_CACHE_URL", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([kvstore, "db", "upgrade"], env=env, check=True, capture_output=True)
        for args in COMMANDS.values():  # writes the bytecode of what each command imports
            subprocess.run([kvstore, *args], env=env, capture_output=True, check=False)
        print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
        print("| command | median s | range s |")
        print("|---|---:|---:|")
        for name, args in COMMANDS.items():
            times = []
            for _ in range(RUNS):
                start = time.perf_counter()
                subprocess.run([kvstore, *args], env=env, capture_output=True, check=False)
                times.append(time.perf_counter() - start)
            print(
                f"| `{name}` | {statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} |"
            )


if __name__ == "__main__":
    main()
