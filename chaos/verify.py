"""The checks of a chaos run, read from the hub's database after the work drained.

    python -m chaos.verify FACTS.json      (with the hub's DB_* environment)

FACTS holds what the harness knows and the database does not: the ids of the tasks the hub
acknowledged, when each unit was silenced (SIGKILL until restarted, SIGSTOP until SIGCONT), when
the hub's own services were down, and the timing knobs. Prints one JSON object: each invariant's
verdict with its evidence, and counts for the report.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from datetime import datetime
from itertools import pairwise
from typing import Any


def _ts(value: datetime) -> float:
    return value.timestamp()


def check(facts: dict[str, Any]) -> dict[str, Any]:
    from django.conf import settings

    from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
    from tasks.states import TERMINAL, can_transition

    timeout = float(settings.UNIT_HEARTBEAT_TIMEOUT)
    sweep = float(settings.SWEEP_INTERVAL)
    cap = int(settings.TASK_MAX_FAILOVER_COUNT)
    slack = float(facts.get("slack", 3.0))
    tasks = {t.pk: t for t in Task.objects.all()}
    history: dict[int, list[TaskStatusHistory]] = defaultdict(list)
    for row in TaskStatusHistory.objects.order_by("id"):
        history[row.task_id].append(row)
    problems: dict[str, list[str]] = {key: [] for key in [*(f"I{i}" for i in range(1, 8)), "D", "R14"]}
    stats: Counter[str] = Counter()

    # I1: every acknowledged task is stored, once per Idempotency-Key, and after the drain it is
    # terminal or visibly waiting (never RUNNING on nobody's behalf).
    acked = set(facts["acked"])
    missing = sorted(acked - set(tasks))
    if missing:
        problems["I1"].append(f"{len(missing)} acknowledged tasks not stored, e.g. {missing[:5]}")
    keys = Counter(t.idempotency_key for t in tasks.values() if t.idempotency_key)
    doubled = [k for k, n in keys.items() if n > 1]
    if doubled:
        problems["I1"].append(f"{len(doubled)} Idempotency-Keys made more than one task")
    for task in tasks.values():
        stats[f"status:{task.status}"] += 1
        if task.status not in TERMINAL and task.status != "FAILED":
            problems["I1"].append(f"task {task.pk} is still {task.status} after the drain")
        if task.status == "FAILED" and task.next_retry_at is not None:
            problems["I1"].append(f"task {task.pk} still waits for an automatic retry after the drain")

    silences: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for unit_id, since, until in facts["silences"]:
        silences[unit_id].append((since, until if until is not None else float("inf")))
    outages = [(since, until) for _, since, until in facts["outages"]]

    def outage_overlap(start: float, end: float) -> float:
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in outages)

    worst_i5 = 0.0
    for task_id, rows in history.items():
        found = tasks.get(task_id)
        if found is None:
            problems["I7"].append(f"history rows of task {task_id}, which is not stored")
            continue
        task = found
        stats["history rows"] += len(rows)
        # I7: a gap-free chain from creation to the current status, each move in the table.
        if rows[0].from_status is not None or rows[0].to_status != "PENDING":
            problems["I7"].append(f"task {task_id}: history does not start with its creation")
        for prev, row in pairwise(rows):
            if row.from_status != prev.to_status:
                problems["I7"].append(f"task {task_id}: gap {prev.to_status} then {row.from_status}->{row.to_status}")
            elif not can_transition(row.from_status or "", row.to_status, system=True):
                problems["I7"].append(f"task {task_id}: illegal move {row.from_status}->{row.to_status}")
        if rows[-1].to_status != task.status or rows[-1].attempt != task.attempt:
            problems["I7"].append(f"task {task_id}: history ends at {rows[-1].to_status}, task is {task.status}")

        # I2: each attempt handed out once, in order; every report and log line came from the unit
        # holding the live attempt.
        starts = [r for r in rows if r.to_status == "RUNNING"]
        stats["attempts"] += len(starts)
        if [r.attempt for r in starts] != list(range(1, len(starts) + 1)):
            problems["I2"].append(f"task {task_id}: attempts handed out as {[r.attempt for r in starts]}")
        holder: dict[int, str | None] = {r.attempt: r.unit_id for r in starts}
        live: tuple[int, str | None] | None = None
        for row in rows:
            if row.to_status == "RUNNING":
                live = (row.attempt, row.unit_id)
                continue
            if row.actor_type == "unit" and (row.from_status != "RUNNING" or live != (row.attempt, row.unit_id)):
                problems["I2"].append(f"task {task_id}: report {row.to_status} by {row.actor} for a dead attempt")
            if row.from_status == "RUNNING":
                live = None

        # I3: at most one accepted result, and it is the live attempt's.
        completed = [r for r in rows if r.to_status == "COMPLETED"]
        if len(completed) > 1:
            problems["I3"].append(f"task {task_id}: {len(completed)} accepted results")
        if task.status == "COMPLETED" and isinstance(task.result, dict):
            got = (task.result.get("attempt"), task.result.get("unit"))
            if got != (task.attempt, holder.get(task.attempt)):
                problems["I3"].append(f"task {task_id}: result of {got}, live attempt {task.attempt}")

        # I4: automatic retries and failovers within their caps.
        retries = sum(1 for r in rows if r.actor == "job:move_due_retries")
        failovers = sum(
            1 for r in rows if r.from_status == "RUNNING" and r.to_status == "PENDING" and r.actor_type == "system"
        )
        stats["automatic retries"] += retries
        stats["failovers"] += failovers
        stats["poisoned"] += sum(1 for r in rows if r.reason.startswith("poison"))
        if retries > task.max_retries or task.retry_count > task.max_retries:
            problems["I4"].append(f"task {task_id}: {retries} automatic retries, cap {task.max_retries}")
        if failovers > cap or task.failover_count > cap + 1:
            problems["I4"].append(f"task {task_id}: {failovers} failovers, cap {cap}")

        # I5 and I6, per attempt that the sweeper took back.
        for prev, row in pairwise(rows):
            if not (
                prev.to_status == "RUNNING" and row.from_status == "RUNNING" and row.actor == "job:sweep_heartbeats"
            ):
                continue
            stats["sweeper failovers"] += 1
            unit_id, taken, claimed = prev.unit_id or "", _ts(row.created_at), _ts(prev.created_at)

            def covers(a: float, b: float, taken: float = taken, claimed: float = claimed) -> bool:
                # A silence covers a failover that follows it within the bound; for a lease the
                # silenced process held (claimed before the silence ended), a hub outage right after
                # the silence keeps the unit silent to the hub for as long (its next process could not
                # reach the hub to register, let alone heartbeat). A lease claimed after the silence
                # ended is never excused by an outage.
                recent = b >= taken - timeout - slack
                held_through = claimed <= b and b + outage_overlap(b, taken) >= taken - timeout - slack
                return a <= taken and (recent or held_through)

            windows = [(a, b) for a, b in silences.get(unit_id, []) if covers(a, b)]
            if not windows:
                # I6: the unit was never silenced around then: it lost a task while heartbeating.
                problems["I6"].append(f"task {task_id}: taken from {unit_id} at {taken:.1f}, which was not silenced")
                continue
            silent_since = max(max(a, _ts(prev.created_at)) for a, _ in windows)
            latency = taken - silent_since
            bound = timeout + sweep + slack + outage_overlap(silent_since, taken)
            worst_i5 = max(worst_i5, latency - outage_overlap(silent_since, taken))
            if latency > bound:
                problems["I5"].append(
                    f"task {task_id}: {unit_id} silent {latency:.1f}s before failover (bound {bound:.1f}s)"
                )

    # I5 from the other side: every attempt a silenced unit held was taken back within the bound.
    for unit_id, windows in silences.items():
        for since, until in windows:
            stats["silences"] += 1
            for task_id, rows in history.items():
                chain: list[TaskStatusHistory | None] = [*rows, None]
                for held, after in pairwise(chain):
                    if (
                        held is None
                        or held.to_status != "RUNNING"
                        or held.unit_id != unit_id
                        or _ts(held.created_at) > since
                    ):
                        continue
                    left = _ts(after.created_at) if after is not None else float("inf")
                    if left <= since + 1.0:
                        continue  # it left RUNNING as the unit was silenced (a report in flight)
                    bound = timeout + sweep + slack + outage_overlap(since, since + timeout + sweep + slack)
                    if left - since > bound and until - since > bound:
                        problems["I5"].append(
                            f"task {task_id}: held by silenced {unit_id} for {left - since:.1f}s (bound {bound:.1f}s)"
                        )
    stats["log lines"] = TaskExecutionLog.objects.count()
    foreign_logs = 0
    holders = {(r.task_id, r.attempt): r.unit_id for rows in history.values() for r in rows if r.to_status == "RUNNING"}
    for task_id, attempt, unit_id in TaskExecutionLog.objects.exclude(unit_id=None).values_list(
        "task_id", "attempt", "unit_id"
    ):
        if holders.get((task_id, attempt)) != unit_id:
            foreign_logs += 1
    if foreign_logs:
        problems["I2"].append(f"{foreign_logs} log lines stored from a unit that did not hold that attempt")
    if facts.get("foreignAccepted"):
        problems["I2"].append(f"{facts['foreignAccepted']} report items on other units' tasks accepted")

    # D: no lease executed twice: the sleep handler's first line, once per (task, attempt); and no
    # second process under a live unit's id kept running.
    # A line delivered twice (a report replayed by the proxy) keeps the unit's timestamp: one run.
    first_lines = TaskExecutionLog.objects.filter(message__startswith="sleeping ")
    runs = Counter((t, a) for t, a, _ in set(first_lines.values_list("task_id", "attempt", "timestamp")))
    stats["handler runs"] = sum(runs.values())
    for (task_id, attempt), n in sorted(runs.items()):
        if n > 1:
            problems["D"].append(f"task {task_id} attempt {attempt}: its handler ran {n} times")
    problems["D"] += facts.get("duplicatesKept", [])

    # R14: a result spooled when its unit was killed is the attempt's outcome (replayed by the next
    # process), not lost to a failover.
    for task_id, attempt in facts.get("spooledAtKill", []):
        stats["results spooled at a kill"] += 1
        rows = history.get(task_id, [])
        ended = [r for r in rows if r.attempt == attempt and r.from_status == "RUNNING"]
        if not ended:
            continue  # still to be seen (the drain check reports a stuck task)
        if ended[0].actor_type != "unit" or ended[0].to_status not in ("COMPLETED", "FAILED"):
            problems["R14"].append(
                f"task {task_id} attempt {attempt}: spooled result lost ({ended[0].actor}: {ended[0].to_status})"
            )
    return {
        "problems": {k: v[:20] for k, v in problems.items()},
        "counts": {k: len(v) for k, v in problems.items()},
        "stats": dict(stats),
        "tasks": len(tasks),
        "acked": len(acked),
        "worstI5": round(worst_i5, 2),
        "boundI5": timeout + sweep,
    }


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    import django

    django.setup()
    with open(sys.argv[1]) as f:
        facts = json.load(f)
    print(json.dumps(check(facts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
