"""History rows carry a reason code beside the reason text, written by the one history writer;
the migration that gave old rows theirs reads them as the writers would have coded them."""

from __future__ import annotations

import importlib
from collections import Counter
from datetime import timedelta

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone

from taskhub.base.actors import Actor
from tasks.jobs import fail_timeouts, move_due_retries
from tasks.models import Task, TaskStatusHistory
from tasks.states import ReasonCode, TaskStatus
from tasks.transitions import reports, verbs
from tests import factories
from units.claim import claim_tasks
from units.models import ExecutionUnit, UnitStatus
from units.sweeper import sweep_heartbeats

pytestmark = pytest.mark.django_db
S = TaskStatus
CLIENT = Actor.api_key("client")
backfill = importlib.import_module("tasks.migrations.0004_history_reason_code").backfill


def _every_kind_of_move(settings) -> None:
    settings.TASK_MAX_FAILOVER_COUNT = 1
    now = timezone.now()
    unit = factories.unit("coder", capacity=50)
    done, retried, dead, timed, paused, cancelled, lost, poison = (factories.task(max_retries=1) for _ in range(8))
    Task.objects.filter(pk=timed.pk).update(timeout_seconds=1)
    later = now + timedelta(seconds=1)
    claim_tasks(unit.pk, 50, now=later)
    started = factories.task(now=later)
    reports.complete_attempt(done.pk, unit_id=unit.pk, attempt=1, result={}, now=later)
    reports.fail_attempt(retried.pk, unit_id=unit.pk, attempt=1, error="x", retryable=True, now=later)
    reports.fail_attempt(dead.pk, unit_id=unit.pk, attempt=1, error="x", retryable=False, now=later)
    fail_timeouts(later + timedelta(seconds=5))
    move_due_retries(later + timedelta(days=1))
    verbs.retry_task(dead.pk, actor=CLIENT, now=later)
    verbs.pause_task(paused.pk, actor=CLIENT, now=later)
    verbs.change_status(paused.pk, S.PENDING, actor=CLIENT, now=later)
    verbs.cancel_task(cancelled.pk, actor=CLIENT, now=later)
    verbs.change_status(started.pk, S.RUNNING, actor=CLIENT, now=later)
    verbs.change_status(started.pk, S.PENDING, actor=CLIENT, now=later)  # a requeue: no unit holds it
    Task.objects.filter(pk=poison.pk).update(failover_count=1)
    ExecutionUnit.objects.filter(pk=unit.pk).update(last_heartbeat_at=later - timedelta(hours=1))
    sweep_heartbeats(later + timedelta(minutes=5))
    assert Task.objects.get(pk=lost.pk).status == S.PENDING and Task.objects.get(pk=poison.pk).status == S.FAILED
    assert ExecutionUnit.objects.get(pk=unit.pk).status == UnitStatus.OFFLINE


def test_every_path_writes_its_reason_code(settings) -> None:
    _every_kind_of_move(settings)
    codes = Counter(TaskStatusHistory.objects.values_list("reason_code", flat=True))
    assert "" not in codes
    assert set(codes) == set(ReasonCode.values), set(ReasonCode.values) - set(codes)


def test_the_backfill_gives_old_rows_the_codes_the_writers_write(settings) -> None:
    _every_kind_of_move(settings)
    written = dict(TaskStatusHistory.objects.values_list("id", "reason_code"))
    TaskStatusHistory.objects.update(reason_code="")

    class Editor:  # what RunPython hands the function: the connection is all it reads
        pass

    editor = Editor()
    editor.connection = connection  # type: ignore[attr-defined]
    backfill(apps, editor)
    assert dict(TaskStatusHistory.objects.values_list("id", "reason_code")) == written
