"""``python -m benchmarks.service``: see the package docstring."""

from __future__ import annotations

import argparse
import asyncio
import sys

from benchmarks.service import __doc__ as about
from benchmarks.service import run_service


def main() -> None:
    parser = argparse.ArgumentParser(description=(about or "").split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--chaos", action="store_true", help="kill, freeze, restart")
    parser.add_argument("--chaos-every", type=float, default=3.0)
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds between turns")
    parser.add_argument("--double", type=float, default=0.1, help="share of turns sent twice")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--lock-ttl", type=float, default=5.0, help="the session lock's lease")
    parser.add_argument(
        "--client-timeout", type=float, default=10.0, help="seconds before a send goes again"
    )
    arguments = parser.parse_args()
    report = asyncio.run(
        run_service(
            arguments.conversations,
            arguments.seconds,
            chaos=arguments.chaos,
            chaos_every=arguments.chaos_every,
            think=arguments.think,
            double_ratio=arguments.double,
            workers=arguments.workers,
            lock_ttl=arguments.lock_ttl,
            client_timeout=arguments.client_timeout,
        )
    )
    print("\n".join(report.lines()))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
