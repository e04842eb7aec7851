"""Automatic retries with capped exponential backoff, the dead set, manual retry and redrive;
timeouts."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from taskhub.apikeys.models import ApiKey
from tasks.backoff import retry_delay
from tasks.jobs import fail_timeouts, move_due_retries
from tasks.models import Task, TaskStatusHistory
from tasks.transitions.reports import fail_attempt
from tests import factories
from units.claim import claim_tasks

pytestmark = pytest.mark.django_db


def test_backoff_grows_exponentially_and_is_capped(settings):
    settings.TASK_RETRY_BACKOFF_BASE, settings.TASK_RETRY_BACKOFF_MAX = 10, 600
    rng = random.Random(7)
    for n in range(1, 12):
        ceiling = min(600, 10 * 2 ** (n - 1))
        delays = [retry_delay(n, rng=rng).total_seconds() for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (n, delays)
    assert retry_delay(200).total_seconds() <= 600  # no overflow for huge n
    assert len({round(retry_delay(3, rng=rng).total_seconds(), 6) for _ in range(20)}) > 1  # jitter


def _fail_once(task_id: int, unit_id: str, now, retryable: bool = True):
    attempt = Task.objects.get(pk=task_id).attempt
    return fail_attempt(task_id, unit_id=unit_id, attempt=attempt, error="boom", retryable=retryable, now=now)


def test_retryable_failure_waits_then_returns_to_pending(settings):
    settings.TASK_RETRY_BACKOFF_BASE, settings.TASK_RETRY_BACKOFF_MAX = 10, 600
    with time_machine.travel("2026-03-01 00:00:00Z", tick=False) as clock:
        task = factories.task(max_retries=3)
        unit = factories.unit(capacity=5)
        waits = []
        for expected_retry in (1, 2, 3):
            now = timezone.now()
            assert len(claim_tasks(unit.pk, 1, now=now)) == 1
            _fail_once(task.pk, unit.pk, now)
            task.refresh_from_db()
            assert task.status == "FAILED" and task.retry_count == expected_retry
            assert task.next_retry_at is not None
            waits.append((task.next_retry_at - now).total_seconds())
            assert move_due_retries(task.next_retry_at - timedelta(milliseconds=1)) == {"retried": 0}
            clock.move_to(task.next_retry_at)
            unit_now = timezone.now()
            from units.services import unit_heartbeat

            unit_heartbeat(unit.pk, current_load=0, metadata=None, tasks=None, now=unit_now)
            assert move_due_retries(unit_now) == {"retried": 1}
            task.refresh_from_db()
            assert task.status == "PENDING"
        assert 5 <= waits[0] <= 10 and 10 <= waits[1] <= 20 and 20 <= waits[2] <= 40
        # The fourth failure has no retry left: it stays FAILED (the dead set).
        now = timezone.now()
        claim_tasks(unit.pk, 1, now=now)
        _fail_once(task.pk, unit.pk, now)
        task.refresh_from_db()
        assert task.status == "FAILED" and task.next_retry_at is None and task.retry_count == 3
        assert move_due_retries(now + timedelta(days=1)) == {"retried": 0}
    history = list(TaskStatusHistory.objects.filter(task=task).order_by("id").values_list("to_status", flat=True))
    assert history.count("FAILED") == 4 and history.count("RUNNING") == 4


def test_non_retryable_failure_stays_failed():
    unit = factories.unit()
    now = timezone.now()
    task = factories.leased_task(unit, now=now)
    _fail_once(task.pk, unit.pk, now, retryable=False)
    task.refresh_from_db()
    assert task.status == "FAILED" and task.next_retry_at is None and task.retry_count == 0


def test_manual_retry_and_bulk_redrive(client_a, leased):
    unit, claimed = leased(4, "u1", maxRetries=0)
    ids = [t["id"] for t in claimed]
    for t in claimed:
        unit.post(f"/api/v1/tasks/{t['id']}/fail", {"attempt": t["attempt"], "error": "bad", "retryable": True})
    assert set(Task.objects.values_list("status", flat=True)) == {"FAILED"}
    assert client_a.get("/api/v1/tasks/stats").json()["dead"] == 4
    one = client_a.post(f"/api/v1/tasks/{ids[0]}/retry")
    assert one.status_code == 200 and one.json()["status"] == "PENDING"
    assert client_a.post(f"/api/v1/tasks/{ids[0]}/retry").status_code == 409  # not FAILED any more
    body = client_a.post("/api/v1/tasks/redrive", {"ids": ids[1:3]}).json()
    assert body["retried"] == ids[1:3]
    assert Task.objects.get(pk=ids[3]).status == "FAILED"
    everything = client_a.post("/api/v1/tasks/redrive", {}).json()
    assert everything["retried"] == [ids[3]]
    rows = TaskStatusHistory.objects.filter(task_id=ids[1], from_status="FAILED", to_status="PENDING")
    assert rows.get().actor == "key:client-a"


def test_redrive_touches_only_the_callers_tasks(client_a, client_b):
    unit = factories.unit()
    now = timezone.now()
    task = factories.leased_task(unit, now=now, owner=ApiKey.objects.get(name="client-a"))
    _fail_once(task.pk, unit.pk, now, retryable=False)
    assert client_b.post("/api/v1/tasks/redrive", {}).json()["retried"] == []
    assert Task.objects.get(pk=task.pk).status == "FAILED"


def test_running_task_past_its_timeout_fails_retryably():
    with time_machine.travel("2026-03-01 00:00:00Z", tick=False):
        now = timezone.now()
        task = factories.leased_task(now=now, timeout_seconds=60, max_retries=2)
        assert fail_timeouts(now + timedelta(seconds=59)) == {"timedOut": 0}
        assert fail_timeouts(now + timedelta(seconds=61)) == {"timedOut": 1}
    task.refresh_from_db()
    assert task.status == "FAILED" and task.retry_count == 1 and task.next_retry_at is not None
    assert "timed out" in task.error
    assert task.pending_command == "abort"
    row = TaskStatusHistory.objects.filter(task=task).latest("id")
    assert row.actor == "job:timeouts" and row.from_status == "RUNNING"


def test_jobs_are_idempotent():
    with time_machine.travel("2026-03-01 00:00:00Z", tick=False):
        now = timezone.now()
        factories.leased_task(now=now, timeout_seconds=1)
        later = now + timedelta(seconds=5)
        assert fail_timeouts(later) == {"timedOut": 1}
        assert fail_timeouts(later) == {"timedOut": 0}
        due = Task.objects.get().next_retry_at
        assert due is not None
        assert move_due_retries(due) == {"retried": 1}
        assert move_due_retries(due) == {"retried": 0}


def test_the_retry_mover_honours_a_scheduled_at_patched_onto_a_failed_task(client_a, register_unit, settings):
    """The rule of every entry into PENDING (claimable from max(now, scheduledAt)) holds for the
    retry mover too: a retry waiting on a FAILED task rescheduled to tomorrow runs tomorrow."""
    settings.TASK_RETRY_BACKOFF_BASE, settings.TASK_RETRY_BACKOFF_MAX = 10, 10
    t0 = timezone.now().replace(microsecond=0)
    tomorrow = t0 + timedelta(days=1)
    with time_machine.travel(t0, tick=False):
        register_unit("worker-001")
        created = client_a.post("/api/v1/tasks", {"name": "t", "taskType": "DATA_PROCESSING", "config": {}}).json()
        (task,) = claim_tasks("worker-001", 1, now=t0)
        fail_attempt(task.pk, unit_id="worker-001", attempt=task.attempt, error="boom", retryable=True, now=t0)
        patched = client_a.patch(f"/api/v1/tasks/{created['id']}", {"scheduledAt": tomorrow.isoformat()})
        assert patched.status_code == 200, patched.content
    assert move_due_retries(t0 + timedelta(seconds=11)) == {"retried": 1}
    stored = Task.objects.get(pk=created["id"])
    assert (stored.status, stored.available_at) == ("PENDING", tomorrow)
    assert claim_tasks("worker-001", 1, now=t0 + timedelta(seconds=12)) == []
    assert [t.pk for t in claim_tasks("worker-001", 1, now=tomorrow)] == [created["id"]]


def test_timeouts_fail_many_tasks_in_a_bounded_number_of_statements(django_assert_max_num_queries):
    """One write for the batch (the path of a unit's failure reports), not a save or two per task."""
    unit = factories.unit(capacity=100)
    for _ in range(40):
        factories.task(timeout_seconds=1, max_retries=1)
    now = timezone.now()
    assert len(claim_tasks(unit.pk, 40, now=now)) == 40
    with django_assert_max_num_queries(8):
        assert fail_timeouts(now + timedelta(seconds=2)) == {"timedOut": 40}
    assert set(Task.objects.values_list("status", "pending_command")) == {("FAILED", "abort")}
    codes = set(TaskStatusHistory.objects.filter(to_status="FAILED").values_list("reason_code", flat=True))
    assert codes == {"timed_out"}
