"""Retention and schedules on MariaDB: `python -m bench.queue_upkeep [--rows N] [--schedules N]`.

Runs against the database of the environment (DB_HOST ... DB_DATABASE; it is emptied of tasks and
schedules first), in-process and in forked worker processes, and prints one JSON object:

- prune: N finished tasks (each with a history row) older than the retention period, and a pool of
  PENDING tasks that `--claimers` processes claim and complete one at a time, for 2 x `--phase`
  seconds in alternating windows: claims alone, claims while `prune_tasks` runs in its own process
  (so a change of the machine's load hits both sides). Reports the rows pruned per second of
  pruning and the claim p50/p99 of both sides.
- schedules: N schedules firing every minute; `--beats` processes run the `fire_schedules` job
  (`taskhub.schedules.firing.fire_schedules_on_time`) every `--tick` seconds (SCHEDULE_TICK, default
  1 as in the settings) across the minute. Reports that every schedule fired exactly once for that
  minute and the fire lag p50/p99/max: when the fire's task became claimable (its batch's commit,
  or the fire time for a fire made ahead of it) minus the fire time; `commit*`: the commit minus
  the fire time (negative: made ahead).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- prune ------------------------------------------------------------------------------------


def _seed_finished(rows: int) -> float:
    from django.db import connection

    started = time.perf_counter()
    old = datetime.now(UTC) - timedelta(days=400)
    with connection.cursor() as cur:
        cur.execute("SET SESSION unique_checks = 0")
        step = 200_000
        for start in range(0, rows, step):
            n = min(step, rows - start)
            cur.execute(
                "INSERT INTO tasks (name, task_type, priority, config, status, attempt, max_retries, retry_count, "
                "failover_count, available_at, progress, error, pending_command, request_fingerprint, "
                "created_at, updated_at, finished_at) "
                f"SELECT CONCAT('old ', seq), 'OLD', 0, '{{}}', 'COMPLETED', 1, 0, 0, 0, %s, 100, '', '', '', "
                f"%s, %s, %s FROM seq_1_to_{n}",
                [old, old, old, old],
            )
        cur.execute(
            "INSERT INTO task_status_history (task_id, from_status, to_status, reason, reason_code, actor_type, "
            "actor, attempt, created_at) SELECT id, 'RUNNING', 'COMPLETED', 'done', 'completed', 'system', "
            "'job:bench', 1, created_at FROM tasks WHERE task_type = 'OLD'"
        )
    return time.perf_counter() - started


def _claimer(unit_id: str, until: float, out: Any) -> None:
    from django.db import connections
    from django.utils import timezone

    from tasks.transitions.reports import complete_attempt
    from units.claim import claim_tasks

    latencies: list[tuple[float, float]] = []  # (when, seconds)
    try:
        while time.time() < until:
            t0 = time.perf_counter()
            batch = claim_tasks(unit_id, 1, now=timezone.now())
            latencies.append((time.time(), time.perf_counter() - t0))
            for task in batch:
                complete_attempt(task.pk, unit_id=unit_id, attempt=task.attempt, result={})
    finally:
        connections.close_all()
    out.put(latencies)


WINDOWS = 6  # alternating windows: claims alone, claims with the pruner, ... (drift of the machine's load hits both)


def _window(begin: float, length: float, when: float) -> int:
    return int((when - begin) // length)


def _pruner(begin: float, length: float, chunk: int, pause: float, out: Any) -> None:
    from django.db import connections
    from django.utils import timezone

    from tasks import retention
    from tasks.retention import prune_tasks

    retention.CHUNK, retention.PAUSE_RATIO = chunk, pause
    pruned, busy = 0, 0.0
    try:
        for window in range(1, WINDOWS, 2):  # the odd windows
            start = begin + window * length
            time.sleep(max(0.0, start - time.time()))
            retention.MAX_SECONDS = length - 0.3
            t0 = time.perf_counter()
            while time.time() < start + length - 0.3:
                pruned += prune_tasks(timezone.now())["tasks"]
            busy += time.perf_counter() - t0
    finally:
        connections.close_all()
    out.put((pruned, busy))


def bench_prune(rows: int, claimers: int, phase: float, chunk: int, pause: float) -> dict[str, Any]:
    from django.db import connections
    from django.utils import timezone

    from taskhub.base.actors import Actor
    from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
    from tasks.transitions.creation import create_tasks
    from units.models import ExecutionUnit

    seed_seconds = 0.0
    old = Task.objects.filter(task_type="OLD").count()
    if old < rows // 2:  # a previous run's seed is reused while half of it is left (seeding 1M takes minutes)
        TaskExecutionLog.objects.all().delete()
        TaskStatusHistory.objects.all()._raw_delete("default")
        Task.objects.all()._raw_delete("default")
        seed_seconds = _seed_finished(rows)
    old_rows = Task.objects.filter(task_type="OLD").count()
    live = Task.objects.exclude(task_type="OLD")
    TaskStatusHistory.objects.filter(task__in=live)._raw_delete("default")
    live._raw_delete("default")
    now = timezone.now()
    for start in range(0, 20_000, 1000):
        create_tasks(
            [{"name": f"p{start + i}", "task_type": "LIVE", "config": {}} for i in range(1000)],
            actor=Actor.system("bench"),
            now=now,
        )
    ExecutionUnit.objects.filter(id__startswith="bench-").delete()
    for i in range(claimers):
        ExecutionUnit.objects.create(
            id=f"bench-{i}",
            unit_type="LIVE",
            unit_name="bench",
            capacity=1,
            token_hash=f"{i:064d}",
            last_heartbeat_at=now,
            registered_at=now,
            status="ONLINE",
        )
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    begin = time.time() + 0.5
    length = 2 * phase / WINDOWS
    end = begin + 2 * phase
    procs = [ctx.Process(target=_claimer, args=(f"bench-{i}", end, queue)) for i in range(claimers)]
    procs.append(ctx.Process(target=_pruner, args=(begin, length, chunk, pause, queue)))
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    pruned, prune_seconds = next(r for r in results if isinstance(r, tuple))
    samples = [s for r in results if isinstance(r, list) for s in r]
    alone = [s for when, s in samples if _window(begin, length, when) % 2 == 0]
    beside = [s for when, s in samples if _window(begin, length, when) % 2 == 1]
    return {
        "tableRows": old_rows + 20_000,
        "seedSeconds": round(seed_seconds, 1),
        "prunedRows": pruned,
        "pruneSeconds": round(prune_seconds, 2),
        "pruneRowsPerSecond": round(pruned / prune_seconds) if prune_seconds else 0,
        "chunk": chunk,
        "pauseRatio": pause,
        "claimers": claimers,
        "claimsAlone": len(alone),
        "claimP50msAlone": round(_pct(alone, 0.5) * 1000, 2),
        "claimP99msAlone": round(_pct(alone, 0.99) * 1000, 2),
        "claimsWithPruning": len(beside),
        "claimP50msWithPruning": round(_pct(beside, 0.5) * 1000, 2),
        "claimP99msWithPruning": round(_pct(beside, 0.99) * 1000, 2),
    }


# --- schedules ---------------------------------------------------------------------------------


def _beat(until: float, tick: float, out: Any) -> None:
    """One beat: the `fire_schedules` job as beat runs it (every `tick` seconds, taking the clock),
    each batch's commit recorded (a fire's lag is its batch's commit minus its fire time)."""
    from django.db import connections
    from django.test import override_settings

    from taskhub.schedules import firing
    from taskhub.schedules.models import ScheduleFire

    calls: list[tuple[list[int], float, float]] = []  # (the batch's fire ids, its start, its commit)
    fire_batch = firing._fire_batch
    seen: set[int] = set()

    def recorded(now: datetime, ahead: float = 0.0) -> Any:
        begun = time.time()
        done = fire_batch(now, ahead)
        end = time.time()
        # The batches of one run share its `now` (their fires' created_at): this batch's are the new ones.
        ids = set(ScheduleFire.objects.filter(created_at=now).values_list("id", flat=True)) - seen
        seen.update(ids)
        calls.append((sorted(ids), begun, end))
        return done

    firing._fire_batch = recorded  # type: ignore[assignment]
    try:
        with override_settings(SCHEDULE_TICK=tick):
            while time.time() < until:
                woke = time.time()
                firing.fire_schedules_on_time(datetime.now(UTC))
                time.sleep(max(0.0, tick - (time.time() - woke)))
    finally:
        firing._fire_batch = fire_batch  # type: ignore[assignment]
        connections.close_all()
    out.put(calls)


def bench_schedules(count: int, beats: int, tick: float) -> dict[str, Any]:
    from django.db import connections

    from taskhub.schedules.models import Schedule, ScheduleFire
    from tasks.models import Task

    Schedule.objects.all().delete()
    Task.objects.filter(task_type="SCHED").delete()
    now = datetime.now(UTC)
    minute = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (minute - now).total_seconds() < 3:
        minute += timedelta(minutes=1)
    template = {"name": "tick", "taskType": "SCHED"}
    Schedule.objects.bulk_create(
        [
            Schedule(
                name=f"s{i}",
                cron="* * * * *",
                timezone="UTC",
                template=template,
                overlap="allow",
                next_fire_at=minute,
                created_at=now,
                updated_at=now,
            )
            for i in range(count)
        ],
        batch_size=1000,
    )
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    until = minute.timestamp() + 5
    time.sleep(max(0.0, minute.timestamp() - time.time() - 1.5))
    procs = [ctx.Process(target=_beat, args=(until, tick, queue)) for _ in range(beats)]
    for p in procs:
        p.start()
    calls = [c for _ in procs for c in queue.get(timeout=120)]
    for p in procs:
        p.join(60)
    ends = {fire_id: end for ids, _, end in calls for fire_id in ids}
    fires = list(ScheduleFire.objects.filter(fire_time=minute).values_list("schedule_id", "id"))
    # A fire's lag: when its task became claimable (its batch's commit, or the fire time for a fire
    # made ahead of it) minus the fire time. `commits`: the commit minus the fire time (< 0: ahead).
    commits = [ends[fire_id] - minute.timestamp() for _, fire_id in fires if fire_id in ends]
    lags = [max(0.0, c) for c in commits]
    batches = sorted((begun - minute.timestamp(), end - begun, len(ids)) for ids, begun, end in calls if ids)
    per_schedule = len({sid for sid, _ in fires})
    return {
        "schedules": count,
        "beats": beats,
        "tickSeconds": tick,
        "fires": len(fires),
        "distinctSchedulesFired": per_schedule,
        "tasksCreated": Task.objects.filter(task_type="SCHED").count(),
        "exactlyOnce": len(fires) == per_schedule == count,
        "lagP50s": round(_pct(lags, 0.5), 3),
        "lagP99s": round(_pct(lags, 0.99), 3),
        "lagMaxs": round(max(lags, default=0.0), 3),
        "lagMeanS": round(statistics.fmean(lags), 3) if lags else 0.0,
        "commitP50s": round(_pct(commits, 0.5), 3),
        "commitP99s": round(_pct(commits, 0.99), 3),
        # (start after the minute, seconds, fires) of each batch that fired
        "batches": [[round(a, 3), round(b, 3), n] for a, b, n in batches],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--claimers", type=int, default=2)
    parser.add_argument("--phase", type=float, default=20.0)
    parser.add_argument("--chunk", type=int, default=250, help="retention.CHUNK")
    parser.add_argument("--pause", type=float, default=3.0, help="retention.PAUSE_RATIO")
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--beats", type=int, default=2)
    parser.add_argument("--tick", type=float, default=1.0)
    parser.add_argument("--only", choices=("prune", "schedules"))
    args = parser.parse_args()
    django.setup()
    from django.db import connection

    assert connection.vendor == "mysql", "run with DB_HOST set (MariaDB)"
    out: dict[str, Any] = {}
    if args.only in (None, "prune"):
        out["prune"] = bench_prune(args.rows, args.claimers, args.phase, args.chunk, args.pause)
    if args.only in (None, "schedules"):
        out["schedules"] = bench_schedules(args.schedules, args.beats, args.tick)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
