"""The coach service under load, over HTTP, on several worker processes, with chaos.

    python -m benchmarks.service                     # 1,000 conversations for 30 s
    python -m benchmarks.service --chaos             # ... while workers are killed and
                                                     # frozen, Redis and PostgreSQL restarted
    python -m benchmarks.service --conversations 100 --seconds 15 --chaos

The service (``uvicorn --factory examples.coach.app:create_app --workers 4``) runs on a
private PostgreSQL cluster (``initdb`` in a temporary directory, so it can be restarted;
database ``kvsvc_...``) and a private ``redis-server``. An async httpx client drives N
conversations: each sends a message, waits for the answer, reads now and then (state,
context, transcript, health), thinks (mean ``--think`` s) and sends the next; on 10% of
turns it sends the message twice at once. A send that fails (a connection cut, a timeout,
a ``503``) is sent again with the same message id until answered.

With ``--chaos``, one fault every ``--chaos-every`` seconds, in a cycle: a worker SIGKILLed
mid-request (uvicorn's supervisor starts a new one), Redis restarted empty, a worker
frozen (SIGSTOP) past its locks' lease, Redis restarted from a snapshot taken at the start
(the cache goes back in time), Redis frozen 2 s, PostgreSQL restarted.

At the end, from SQL: every answered message is in its session's transcript exactly once,
in the order it was sent, turns numbered 1, 2, 3...; replaying the state machine over the
transcript gives each recorded step (none skipped or repeated) and the state record's
state and version; every message sent twice got one turn and the same answer both times.
Exit code 1 if anything is off.
"""

from benchmarks.service.run import ServiceReport, run_service

__all__ = ["ServiceReport", "run_service"]
