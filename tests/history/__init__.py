"""The multi-process history test: worker processes drive a tiered store (PostgreSQL +
Redis) while the test injects faults; every operation is logged with CLOCK_MONOTONIC
times, and a checker finds stale reads and lost acknowledged writes in the logs."""
