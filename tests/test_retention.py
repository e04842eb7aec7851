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
from taskhub.base.viewer import OPERATOR
from tasks import retention
from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
from tasks.retention import prune_tasks, retention_for
from tasks.states import TaskStatus
from tests import factories
from units.queues import update_queue_settings

S = TaskStatus
NOW = datetime(2030, 6, 1, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def _finished(
    status: str, days_ago: float, *, next_retry: bool = False, n: int = 1, task_type: str = "DATA_PROCESSING"
) -> list[int]:
    at = NOW - timedelta(days=days_ago)
    ids = []
    for _ in range(n):
        task = factories.task(now=at - timedelta(hours=1), task_type=task_type)
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


def _configure(task_type: str, **changes: object) -> None:
    update_queue_settings(task_type, changes, viewer=OPERATOR, actor=Actor.operator("op"), owner_id=None)


@override_settings(TASK_RETENTION_DAYS=30, TASK_DEAD_RETENTION_DAYS=90)
def test_a_queue_keeps_its_tasks_for_its_own_periods_each_falling_back_to_the_global_one() -> None:
    _configure("SHORT", retention_seconds=24 * 3600)
    _configure("LONGDEAD", dead_retention_seconds=200 * 24 * 3600)
    short_done = _finished(S.COMPLETED, 2, task_type="SHORT")
    short_dead_kept = _finished(S.FAILED, 60, task_type="SHORT")  # its dead period is the global 90 days
    plain_kept = _finished(S.COMPLETED, 2)
    long_dead_kept = _finished(S.FAILED, 100, task_type="LONGDEAD")
    long_done = _finished(S.COMPLETED, 31, task_type="LONGDEAD")  # its finished period is the global 30
    assert retention_for("SHORT") == retention.Retention(timedelta(days=1), timedelta(days=90))
    assert retention_for("OTHER") == retention.Retention(timedelta(days=30), timedelta(days=90))
    assert prune_tasks(NOW)["tasks"] == 2
    left = set(Task.objects.values_list("id", flat=True))
    assert left == {*short_dead_kept, *plain_kept, *long_dead_kept}
    assert not left & {*short_done, *long_done}


@override_settings(TASK_RETENTION_DAYS=30)
def test_a_walk_cut_short_goes_on_next_run_past_rows_kept_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows older than the shortest period but kept by their queue do not stop later runs from
    reaching the rows after them: each run goes on from where the last one stopped."""
    monkeypatch.setattr(retention, "CHUNK", 10)
    monkeypatch.setattr(retention, "MAX_CHUNKS", 2)
    _configure("HOUR", retention_seconds=3600)
    kept = _finished(S.COMPLETED, 20, n=45)  # 30 days: kept, and first in id order
    hourly = _finished(S.COMPLETED, 1, task_type="HOUR", n=5)
    pruned = [prune_tasks(NOW)["tasks"] for _ in range(3)]
    assert pruned == [0, 0, 5]  # 20 rows a run: the third reaches them
    assert not Task.objects.filter(pk__in=hourly).exists()
    assert Task.objects.filter(pk__in=kept).count() == 45
    later = _finished(S.COMPLETED, 1, task_type="HOUR", n=1)
    # That run ended at the end of the table: the next starts from the first id again.
    assert sum(prune_tasks(NOW)["tasks"] for _ in range(3)) == 1
    assert not Task.objects.filter(pk__in=later).exists()


def test_a_run_starting_from_a_cursor_past_the_last_id_wraps_round() -> None:
    from django.core.cache import cache

    ids = _finished(S.COMPLETED, 100, n=3)
    cache.set(retention.CURSOR_KEY, max(ids) + 10_000)  # left by a run on rows since deleted, say
    assert prune_tasks(NOW)["tasks"] == 3


def test_pruning_reads_in_bounded_chunks(monkeypatch: pytest.MonkeyPatch, django_assert_max_num_queries) -> None:
    monkeypatch.setattr(retention, "CHUNK", 10)
    _finished(S.COMPLETED, 40, n=35)
    # The periods (one query), then 4 chunks: read, lock, 3 DELETEs, savepoint + release.
    with django_assert_max_num_queries(1 + 4 * 7):
        assert prune_tasks(NOW)["tasks"] == 35
    monkeypatch.setattr(retention, "MAX_CHUNKS", 2)
    _finished(S.COMPLETED, 40, n=35)
    assert prune_tasks(NOW)["tasks"] == 20  # a run is bounded; the next one goes on


def test_the_walk_stops_at_tasks_too_young_to_be_due(django_assert_max_num_queries) -> None:
    for _ in range(3):
        factories.task(now=NOW - timedelta(hours=1))
    with django_assert_max_num_queries(2):  # the periods, one chunk
        assert prune_tasks(NOW)["tasks"] == 0


def test_a_task_retried_by_hand_after_the_read_is_not_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    (dead,) = _finished(S.FAILED, 100)
    from tasks.transitions import verbs

    real = retention._delete_chunk.__wrapped__  # type: ignore[attr-defined]

    def retry_first(ids: list[int], now: datetime) -> tuple[dict[str, int], list[tuple[int, str]]]:
        verbs.change_status(dead, S.PENDING, actor=Actor.system("test"))
        return real(ids, now)

    monkeypatch.setattr(retention, "_delete_chunk", retry_first)
    assert prune_tasks(NOW)["tasks"] == 0
    assert Task.objects.get(pk=dead).status == S.PENDING


def test_metrics_count_what_was_pruned_by_kind_and_by_queue() -> None:
    def value(prefix: str) -> float:
        for line in render_process_metrics().decode().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0

    rows = 'taskhub_pruned_rows_total{kind="tasks"}'
    done = 'taskhub_pruned_tasks_total{period="finished",task_type="PRUNEME"}'
    dead = 'taskhub_pruned_tasks_total{period="dead",task_type="PRUNEME"}'
    before = (value(rows), value(done), value(dead))
    _finished(S.COMPLETED, 100, n=2, task_type="PRUNEME")
    _finished(S.FAILED, 100, task_type="PRUNEME")
    prune_tasks(NOW)
    assert (value(rows), value(done), value(dead)) == (before[0] + 3, before[1] + 2, before[2] + 1)


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
