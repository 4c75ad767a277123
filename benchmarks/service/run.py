"""One run: start the servers and the service, drive the conversations (with chaos if
asked), stop, check, report."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.service.chaos import Chaos
from benchmarks.service.check import Findings, check
from benchmarks.service.client import LANE, Client, Conversation, Traffic
from benchmarks.service.servers import Postgres, Redis, Service


@dataclass
class ServiceReport:
    """What a run measured and found."""

    conversations: int
    seconds: float
    workers: int
    chaos: bool
    load_average: float = 0.0
    messages: int = 0
    """Turns answered (a message sent twice or again counts once)."""
    traffic: Traffic = field(default_factory=Traffic)
    events: Counter[str] = field(default_factory=Counter)
    doubled: int = 0
    doubled_both_answered: int = 0
    doubled_two_workers: int = 0
    fenced: int = 0
    findings: Findings = field(default_factory=Findings)

    @property
    def ok(self) -> bool:
        return self.findings.ok

    def lines(self) -> list[str]:
        f = self.findings
        return [
            f"{self.conversations} conversations, {self.seconds:.0f} s, {self.workers} workers"
            f"{', chaos' if self.chaos else ''}; load average {self.load_average:.2f} before",
            f"answered turns: {self.messages:,}, {self.messages / self.seconds:,.1f} messages/s",
            f"chaos: {dict(self.events) or 'none'}",
            f"errors (each send retried until answered): {dict(self.traffic.errors) or 'none'}",
            f"sent twice at once: {self.doubled} turns; both sends answered "
            f"{self.doubled_both_answered} (on two workers {self.doubled_two_workers}); "
            "answered differently or taken twice:"
            f" {f.answers_differ}",
            "",
            *self.traffic.table(),
            "",
            f"lost: {f.lost}, duplicated: {f.duplicated}, out of order: {f.out_of_order}, "
            f"fenced: {self.fenced}; steps skipped or repeated: {f.steps_wrong}; "
            f"never sent: {f.unsent}; unanswered when the client gave up: {f.unanswered}",
        ]


async def run_service(
    conversations: int = 1000,
    seconds: float = 30.0,
    *,
    chaos: bool = False,
    chaos_every: float = 3.0,
    think: float = 1.0,
    double_ratio: float = 0.1,
    workers: int = 4,
    lock_ttl: float = 5.0,
    client_timeout: float = 10.0,
    workdir: Path | None = None,
) -> ServiceReport:
    """See the package docstring."""
    report = ServiceReport(conversations, seconds, workers, chaos, os.getloadavg()[0])
    directory = workdir or Path(tempfile.mkdtemp(prefix="kvstore-service-"))
    postgres, redis = Postgres(), Redis(directory / "redis")
    service: Service | None = None
    try:
        await postgres.start()
        redis.start()
        service = Service(
            {
                "KVSTORE_URL": postgres.url,
                "KVSTORE_CACHE_URL": redis.url,
                "KVSTORE_COACH_LOCK_TTL": str(lock_ttl),
                "KVSTORE_COACH_LOCK_TIMEOUT": str(3 * lock_ttl + 5),
            },
            directory / "service.log",
            workers,
        )
        service.start()
        await service.ready()
        client = Client(
            service.url,
            think=think,
            double_ratio=double_ratio,
            give_up_after=120.0,
            timeout=client_timeout,
            lanes=-(-conversations // LANE),
        )
        faults = Chaos(service, redis, postgres, freeze=max(lock_ttl, client_timeout) + 1.5)
        talks = await _drive(report, client, faults, chaos_every)
        service.stop()
        report.fenced = service.fenced()
        report.findings = await check(postgres.url, talks)
    finally:
        if service is not None:
            service.stop()
        redis.stop()
        postgres.stop()
    return report


async def _drive(
    report: ServiceReport, client: Client, faults: Chaos, chaos_every: float
) -> list[Conversation]:
    talks = [
        Conversation(f"user-{n}", f"session-{n}", lane=n // LANE)
        for n in range(report.conversations)
    ]
    start = time.monotonic()
    deadline = start + report.seconds
    try:
        driving = [client.converse(talk, deadline) for talk in talks]
        chaos = [faults.run(deadline, chaos_every)] if report.chaos else []
        await asyncio.gather(*driving, *chaos)
    finally:
        await client.close()
    report.traffic = client.traffic
    report.events = faults.events
    report.messages = sum(len(talk.acked) for talk in talks)
    for talk in talks:
        for message_id in talk.doubled:
            answers = talk.answers.get(message_id, [])
            report.doubled += 1
            report.doubled_both_answered += len(answers) >= 2
            report.doubled_two_workers += len({worker for *_, worker in answers[:2]}) == 2
    return talks
