"""Locking proven on MariaDB with several processes: each task claimed exactly once, no lock
error reaching a caller, jobs safe when several run at once, and a claim plan with no filesort."""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.models import Count
from django.utils import timezone

from tasks.models import Task, TaskStatusHistory
from tasks.sql import claimable
from tasks.states import TaskStatus
from tests import factories

pytestmark = [pytest.mark.mariadb, pytest.mark.django_db(transaction=True)]
PROCESSES = 8
TASKS = 2000


def _claim_until_empty(unit_id: str, out: Any) -> None:
    from tasks.transitions.reports import complete_attempt
    from units.claim import claim_tasks

    claimed: list[int] = []
    errors: list[str] = []
    try:
        idle = 0
        while idle < 3:
            batch = claim_tasks(unit_id, 25, now=timezone.now())
            idle = idle + 1 if not batch else 0
            for task in batch:
                claimed.append(task.pk)
                if task.pk % 2:  # complete half, so capacity frees and reports interleave with claims
                    complete_attempt(task.pk, unit_id=unit_id, attempt=task.attempt, result={"by": unit_id})
    except Exception:  # any error reaching the caller fails the test
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put((unit_id, claimed, errors))


def _run_in_processes(target: Any, args_list: list[tuple[Any, ...]]) -> list[Any]:
    connections.close_all()  # children must open their own connections
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, queue)) for args in args_list]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_eight_processes_claim_thousands_of_tasks_each_exactly_once():
    assert connection.vendor == "mysql"
    now = timezone.now() - timedelta(seconds=1)
    Task.objects.bulk_create(
        [
            Task(
                name=f"t{i}",
                task_type="DATA_PROCESSING",
                priority=i % 7,
                max_retries=3,
                available_at=now,
                created_at=now,
                updated_at=now,
            )
            for i in range(TASKS)
        ],
        batch_size=1000,
    )
    for i in range(PROCESSES):
        factories.unit(f"claimer-{i}", capacity=TASKS)
    results = _run_in_processes(_claim_until_empty, [(f"claimer-{i}",) for i in range(PROCESSES)])
    errors = [e for _, _, errs in results for e in errs]
    assert errors == []
    claimed = [tid for _, ids, _ in results for tid in ids]
    assert len(claimed) == TASKS
    assert len(set(claimed)) == TASKS
    assert sum(1 for _, ids, _ in results if ids) >= 2  # the work really was shared
    assert Task.objects.filter(status=TaskStatus.PENDING).count() == 0
    assert Task.objects.exclude(attempt=1).count() == 0
    leased_twice = (
        TaskStatusHistory.objects.filter(to_status="RUNNING").values("task_id").annotate(n=Count("id")).filter(n__gt=1)
    )
    assert list(leased_twice) == []
    assert Task.objects.filter(status="COMPLETED").count() == len([t for t in claimed if t % 2])


def _sweep(_: int, out: Any) -> None:
    from units.sweeper import sweep_heartbeats

    errors: list[str] = []
    result: dict[str, int] = {}
    try:
        result = sweep_heartbeats(timezone.now() + timedelta(hours=1))
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put((result, errors))


def test_concurrent_sweepers_fail_each_task_over_exactly_once():
    now = timezone.now()
    units = [factories.unit(f"dead-{i}", now=now).pk for i in range(200)]
    factories.running_in_bulk(units, 3000, now=now)
    results = _run_in_processes(_sweep, [(i,) for i in range(4)])
    assert [e for _, errs in results for e in errs] == []
    assert sum(r["failedOver"] for r, _ in results) == 3000
    assert sum(r["unitsOffline"] for r, _ in results) == 200
    assert Task.objects.filter(status="PENDING", failover_count=1).count() == 3000
    per_task = (
        TaskStatusHistory.objects.filter(from_status="RUNNING", to_status="PENDING")
        .values("task_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    assert list(per_task) == []


def _assert_failed_over_once(ids: list[int]) -> None:
    assert Task.objects.filter(pk__in=ids, status="PENDING", failover_count=1, lease_expires_at=None).count() == len(
        ids
    )
    per_task = Counter(
        TaskStatusHistory.objects.filter(task_id__in=ids, from_status="RUNNING", to_status="PENDING").values_list(
            "task_id", flat=True
        )
    )
    assert set(per_task) == set(ids) and set(per_task.values()) == {1}


def test_concurrent_sweepers_take_each_task_no_unit_holds_back_exactly_once():
    now = timezone.now()
    ids = factories.lapsed_orphans(3000, now)
    results = _run_in_processes(_sweep, [(i,) for i in range(4)])
    assert [e for _, errs in results for e in errs] == []
    assert sum(r["orphans"] for r, _ in results) == 3000
    assert sum(r["failedOver"] for r, _ in results) == 3000
    _assert_failed_over_once(ids)


def test_a_second_sweeper_skips_the_task_the_first_one_holds_and_it_is_failed_over_once():
    """Two connections: while the first sweeper's transaction holds the task, the second neither
    waits for it nor takes it (SKIP LOCKED); after the first commits there is nothing left to do."""
    from units.sweeper import _sweep_chunk, sweep_heartbeats

    now = timezone.now()
    ids = factories.lapsed_orphans(1, now)
    seen: dict[str, Any] = {}

    def second_sweeper() -> None:
        try:
            seen["result"] = sweep_heartbeats(now + timedelta(hours=1))
        finally:
            connections.close_all()  # this thread's own connection

    with transaction.atomic():
        first = _sweep_chunk(now + timedelta(hours=1))
        thread = threading.Thread(target=second_sweeper)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the second sweeper waited for the first one's lock"
    assert first["orphans"] == 1
    assert seen["result"]["orphans"] == 0
    assert sweep_heartbeats(now + timedelta(hours=1))["orphans"] == 0
    _assert_failed_over_once(ids)


def test_the_lease_polls_read_their_indexes():
    """As in production: most RUNNING tasks are held by units (no lease); a few are not."""
    now = timezone.now()
    unit = factories.unit("holder", capacity=10_000)

    def leased(i: int) -> dict[str, Any]:
        if i % 30 == 2:  # started with PUT status
            return {"lease_expires_at": now + timedelta(seconds=i - 3000)}
        if i % 30 == 5:  # its unit row deleted
            return {}
        return {"unit_id": unit.pk}

    factories.tasks_in_bulk(
        9000,
        now=now,
        batch_size=3000,
        row=lambda i: {
            "status": [TaskStatus.PENDING, TaskStatus.COMPLETED, TaskStatus.RUNNING][i % 3],
            **(leased(i) if i % 3 == 2 else {}),
        },
    )
    running = Task.objects.select_for_update(skip_locked=True).filter(status=TaskStatus.RUNNING)
    polls = {
        "task_lease_due_idx": running.filter(lease_expires_at__lt=now).order_by("lease_expires_at"),
        "task_unit_status_idx": running.filter(unit__isnull=True, lease_expires_at__isnull=True).order_by("id"),
    }
    for index, qs in polls.items():
        plan = _plan(qs.values_list("id", flat=True)[:1000])
        print(f"EXPLAIN {index}:", plan)
        assert plan[0]["key"] == index, plan
        assert "filesort" not in (plan[0]["Extra"] or "").lower(), plan


def _plan(qs: Any) -> list[dict[str, Any]]:
    """EXPLAIN of a queryset's SQL on fresh table statistics (a FOR UPDATE needs a transaction)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE tasks")
        cursor.fetchall()
        sql, params = qs.query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        columns = [c[0] for c in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def test_claim_query_uses_the_claim_index_without_filesort():
    now = timezone.now()
    Task.objects.bulk_create(
        [
            Task(
                name=f"t{i}",
                task_type=["A", "B", "C"][i % 3],
                priority=i % 10,
                max_retries=3,
                status=[TaskStatus.PENDING, TaskStatus.COMPLETED][i % 2],
                available_at=now,
                created_at=now,
                updated_at=now,
            )
            for i in range(6000)
        ],
        batch_size=2000,
    )
    qs = claimable("A", now).select_for_update(skip_locked=True).values_list("id", "attempt", "timeout_seconds")[:25]
    with transaction.atomic():  # a FOR UPDATE compiles only inside one
        sql = qs.query.sql_with_params()[0]
    assert "SKIP LOCKED" in sql and "ORDER BY" in sql
    plan = _plan(qs)
    print("EXPLAIN claim:", plan)
    assert plan[0]["key"] == "task_claim_idx", plan
    assert "filesort" not in (plan[0]["Extra"] or "").lower(), plan


# --- batch reports (POST /tasks/reports) ----------------------------------------------------------


def _claim_and_report_in_batches(unit_id: str, out: Any) -> None:
    from tasks.transitions.reports import report_attempts
    from units.claim import claim_tasks

    done: list[int] = []
    errors: list[str] = []
    try:
        idle = 0
        while idle < 3:
            leased = claim_tasks(unit_id, 25, now=timezone.now())
            idle = idle + 1 if not leased else 0
            if not leased:
                continue
            reports = [
                {
                    "taskId": t.pk,
                    "attempt": t.attempt,
                    "outcome": "complete",
                    "result": {"by": unit_id},
                    "logs": [{"level": "INFO", "message": f"done by {unit_id}"}],
                }
                for t in reversed(leased)  # request order is not lock order
            ]
            for item in report_attempts(unit_id, reports):
                assert item["accepted"] and item["error"] is None, item
                done.append(item["taskId"])
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put((unit_id, done, errors))


def test_units_claiming_and_reporting_in_batches_at_once_finish_each_task_exactly_once():
    now = timezone.now() - timedelta(seconds=1)
    total = 1000
    Task.objects.bulk_create(
        [
            Task(name=f"t{i}", task_type="DATA_PROCESSING", priority=i % 5, max_retries=3, available_at=now,
                 created_at=now, updated_at=now)
            for i in range(total)
        ],
        batch_size=1000,
    )  # fmt: skip
    for task in Task.objects.all():
        TaskStatusHistory.objects.create(task=task, to_status="PENDING", actor_type="system", actor="t", created_at=now)
    for i in range(4):
        factories.unit(f"reporter-{i}", capacity=25)
    results = _run_in_processes(_claim_and_report_in_batches, [(f"reporter-{i}",) for i in range(4)])
    assert [e for _, _, errs in results for e in errs] == []
    done = [tid for _, ids, _ in results for tid in ids]
    assert len(done) == total and len(set(done)) == total
    assert sum(1 for _, ids, _ in results if ids) >= 2
    assert Task.objects.filter(status="COMPLETED", attempt=1, progress=100).count() == total
    from tasks.models import TaskExecutionLog

    assert TaskExecutionLog.objects.count() == total
    chains: dict[int, list[tuple[str | None, str]]] = {}
    for task_id, source, target in TaskStatusHistory.objects.order_by("id").values_list(
        "task_id", "from_status", "to_status"
    ):
        chains.setdefault(task_id, []).append((source, target))
    assert all(c == [(None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")] for c in chains.values())


def _progress_rounds(order: str, task_ids: list[int], out: Any) -> None:
    from tasks.transitions import reports as unit_reports

    errors: list[str] = []
    try:
        ids = task_ids if order == "up" else list(reversed(task_ids))
        for n in range(30):
            reports = [{"taskId": tid, "attempt": 1, "outcome": "progress", "progress": n} for tid in ids]
            # Without the lock-error retry: a deadlock between the two would reach us here.
            for item in unit_reports._report.__wrapped__("progress-unit", reports, timezone.now()):  # type: ignore[attr-defined]
                assert item["accepted"], item
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put((order, errors))


def test_two_batches_over_the_same_rows_in_opposite_orders_never_deadlock():
    now = timezone.now()
    unit = factories.unit("progress-unit", capacity=100)
    Task.objects.bulk_create(
        [
            Task(name=f"t{i}", task_type="DATA_PROCESSING", status=TaskStatus.RUNNING, attempt=1, max_retries=3,
                 unit_id=unit.pk, available_at=now, created_at=now, updated_at=now)
            for i in range(60)
        ]
    )  # fmt: skip
    ids = sorted(Task.objects.values_list("id", flat=True))
    results = _run_in_processes(_progress_rounds, [("up", ids), ("down", ids)])
    assert [e for _, errs in results for e in errs] == []
    assert Task.objects.filter(status="RUNNING", progress=29).count() == 60


def _submit_keyed_batch(owner_id: int, out: Any) -> None:
    from taskhub.apikeys.models import ApiKey
    from taskhub.base.actors import Actor
    from tasks.services import task_submit_batch

    ids: list[int] = []
    errors: list[str] = []
    try:
        owner = ApiKey.objects.get(pk=owner_id)
        items: list[tuple[dict[str, Any], str | None, str]] = [
            ({"name": f"k{n}", "task_type": "DATA_PROCESSING"}, f"key-{n}", f"fp-{n}") for n in range(100)
        ]
        for _ in range(3):
            ids = [task.pk for task, _ in task_submit_batch(owner=owner, actor=Actor.api_key("racer"), items=items)]
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put((ids, errors))


def test_clients_racing_the_same_keyed_batch_create_each_task_once():
    owner, _ = factories.api_key(name="racer")
    results = _run_in_processes(_submit_keyed_batch, [(owner.pk,) for _ in range(4)])
    assert [e for _, errs in results for e in errs] == []
    assert Task.objects.count() == 100 and TaskStatusHistory.objects.count() == 100
    assert all(ids == results[0][0] for ids, _ in results)  # every racer got the same tasks, in order


def test_a_task_row_locked_while_its_unit_goes_offline_fails_over_at_the_next_sweep(settings):
    """The sweeper marks a silent unit OFFLINE while another transaction holds one of its RUNNING
    tasks (a progress report, an edit): SKIP LOCKED passes the task over, and the next sweep must
    take it back (I1/I5: no task stays RUNNING on an OFFLINE unit)."""
    from units.models import ExecutionUnit
    from units.sweeper import sweep_heartbeats

    settings.UNIT_HEARTBEAT_TIMEOUT = 30
    t0 = timezone.now()
    unit = factories.unit("silent", now=t0)
    task = factories.leased_task(unit, now=t0)
    locked, release, seen = threading.Event(), threading.Event(), {}

    def holder() -> None:
        try:
            with transaction.atomic():
                Task.objects.select_for_update().get(pk=task.pk)
                locked.set()
                release.wait(timeout=60)
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    assert locked.wait(timeout=30)
    try:
        seen["first"] = sweep_heartbeats(t0 + timedelta(seconds=31))
    finally:
        release.set()
        thread.join(timeout=60)
    assert seen["first"]["unitsOffline"] == 1 and seen["first"]["failedOver"] == 0
    assert ExecutionUnit.objects.get(pk=unit.pk).status == "OFFLINE"  # and the task still RUNNING on it
    assert Task.objects.get(pk=task.pk).status == "RUNNING"
    assert sweep_heartbeats(t0 + timedelta(seconds=32))["failedOver"] == 1
    assert Task.objects.get(pk=task.pk).status == "PENDING"


def test_the_poll_for_silent_units_reads_the_liveness_index_though_it_reads_the_idle_stamp_too():
    """units.sweeper.silent_units: last heard (the later of heartbeat and held-claim stamp) before the
    deadline; the heartbeat's own test keeps it on unit_liveness_idx, not a scan of every unit."""
    from units.models import ExecutionUnit
    from units.sweeper import silent_units

    now = timezone.now()
    ExecutionUnit.objects.bulk_create(
        [
            ExecutionUnit(
                id=f"sil-{i}",
                unit_type="T",
                unit_name="n",
                capacity=1,
                token_hash=f"{i:064d}",
                status="ONLINE",
                last_heartbeat_at=now - timedelta(seconds=120 if i % 50 == 0 else 1),
                last_waited_at=now if i % 100 == 0 else None,
                registered_at=now,
            )
            for i in range(3000)
        ],
        batch_size=1000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE execution_units")
        cursor.fetchall()
    deadline = now - timedelta(seconds=30)
    plan = _plan(silent_units(deadline)[:500])
    print("EXPLAIN silent-unit poll:", plan)
    assert [row["key"] for row in plan] == ["unit_liveness_idx"], plan
    with transaction.atomic():
        silent = {unit_id for unit_id, _ in silent_units(deadline)}
    assert silent == {f"sil-{i}" for i in range(0, 3000, 50) if i % 100}  # the stamped half is heard


def test_the_poll_for_tasks_left_on_lost_units_reads_the_unit_and_lease_indexes():
    from django.db.models import Exists, OuterRef

    from tasks.fencing import live_lease
    from units.models import ExecutionUnit
    from units.states import ALIVE

    now = timezone.now()
    for i in range(300):
        factories.unit(f"poll-{i}", status="OFFLINE" if i % 3 else "ONLINE")
    Task.objects.bulk_create(
        [
            Task(
                name=f"t{i}",
                task_type="DATA_PROCESSING",
                max_retries=3,
                status=TaskStatus.RUNNING if i % 2 else TaskStatus.COMPLETED,
                unit_id=f"poll-{i % 300}",
                available_at=now,
                created_at=now,
                updated_at=now,
            )
            for i in range(6000)
        ],
        batch_size=3000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE execution_units")
        cursor.fetchall()
    poll = (
        ExecutionUnit.objects.select_for_update(skip_locked=True)
        .exclude(status__in=ALIVE)
        .filter(Exists(Task.objects.filter(**live_lease(OuterRef("pk")))))
        .order_by()
        .values_list("id", flat=True)[:500]
    )
    plan = _plan(poll)
    print("EXPLAIN left-behind poll:", plan)
    # The OFFLINE units by their status index, then each one's leases by (unit, status): a semi-join.
    assert [row["key"] for row in plan] == ["unit_liveness_idx", "task_unit_status_idx"], plan
    assert "filesort" not in " ".join(row["Extra"] or "" for row in plan).lower(), plan
