"""Retention: finished tasks with their history and logs are pruned after their period (the dead set
after a longer one), in bounded chunks, by a job safe to run twice at once; /metrics counts it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connections
from django.test import override_settings

from taskhub.api.metrics import render_process_metrics
from taskhub.base.actors import Actor
from tasks import retention
from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
from tasks.retention import prune_tasks, retention_for
from tasks.states import TaskStatus
from tests import factories

S = TaskStatus
NOW = datetime(2030, 6, 1, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def _finished(status: str, days_ago: float, *, next_retry: bool = False, n: int = 1) -> list[int]:
    at = NOW - timedelta(days=days_ago)
    ids = []
    for _ in range(n):
        task = factories.task(now=at - timedelta(hours=1))
        TaskExecutionLog.objects.create(task=task, message="line", timestamp=at, created_at=at)
        Task.objects.filter(pk=task.pk).update(
            status=status, finished_at=at, next_retry_at=at + timedelta(days=1) if next_retry else None
        )
        ids.append(task.pk)
    return ids


@override_settings(TASK_RETENTION_DAYS=30, TASK_DEAD_RETENTION_DAYS=90)
def test_finished_tasks_are_pruned_after_their_period_the_dead_set_later() -> None:
    old_done = _finished(S.COMPLETED, 31) + _finished(S.CANCELLED, 31)
    young_done = _finished(S.COMPLETED, 29)
    dead_kept = _finished(S.FAILED, 60)
    dead_old = _finished(S.FAILED, 91)
    retrying = _finished(S.FAILED, 200, next_retry=True)  # a retry is due: waiting, not dead
    pending = factories.task(now=NOW - timedelta(days=400)).pk
    result = prune_tasks(NOW)
    assert result == {"tasks": 3, "history": 3, "logs": 3}
    left = set(Task.objects.values_list("id", flat=True))
    assert left == {*young_done, *dead_kept, *retrying, pending}
    assert not TaskStatusHistory.objects.filter(task_id__in=old_done + dead_old).exists()
    assert not TaskExecutionLog.objects.filter(task_id__in=old_done + dead_old).exists()
    assert prune_tasks(NOW) == {"tasks": 0, "history": 0, "logs": 0}  # idempotent


def test_the_period_comes_from_retention_for(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _finished(S.COMPLETED, 2)
    factories.task(now=NOW - timedelta(days=2), task_type="KEEP")
    assert prune_tasks(NOW)["tasks"] == 0
    monkeypatch.setattr(
        retention, "retention_for", lambda task_type: retention.Retention(timedelta(days=1), timedelta(days=1))
    )
    assert prune_tasks(NOW)["tasks"] == 1
    assert not Task.objects.filter(pk__in=ids).exists()
    assert retention_for("X").finished == timedelta(days=30)


def test_pruning_reads_in_bounded_chunks(monkeypatch: pytest.MonkeyPatch, django_assert_max_num_queries) -> None:
    monkeypatch.setattr(retention, "CHUNK", 10)
    _finished(S.COMPLETED, 40, n=35)
    with django_assert_max_num_queries(4 * 7):  # 4 chunks: read, lock, 3 DELETEs, savepoint + release
        assert prune_tasks(NOW)["tasks"] == 35
    monkeypatch.setattr(retention, "MAX_CHUNKS", 2)
    _finished(S.COMPLETED, 40, n=35)
    assert prune_tasks(NOW)["tasks"] == 20  # a run is bounded; the next one goes on


def test_the_walk_stops_at_tasks_too_young_to_be_due(django_assert_max_num_queries) -> None:
    for _ in range(3):
        factories.task(now=NOW - timedelta(hours=1))
    with django_assert_max_num_queries(1):
        assert prune_tasks(NOW)["tasks"] == 0


def test_a_task_retried_by_hand_after_the_read_is_not_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    (dead,) = _finished(S.FAILED, 100)
    from tasks.transitions import verbs

    real = retention._delete_chunk.__wrapped__  # type: ignore[attr-defined]

    def retry_first(ids: list[int], now: datetime) -> dict[str, int]:
        verbs.change_status(dead, S.PENDING, actor=Actor.system("test"))
        return real(ids, now)

    monkeypatch.setattr(retention, "_delete_chunk", retry_first)
    assert prune_tasks(NOW)["tasks"] == 0
    assert Task.objects.get(pk=dead).status == S.PENDING


def test_metrics_count_what_was_pruned() -> None:
    def value() -> float:
        for line in render_process_metrics().decode().splitlines():
            if line.startswith('taskhub_pruned_rows_total{kind="tasks"}'):
                return float(line.split()[-1])
        return 0.0

    before = value()
    _finished(S.COMPLETED, 100, n=2)
    prune_tasks(NOW)
    assert value() == before + 2


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_two_prune_jobs_at_once_delete_each_task_once_on_mariadb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "CHUNK", 50)
    ids = _finished(S.COMPLETED, 100, n=300)
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(prune_tasks(NOW))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    remaining = Task.objects.filter(pk__in=ids).count()
    # SKIP LOCKED: a chunk the other job holds is skipped, looked at by the next run.
    assert sum(r["tasks"] for r in results) + remaining == 300
    prune_tasks(NOW)
    assert not Task.objects.filter(pk__in=ids).exists()
