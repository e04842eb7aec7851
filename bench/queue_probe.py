"""Claim throughput with queue limits active vs none: `python -m bench.queue_probe [seconds]`.

Started by the harness (the `queues` scenario) with the bench database's environment, or by hand
with the same DB_* variables. For each mode, a fresh task type is seeded (TASKS tasks over KEYS
concurrency keys) and PROCESSES processes, each its own unit and connection, run the claim function
(units.claim: the one claim) in a loop for `seconds`, completing what they get, so capacity frees
and the limited counts move. Modes:

- none: the type has no settings row (the claim as it always was);
- limited: a per-queue limit (maxRunning), a per-key limit (perKeyConcurrency) and a rate limit
  (rateLimit per second), all enforced on every claim but set high enough that they do not bind:
  what is measured is the cost of enforcing them (the settings row lock that serialises the
  queue's claims, the counts, the sliding-window log), not the limits throttling the work.

Prints one JSON line: {"none": {...}, "limited": {...}, "ratio": limited/none}.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from datetime import timedelta
from typing import Any

PROCESSES = 4
TASKS = 20_000
KEYS = 50
BATCH = 10


def _claimer(unit_id: str, seconds: float, out: Any) -> None:
    from django.db import connections
    from django.utils import timezone

    from tasks.transitions.reports import complete_attempt
    from units.claim import claim_tasks

    claimed = claims = 0
    in_claim = 0.0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            got = claim_tasks(unit_id, BATCH, now=timezone.now())
            in_claim += time.perf_counter() - t0
            claims += 1
            claimed += len(got)
            for task in got:
                complete_attempt(task.pk, unit_id=unit_id, attempt=task.attempt, result={})
    finally:
        connections.close_all()
    out.put((claimed, claims, in_claim))


def run_mode(mode: str, seconds: float) -> dict[str, Any]:
    from django.db import connections
    from django.utils import timezone

    from taskhub.base.actors import Actor
    from taskhub.base.viewer import OPERATOR
    from tasks.models import Task
    from units.models import ExecutionUnit
    from units.queues import update_queue_settings

    task_type = f"QBENCH_{mode.upper()}_{int(time.time())}"
    now = timezone.now() - timedelta(seconds=1)
    Task.objects.bulk_create(
        [
            Task(
                name=f"q{i}",
                task_type=task_type,
                priority=i % 5,
                concurrency_key=f"k{i % KEYS}",
                max_retries=0,
                available_at=now,
                created_at=now,
                updated_at=now,
            )
            for i in range(TASKS)
        ],
        batch_size=2000,
    )
    units = [f"{task_type.lower()}-{i}" for i in range(PROCESSES)]
    for unit_id in units:
        ExecutionUnit.objects.create(
            id=unit_id,
            unit_type=task_type,
            unit_name=unit_id,
            capacity=BATCH,
            token_hash=unit_id.ljust(64, "0")[:64],
            last_heartbeat_at=timezone.now(),
            registered_at=timezone.now(),
            status="ONLINE",
        )
    if mode == "limited":
        update_queue_settings(
            task_type,
            {"max_running": PROCESSES * BATCH, "per_key_concurrency": BATCH, "rate_limit": 10_000, "rate_period": 1},
            viewer=OPERATOR,
            actor=Actor.system("bench"),
            owner_id=None,
        )
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(unit_id, seconds, queue)) for unit_id in units]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    elapsed = time.monotonic() - started
    claimed = sum(r[0] for r in results)
    in_claim = sum(r[2] for r in results)
    return {
        "mode": mode,
        "processes": PROCESSES,
        "batch": BATCH,
        "seconds": round(elapsed, 2),
        "tasks": claimed,
        "claims": sum(r[1] for r in results),
        "tasksPerSecond": round(claimed / elapsed, 1),
        # Claimed tasks per second spent inside the claim (lock waits included): the claim's own
        # cost, without the completions' that the wall-clock rate also carries.
        "tasksPerClaimSecond": round(claimed / in_claim, 1) if in_claim else 0.0,
        "claimMsMean": round(1000 * in_claim / max(1, sum(r[1] for r in results)), 2),
    }


def main() -> None:
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    django.setup()
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    none = run_mode("none", seconds)
    limited = run_mode("limited", seconds)
    ratio = limited["tasksPerSecond"] / none["tasksPerSecond"] if none["tasksPerSecond"] else 0.0
    claim_ratio = limited["tasksPerClaimSecond"] / none["tasksPerClaimSecond"] if none["tasksPerClaimSecond"] else 0.0
    print(json.dumps({"none": none, "limited": limited, "ratio": round(ratio, 3), "claimRatio": round(claim_ratio, 3)}))


if __name__ == "__main__":
    main()
