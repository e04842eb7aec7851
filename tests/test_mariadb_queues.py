"""Queue limits proven on MariaDB with several processes (I8: no limit is ever exceeded): claimers
on their own connections race with completions, failovers and limit changes while a sampler reads
the running counts; the rate limit's starts are checked window by window; and the limited claim's
query is shown (EXPLAIN) to pass held-back keys inside the claim index."""

from __future__ import annotations

import multiprocessing
import random
import time
import traceback
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.models import Count, Q
from django.utils import timezone

from taskhub.base.actors import Actor
from tasks.models import QueueSettings, Task, TaskStatusHistory
from tasks.sql import claimable
from tasks.states import ReasonCode, TaskStatus
from tests.test_mariadb_concurrency import _plan, _run_in_processes
from tests.test_queues import Operator, configure

pytestmark = [pytest.mark.mariadb, pytest.mark.django_db(transaction=True)]
T = "LIMITED"
MAX_RUNNING, PER_KEY = 4, 2
KEYS = ["k0", "k1", "k2", "k3", ""]


def _tasks(n: int, *, keys: list[str]) -> None:
    now = timezone.now() - timedelta(seconds=1)
    Task.objects.bulk_create(
        [
            Task(
                name=f"t{i}",
                task_type=T,
                priority=i % 3,
                concurrency_key=keys[i % len(keys)],
                max_retries=3,
                available_at=now,
                created_at=now,
                updated_at=now,
            )
            for i in range(n)
        ],
        batch_size=1000,
    )


def _worker(unit_id: str, total: int, role: str, out: Any) -> None:
    """Claim, hold a while, complete; the "failover" worker also takes its tasks back now and then,
    the "changer" flips the queue limit between MAX_RUNNING and MAX_RUNNING - 1."""
    from tasks.transitions.bulk import fail_over_tasks
    from tasks.transitions.reports import complete_attempt
    from units.claim import claim_tasks
    from units.queues import update_queue_settings

    errors: list[str] = []
    claimed = 0
    rng = random.Random(unit_id)
    try:
        held: list[Task] = []
        deadline = time.monotonic() + 90
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            got = claim_tasks(unit_id, 3 - len(held), now=timezone.now()) if len(held) < 3 else []
            claimed += len(got)
            held += got
            time.sleep(rng.uniform(0, 0.004))
            keep = []
            for task in held:
                if rng.random() < 0.6:
                    complete_attempt(task.pk, unit_id=unit_id, attempt=task.attempt, result={})
                else:
                    keep.append(task)
            held = keep
            if role == "failover" and rounds % 7 == 0 and held:
                with transaction.atomic():
                    fail_over_tasks(
                        Q(unit_id=unit_id), reason="test failover", actor=Actor.system("t"), now=timezone.now()
                    )
                held = []
            if role == "changer" and rounds % 5 == 0:
                update_queue_settings(
                    T,
                    {"max_running": MAX_RUNNING - (rounds // 5) % 2},
                    viewer=Operator(),
                    actor=Actor.operator("t"),
                    owner_id=None,
                )
            if rounds % 10 == 0 and Task.objects.filter(task_type=T, status="COMPLETED").count() >= total:
                break
        for task in held:
            complete_attempt(task.pk, unit_id=unit_id, attempt=task.attempt, result={})
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put(("worker", unit_id, claimed, errors))


def _sampler(total: int, out: Any) -> None:
    """Read the committed running counts (by queue, by key) as often as it can until all is done."""
    samples, max_queue, max_key = 0, 0, 0
    errors: list[str] = []
    try:
        deadline = time.monotonic() + 100
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT concurrency_key, COUNT(*) FROM tasks WHERE status = 'RUNNING' AND task_type = %s"
                    " GROUP BY concurrency_key",
                    [T],
                )
                rows = cursor.fetchall()
                samples += 1
                max_queue = max(max_queue, sum(n for _, n in rows))
                max_key = max([max_key, *(n for key, n in rows if key)])
                if samples % 50 == 0:
                    cursor.execute("SELECT COUNT(*) FROM tasks WHERE task_type = %s AND status = 'COMPLETED'", [T])
                    if cursor.fetchone()[0] >= total:
                        break
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put(("sampler", samples, max_queue, max_key, errors))


def _run_all(total: int, roles: list[str]) -> tuple[list[Any], Any]:
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_sampler, args=(total, queue))]
    procs += [ctx.Process(target=_worker, args=(f"lim-{i}", total, role, queue)) for i, role in enumerate(roles)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=200) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    sampler = next(r for r in results if r[0] == "sampler")
    return [r for r in results if r[0] == "worker"], sampler


def test_queue_and_key_concurrency_limits_hold_under_racing_claims_failovers_and_limit_changes():
    from tests import factories

    assert connection.vendor == "mysql"
    configure(T, max_running=MAX_RUNNING, per_key_concurrency=PER_KEY)
    total = 240
    _tasks(total, keys=KEYS)
    roles = ["plain", "plain", "failover", "changer", "plain", "plain"]
    for i in range(len(roles)):
        factories.unit(f"lim-{i}", unit_type=T, capacity=3)
    workers, sampler = _run_all(total, roles)
    assert all(not w[3] for w in workers), [w[3] for w in workers]
    _, samples, max_queue, max_key, errors = sampler
    assert not errors, errors
    print(f"samples={samples} max running={max_queue} max per key={max_key}")
    assert samples > 50
    assert max_queue <= MAX_RUNNING and max_key <= PER_KEY  # I8
    assert max_queue >= MAX_RUNNING - 1  # the limit was under pressure, not idle
    # No starvation: every task, keyed or not, finished; each claimed by a live attempt.
    assert Task.objects.filter(task_type=T, status="COMPLETED").count() == total
    assert TaskStatusHistory.objects.filter(task__task_type=T, reason_code=ReasonCode.FAILOVER).exists()


def _rate_worker(unit_id: str, seconds: float, out: Any) -> None:
    from tasks.transitions.reports import complete_attempt
    from units.claim import claim_tasks

    errors: list[str] = []
    claimed = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for task in claim_tasks(unit_id, 5, now=timezone.now()):
                claimed += 1
                complete_attempt(task.pk, unit_id=unit_id, attempt=task.attempt, result={})
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put((unit_id, claimed, errors))


def test_rate_limit_admits_at_most_n_starts_in_any_window_across_processes():
    from tests import factories

    limit, period, seconds = 5, 1, 3.0
    configure(T, rate_limit=limit, rate_period=period, key_rate_limit=2, key_rate_period=period)
    _tasks(400, keys=KEYS)
    for i in range(5):
        factories.unit(f"rate-{i}", unit_type=T, capacity=50)
    results = _run_in_processes(_rate_worker, [(f"rate-{i}", seconds) for i in range(5)])
    assert all(not r[2] for r in results), [r[2] for r in results]
    starts = sorted(
        (h.created_at.timestamp(), h.task.concurrency_key)
        for h in TaskStatusHistory.objects.filter(task__task_type=T, to_status=TaskStatus.RUNNING).select_related(
            "task"
        )
    )
    times = [t for t, _ in starts]
    print(f"starts={len(times)} in {seconds}s, limit {limit}/{period}s")
    assert limit * seconds <= len(times) <= limit * (seconds / period + 1)  # the quota is used, not exceeded
    for i in range(len(times) - limit):
        assert times[i + limit] - times[i] >= period, (i, times[i : i + limit + 1])
    for key in KEYS[:-1]:
        mine = [t for t, k in starts if k == key]
        for i in range(len(mine) - 2):
            assert mine[i + 2] - mine[i] >= period, (key, mine)
    assert len(QueueSettings.objects.get(pk=T).rate_starts) <= limit


def test_held_back_tasks_are_outside_the_claim_range_and_the_key_reads_use_their_index():
    """The claim of a limited queue runs the claim query of every queue (tasks.sql.claimable):
    SELECT * FROM tasks WHERE status = 'PENDING' AND task_type = ? AND held_back = 0 AND available_at <= ?
    ORDER BY priority DESC, id LIMIT n FOR UPDATE SKIP LOCKED, on task_claim_idx (status, task_type,
    held_back, priority DESC, id): the held-back tasks of full keys are not in its range at all."""
    now = timezone.now()
    rows = [
        Task(
            name=f"t{i}",
            task_type="A",
            priority=9,
            concurrency_key="big",
            held_back=True,
            max_retries=3,
            available_at=now,
            created_at=now,
            updated_at=now,
        )
        for i in range(5000)
    ]
    rows += [
        Task(
            name=f"s{i}",
            task_type=["A", "B"][i % 2],
            priority=i % 5,
            concurrency_key=f"c{i % 9}",
            status=[TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.COMPLETED][i % 3],
            max_retries=3,
            available_at=now,
            created_at=now,
            updated_at=now,
        )
        for i in range(600)
    ]
    Task.objects.bulk_create(rows, batch_size=2000)
    qs = claimable("A", now).select_for_update(skip_locked=True)[:25]
    plan = _plan(qs)
    print("EXPLAIN claim with 5000 held back:", plan)
    assert plan[0]["key"] == "task_claim_idx", plan
    assert "filesort" not in (plan[0]["Extra"] or "").lower(), plan
    assert int(plan[0]["rows"]) < 1000, plan  # the 5,000 held-back rows are outside the range
    by_key = Task.objects.filter(status=TaskStatus.RUNNING, task_type="A").exclude(concurrency_key="")
    plan = _plan(by_key.order_by().values("concurrency_key").annotate(n=Count("id")))
    print("EXPLAIN running by key:", plan)
    assert plan[0]["key"] == "task_running_key_idx", plan
    assert "temporary" not in (plan[0]["Extra"] or "").lower(), plan
    release = Task.objects.filter(status=TaskStatus.PENDING, task_type="A", concurrency_key="big", held_back=True)
    plan = _plan(release.order_by("-priority", "id").values_list("id", flat=True)[:100])
    print("EXPLAIN release of a key:", plan)
    assert plan[0]["key"] == "task_running_key_idx", plan
    assert "filesort" not in (plan[0]["Extra"] or "").lower(), plan
