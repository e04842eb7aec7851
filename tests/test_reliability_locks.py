"""Issue 18, findings 2 and 3 on MariaDB with several connections: no task is left RUNNING without a
live lease when its row was held during a failover (deregistration, refused foreign reports), a
foreign unit's refused reports lock no other unit's rows, and a replaced process never claims."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.utils import OperationalError
from django.utils import timezone

from taskhub.base.actors import Actor
from tasks.models import Task
from tests import factories

pytestmark = [pytest.mark.mariadb, pytest.mark.django_db(transaction=True)]


@contextmanager
def held_in_another_connection(work: Callable[[], Any]) -> Iterator[dict[str, Any]]:
    """Run `work` in a transaction of another connection and keep that transaction open (its locks
    held) for the body of the `with`."""
    ready, release, seen = threading.Event(), threading.Event(), {}

    def holder() -> None:
        try:
            with transaction.atomic():
                seen["result"] = work()
                ready.set()
                release.wait(timeout=60)
        except Exception as exc:  # reported to the test below
            seen["error"] = exc
            ready.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    assert ready.wait(timeout=30)
    try:
        assert "error" not in seen, seen.get("error")
        yield seen
    finally:
        release.set()
        thread.join(timeout=60)


def row_lock_free(task_id: int) -> bool:
    try:
        with transaction.atomic():
            Task.objects.select_for_update(nowait=True).get(pk=task_id)
        return True
    except OperationalError:
        return False


def test_refused_foreign_reports_lock_no_other_units_rows():
    """A batch naming another unit's tasks is refused item by item, and while its transaction runs
    it holds no lock on those rows (on main it locked them all: they starved sweeps and claims)."""
    from tasks.transitions.reports import report_attempts

    assert connection.vendor == "mysql"
    owner = factories.unit("owner-unit")
    tasks = factories.leased_tasks(owner, 3)
    factories.unit("foreign-unit")
    batch = [{"taskId": t.pk, "attempt": t.attempt, "outcome": "progress", "progress": 50} for t in tasks]
    with held_in_another_connection(lambda: report_attempts("foreign-unit", batch)) as seen:
        assert [r["error"]["code"] for r in seen["result"]] == ["stale_attempt"] * 3
        assert all(row_lock_free(t.pk) for t in tasks)
    assert all(t.progress == 0 for t in Task.objects.filter(pk__in=[t.pk for t in tasks]))


def test_a_units_own_reports_still_lock_its_rows():
    from tasks.transitions.reports import report_attempts

    owner = factories.unit("owner-unit")
    (task,) = factories.leased_tasks(owner, 1)
    batch = [{"taskId": task.pk, "attempt": task.attempt, "outcome": "progress", "progress": 50}]
    with held_in_another_connection(lambda: report_attempts("owner-unit", batch)) as seen:
        assert seen["result"][0]["accepted"] is True
        assert not row_lock_free(task.pk)


def test_tasks_held_while_their_unit_is_deregistered_fail_over_at_the_next_sweep(settings):
    """DELETE /execution-units/{id} fails the unit's tasks over with SKIP LOCKED, then deletes the
    row: a task whose row another transaction held is left RUNNING with no unit; the sweep's
    orphan pass takes it back."""
    from units.models import ExecutionUnit
    from units.services import unit_delete
    from units.sweeper import sweep_heartbeats

    t0 = timezone.now()
    unit = factories.unit("leaving", now=t0)
    tasks = factories.leased_tasks(unit, 4, now=t0)
    held = tasks[:2]
    seen: dict[str, Any] = {}

    def deregister() -> None:
        try:
            seen["counts"] = unit_delete(unit.pk, queryset=ExecutionUnit.objects.all(), actor=Actor.system("test"))
        finally:
            connections.close_all()

    with held_in_another_connection(lambda: list(Task.objects.select_for_update().filter(pk__in=[t.pk for t in held]))):
        deleting = threading.Thread(target=deregister)
        deleting.start()
        deleting.join(timeout=1.5)  # its failover skipped the held rows; the row's deletion waits for them
    deleting.join(timeout=30)
    assert seen["counts"]["failedOver"] == 2
    left = Task.objects.filter(pk__in=[t.pk for t in held])
    assert {(t.status, t.unit_id) for t in left} == {("RUNNING", None)}
    assert sweep_heartbeats(timezone.now())["orphans"] == 2
    assert set(Task.objects.filter(pk__in=[t.pk for t in tasks]).values_list("status", flat=True)) == {"PENDING"}


def test_tasks_named_by_a_foreign_batch_during_the_sweep_fail_over(settings):
    """The issue's third reproduction: refused foreign batches naming a silent unit's tasks while the
    sweep runs. They no longer lock those rows, so the sweep fails every task over at once."""
    from tasks.transitions.reports import report_attempts
    from units.sweeper import sweep_heartbeats

    settings.UNIT_HEARTBEAT_TIMEOUT = 30
    t0 = timezone.now()
    tasks = factories.leased_tasks(factories.unit("silent", now=t0), 5, now=t0)
    factories.unit("foreign-unit", now=t0 + timedelta(seconds=30))
    batch = [{"taskId": t.pk, "attempt": t.attempt, "outcome": "progress", "progress": 1} for t in tasks]
    with held_in_another_connection(lambda: report_attempts("foreign-unit", batch)):
        counts = sweep_heartbeats(t0 + timedelta(seconds=31))
    assert counts["unitsOffline"] == 1 and counts["failedOver"] == 5


def test_a_claim_racing_a_replacement_of_its_process_is_refused():
    """The claim reads the stored instance id in its locked statement: a replacement that commits
    while the old process's claim waits on the unit row (after the view's unlocked check passed)
    refuses that claim, and the old process gets no task."""
    from units.claim import claim_tasks
    from units.lifecycle import UnitReplaced
    from units.models import ExecutionUnit

    unit = factories.unit("dup")
    ExecutionUnit.objects.filter(pk=unit.pk).update(instance_id="old")
    factories.task(priority=1000)
    outcome: dict[str, Any] = {}

    def old_process_claims() -> None:
        try:
            outcome["tasks"] = claim_tasks(unit.pk, 5, now=timezone.now(), instance_id="old")
        except UnitReplaced as exc:
            outcome["refused"] = exc
        finally:
            connections.close_all()

    with transaction.atomic():  # the replacement holds the unit row, as unit_register does
        ExecutionUnit.objects.select_for_update().get(pk=unit.pk)
        claimer = threading.Thread(target=old_process_claims)
        claimer.start()
        claimer.join(timeout=1.0)  # it waits on our lock
        assert claimer.is_alive()
        ExecutionUnit.objects.filter(pk=unit.pk).update(instance_id="new")
    claimer.join(timeout=30)
    assert "refused" in outcome and outcome["refused"].code == "unit_replaced"
    assert not Task.objects.filter(status="RUNNING").exists()
    assert [t.pk for t in claim_tasks(unit.pk, 5, now=timezone.now(), instance_id="new")]
