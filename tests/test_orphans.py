"""RUNNING tasks that no unit holds (I1): the seed's `PUT status RUNNING` gives a task a lease of
its own, which the client's log lines renew; the sweeper fails it over when it runs out, and a
task whose unit row went without a deregistration at once. A client or an operator may requeue
such a task in one request; a task a live unit holds stays the hub's to take back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from tasks.models import Task, TaskStatusHistory
from tasks.states import TaskStatus
from tests import factories
from tests.test_seed_examples import CREATE_BODY, STATUS_BODY
from units.claim import claim_tasks
from units.models import ExecutionUnit, UnitStatus
from units.services import unit_heartbeat
from units.sweeper import sweep_heartbeats

pytestmark = pytest.mark.django_db
S = TaskStatus
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TIMEOUT = 30


@pytest.fixture(autouse=True)
def _timeout(settings):
    settings.UNIT_HEARTBEAT_TIMEOUT = TIMEOUT


def _started(client, at: datetime = T0) -> dict:
    """The README walkthrough: create the seed's task, then PUT its status RUNNING."""
    with time_machine.travel(at, tick=False):
        created = client.post("/api/v1/tasks", CREATE_BODY).json()
        response = client.put(f"/api/v1/tasks/{created['id']}/status", STATUS_BODY)
    assert response.status_code == 200, response.content
    return response.json()


def _last(task_id: int) -> TaskStatusHistory:
    return TaskStatusHistory.objects.filter(task_id=task_id).latest("id")


# --- the lease and the sweeper --------------------------------------------------------------------


def test_seed_walkthrough_task_goes_back_to_pending_when_nobody_reports_on_it_and_a_unit_can_claim_it(client_a):
    body = _started(client_a)
    assert (body["status"], body["unitId"]) == ("RUNNING", None)
    assert body["leaseExpiresAt"] == "2030-01-01T12:00:30Z"

    # Silent for the whole timeout is not yet too long (as for a unit's heartbeat); a moment more is.
    assert sweep_heartbeats(T0 + timedelta(seconds=TIMEOUT))["orphans"] == 0
    assert Task.objects.get(pk=body["id"]).status == S.RUNNING
    assert sweep_heartbeats(T0 + timedelta(seconds=TIMEOUT, milliseconds=1))["orphans"] == 1
    task = Task.objects.get(pk=body["id"])
    assert task.status == S.PENDING

    row = _last(task.pk)
    assert (row.from_status, row.to_status, row.actor_type, row.actor) == (
        S.RUNNING,
        S.PENDING,
        "system",
        "job:sweep_heartbeats",
    )
    assert row.reason == "started by key:client-a without a unit; nobody reported on it for 30s"
    assert (task.failover_count, task.retry_count, task.lease_expires_at) == (1, 0, None)

    factories.unit("worker-001", now=T0 + timedelta(seconds=31))
    [claimed] = claim_tasks("worker-001", 1, now=T0 + timedelta(seconds=31))
    assert (claimed.pk, claimed.attempt, claimed.lease_expires_at) == (task.pk, 2, None)
    assert client_a.get(f"/api/v1/tasks/{task.pk}").json()["leaseExpiresAt"] is None


def test_the_sweeper_leaves_the_task_alone_before_its_lease_runs_out(client_a):
    body = _started(client_a)
    result = sweep_heartbeats(T0 + timedelta(seconds=TIMEOUT - 1))
    assert result == {"unitsOffline": 0, "failedOver": 0, "poisoned": 0, "orphans": 0}
    assert Task.objects.get(pk=body["id"]).status == S.RUNNING
    result = sweep_heartbeats(T0 + timedelta(seconds=TIMEOUT + 1))
    assert result == {"unitsOffline": 0, "failedOver": 1, "poisoned": 0, "orphans": 1}
    assert sweep_heartbeats(T0 + timedelta(seconds=TIMEOUT + 2))["orphans"] == 0  # idempotent


def test_the_clients_log_lines_renew_the_lease_and_an_edit_does_not(client_a):
    body = _started(client_a)
    with time_machine.travel(T0 + timedelta(seconds=20), tick=False):
        assert client_a.post(f"/api/v1/tasks/{body['id']}/logs", {"message": "half way"}).status_code == 201
        renewed = client_a.get(f"/api/v1/tasks/{body['id']}").json()["leaseExpiresAt"]
    assert renewed == "2030-01-01T12:00:50Z"
    with time_machine.travel(T0 + timedelta(seconds=45), tick=False):
        assert client_a.patch(f"/api/v1/tasks/{body['id']}", {"priority": 5}).status_code == 200
    assert sweep_heartbeats(T0 + timedelta(seconds=49))["orphans"] == 0
    assert sweep_heartbeats(T0 + timedelta(seconds=51))["orphans"] == 1
    assert Task.objects.get(pk=body["id"]).status == S.PENDING


def test_a_task_the_client_finishes_in_time_keeps_no_lease(client_a):
    body = _started(client_a)
    with time_machine.travel(T0 + timedelta(seconds=10), tick=False):
        done = client_a.put(f"/api/v1/tasks/{body['id']}/status", {"status": "COMPLETED"}).json()
    assert (done["status"], done["leaseExpiresAt"]) == ("COMPLETED", None)
    assert sweep_heartbeats(T0 + timedelta(hours=1))["orphans"] == 0


def test_the_failover_cap_fails_a_task_nobody_reports_on_as_poison(client_a, settings):
    settings.TASK_MAX_FAILOVER_COUNT = 2
    body = _started(client_a)
    now = T0
    for _ in range(3):
        now += timedelta(seconds=TIMEOUT + 1)
        sweep_heartbeats(now)
        if Task.objects.get(pk=body["id"]).status == S.PENDING:
            with time_machine.travel(now, tick=False):
                client_a.put(f"/api/v1/tasks/{body['id']}/status", STATUS_BODY)
    task = Task.objects.get(pk=body["id"])
    assert (task.status, task.failover_count, task.next_retry_at, task.lease_expires_at) == (S.FAILED, 3, None, None)
    assert task.error.startswith("poison")
    row = _last(task.pk)
    assert row.reason.startswith("poison: failed over more than 2 times; last: started by key:client-a without a unit")


def test_a_claimed_task_is_never_taken_back_by_the_lease_path_while_its_unit_heartbeats(client_a):
    """I6, for a task that had a lease before (started by a client, taken back, then claimed)."""
    body = _started(client_a)
    sweep_heartbeats(T0 + timedelta(seconds=TIMEOUT + 1))
    start = T0 + timedelta(seconds=TIMEOUT + 1)
    factories.unit("u1", now=start)
    [claimed] = claim_tasks("u1", 1, now=start)
    for n in range(1, 31):
        now = start + timedelta(seconds=20 * n)
        unit_heartbeat("u1", current_load=1, metadata=None, tasks=[{"id": claimed.pk, "attempt": 2}], now=now)
        assert sweep_heartbeats(now + timedelta(seconds=15))["failedOver"] == 0
    task = Task.objects.get(pk=body["id"])
    assert (task.status, task.unit_id, task.attempt, task.lease_expires_at) == (S.RUNNING, "u1", 2, None)


def test_the_claim_clears_a_lease_left_on_a_pending_task():
    """The claim writes what entering RUNNING sets (tasks.entry) in plain SQL: the lease is among those fields."""
    task = factories.task(now=T0)
    Task.objects.filter(pk=task.pk).update(lease_expires_at=T0)  # as a writer that forgot it would leave it
    factories.unit("u1", now=T0)
    [claimed] = claim_tasks("u1", 1, now=T0)
    assert claimed.lease_expires_at is None
    assert Task.objects.get(pk=task.pk).lease_expires_at is None
    assert sweep_heartbeats(T0 + timedelta(seconds=1))["orphans"] == 0
    assert Task.objects.get(pk=task.pk).status == S.RUNNING


def test_a_task_whose_unit_row_was_deleted_without_deregistering_fails_over_at_the_next_sweep():
    """A plain delete of the unit (the ORM, a shell) leaves its task RUNNING with no unit (SET_NULL)
    and no lease; nobody can report on it any more (the unit's token went with the row)."""
    task = factories.leased_task("u-gone", now=T0)
    ExecutionUnit.objects.filter(pk="u-gone").delete()
    task.refresh_from_db()
    assert (task.status, task.unit_id, task.lease_expires_at) == (S.RUNNING, None, None)
    assert sweep_heartbeats(T0 + timedelta(seconds=1)) == {
        "unitsOffline": 0,
        "failedOver": 1,
        "poisoned": 0,
        "orphans": 1,
    }
    task.refresh_from_db()
    assert (task.status, task.failover_count) == (S.PENDING, 1)
    assert _last(task.pk).reason == "its unit u-gone was removed without deregistering; no unit holds it"


def test_the_sweeper_takes_back_10000_tasks_no_unit_holds_in_bounded_queries(django_assert_max_num_queries, settings):
    # The history writer reads the webhook subscriptions once per WEBHOOK_SUBSCRIPTIONS_TTL: once here
    # (the bound's last +1), however long the sweep takes on a loaded machine.
    settings.WEBHOOK_SUBSCRIPTIONS_TTL = 3600
    factories.lapsed_orphans(10_000, T0 + timedelta(seconds=TIMEOUT))
    fields = [f for f in TaskStatusHistory._meta.concrete_fields if not f.primary_key]
    history_batch = min(1000, connection.ops.bulk_batch_size(fields, []) or 1000)
    # Per sweep chunk (one transaction) of 1000 tasks: the unit poll, the poll for tasks left on units
    # no longer alive, the lease poll, the history read of who started them, the failover's lock and
    # UPDATE, its history inserts, and the two savepoints of the test's own transaction; an 11th chunk
    # finds nothing (the unit poll, the left-behind poll and both task polls).
    per_chunk = 2 + 4 + -(-1000 // history_batch) + 2
    bound = 10 * per_chunk + 4 + 2 + 1
    with django_assert_max_num_queries(bound) as ctx:
        result = sweep_heartbeats(T0 + timedelta(seconds=TIMEOUT + 1))
    assert result == {"unitsOffline": 0, "failedOver": 10_000, "poisoned": 0, "orphans": 10_000}
    assert Task.objects.filter(status=S.PENDING, failover_count=1, lease_expires_at=None).count() == 10_000
    assert TaskStatusHistory.objects.filter(reason__startswith="started by key:many without a unit").count() == 10_000
    print(f"sweeper: 10000 tasks no unit holds in {len(ctx.captured_queries)} queries (bound {bound})")


# --- requeue in one request: PUT status PENDING ---------------------------------------------------


def test_put_pending_requeues_a_task_no_unit_holds_with_a_history_row_naming_the_client(client_a):
    body = _started(client_a)
    with time_machine.travel(T0 + timedelta(seconds=5), tick=False):
        response = client_a.put(f"/api/v1/tasks/{body['id']}/status", {"status": "PENDING"})
    assert response.status_code == 200, response.content
    requeued = response.json()
    assert (requeued["status"], requeued["leaseExpiresAt"], requeued["failoverCount"]) == (S.PENDING, None, 0)
    row = _last(body["id"])
    assert (row.from_status, row.to_status, row.actor_type, row.actor, row.reason) == (
        S.RUNNING,
        S.PENDING,
        "api_key",
        "key:client-a",
        "requeued: no live unit held it",
    )
    assert sweep_heartbeats(T0 + timedelta(minutes=5))["orphans"] == 0
    factories.unit("u1", now=T0 + timedelta(seconds=6))
    assert [t.pk for t in claim_tasks("u1", 1, now=T0 + timedelta(seconds=6))] == [body["id"]]


def test_put_pending_on_a_task_a_live_unit_holds_is_409_saying_why_and_what_to_do(client_a, register_unit):
    register_unit("worker-001")
    created = client_a.post("/api/v1/tasks", CREATE_BODY).json()
    claim_tasks("worker-001", 1, now=timezone.now())
    before = list(TaskStatusHistory.objects.filter(task_id=created["id"]).values_list("id", flat=True))
    response = client_a.put(f"/api/v1/tasks/{created['id']}/status", {"status": "PENDING"})
    assert response.status_code == 409
    error = response.json()
    assert error["code"] == "illegal_transition"
    assert error["details"]["allowedTargets"] == ["CANCELLED", "COMPLETED", "FAILED", "PAUSED"]
    assert error["details"]["unitId"] == "worker-001"
    assert "Unit worker-001 holds it and is live" in error["message"]
    assert "stops heartbeating (for 30s)" in error["message"]
    assert "PUT status CANCELLED" in error["message"] and "PAUSED, then PENDING" in error["message"]
    task = Task.objects.get(pk=created["id"])
    assert (task.status, task.unit_id) == (S.RUNNING, "worker-001")
    assert list(TaskStatusHistory.objects.filter(task_id=created["id"]).values_list("id", flat=True)) == before


def test_a_refused_move_of_a_task_no_unit_holds_lists_pending_among_the_allowed_targets(client_a):
    body = _started(client_a)
    response = client_a.put(f"/api/v1/tasks/{body['id']}/status", {"status": "RUNNING"})
    assert response.status_code == 409
    assert response.json()["details"]["allowedTargets"] == ["CANCELLED", "COMPLETED", "FAILED", "PAUSED", "PENDING"]
    assert "unitId" not in response.json()["details"]


def test_a_task_held_by_an_offline_unit_can_be_requeued_and_the_unit_is_told_to_abort(client_a, register_unit):
    register_unit("worker-001")
    created = client_a.post("/api/v1/tasks", CREATE_BODY).json()
    claim_tasks("worker-001", 1, now=timezone.now())
    ExecutionUnit.objects.filter(pk="worker-001").update(status=UnitStatus.OFFLINE)
    response = client_a.put(f"/api/v1/tasks/{created['id']}/status", {"status": "PENDING"})
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["pendingCommand"]) == (S.PENDING, "abort")


def test_requeue_needs_the_write_scope_and_the_tasks_owner(client_a, client_b, make_client):
    body = _started(client_a)
    reader = make_client("reader", scopes=("tasks:read",))
    assert reader.put(f"/api/v1/tasks/{body['id']}/status", {"status": "PENDING"}).status_code == 403
    assert client_b.put(f"/api/v1/tasks/{body['id']}/status", {"status": "PENDING"}).status_code == 404
    assert Task.objects.get(pk=body["id"]).status == S.RUNNING


def test_a_failover_honours_the_tasks_scheduled_at(client_a):
    """Back to PENDING by the sweeper, as by any entry into PENDING: claimable from its schedule."""
    later = T0 + timedelta(hours=2)
    with time_machine.travel(T0, tick=False):
        created = client_a.post(
            "/api/v1/tasks", {"name": "t", "taskType": "DATA_PROCESSING", "scheduledAt": later.isoformat()}
        ).json()
        assert client_a.put(f"/api/v1/tasks/{created['id']}/status", {"status": "RUNNING"}).status_code == 200
    assert sweep_heartbeats(T0 + timedelta(seconds=TIMEOUT + 1))["orphans"] == 1
    stored = Task.objects.get(pk=created["id"])
    assert (stored.status, stored.available_at) == (S.PENDING, later)
    assert _last(created["id"]).reason_code == "failover"
