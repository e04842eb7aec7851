"""Execution units in the operator console: load, heartbeat age, drain / resume / deregister."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks.models import Task, TaskStatusHistory
from tasks.states import TaskStatus
from tests import factories
from tests.console_support import messages_of, operator, viewer
from units.models import ExecutionUnit, UnitStatus

pytestmark = pytest.mark.django_db
LIST = "/admin/units/executionunit/"


@pytest.fixture
def op_client() -> Client:
    client = Client()
    client.force_login(operator())
    return client


def act(client: Client, action: str, *pks: str) -> Any:
    return client.post(LIST, {"action": action, "_selected_action": list(pks), "index": "0"}, follow=True)


def test_list_shows_status_load_and_heartbeat_age_without_a_query_per_unit(op_client: Client) -> None:
    busy = factories.unit("load-unit", capacity=4)
    factories.leased_task(busy)
    factories.leased_task(busy)
    late = factories.unit("late-unit", now=timezone.now() - timedelta(minutes=5))
    op_client.get(LIST)
    with CaptureQueriesContext(connection) as few:
        body = op_client.get(LIST).content.decode()
    row = body[body.index("load-unit") :]
    assert 'class="th-badge th-unit-online"' in row
    assert "2 / 4" in row and 'style="width: 50%"' in row
    late_row = body[body.index(late.pk) :]
    assert 'class="th-stale"' in late_row and "5m" in late_row
    for i in range(20):
        factories.unit(f"more-{i}")
    with CaptureQueriesContext(connection) as many:
        op_client.get(LIST)
    assert len(many) == len(few)


def test_drain_puts_units_in_maintenance_and_says_which_already_were(op_client: Client) -> None:
    unit = factories.unit("drain-me")
    drained = factories.unit("drained", status=UnitStatus.MAINTENANCE)
    response = act(op_client, "drain_units", unit.pk, drained.pk)
    msgs = messages_of(response)
    assert "Drained 1 unit of 2 selected." in msgs
    assert "Not changed: 1 unit (#drained): already drained by an operator." in msgs
    unit.refresh_from_db()
    assert (unit.status, unit.drained_by, unit.drained_by_actor) == (UnitStatus.MAINTENANCE, "operator", "user:op")
    assert "already drained by user:op." in messages_of(act(op_client, "drain_units", unit.pk))[-1]


def test_list_and_page_say_who_drained_each_unit(op_client: Client) -> None:
    now = timezone.now()
    factories.unit("by-alice", status=UnitStatus.MAINTENANCE)
    ExecutionUnit.objects.filter(pk="by-alice").update(
        drained_by="operator", drained_by_actor="user:alice", drained_at=now - timedelta(minutes=3)
    )
    factories.unit("by-itself", status=UnitStatus.MAINTENANCE)
    ExecutionUnit.objects.filter(pk="by-itself").update(
        drained_by="self", drained_by_actor="unit:by-itself", drained_at=now
    )
    factories.unit("working")
    body = op_client.get(LIST).content.decode()
    assert "operator user:alice, 3m" in body[body.index("by-alice") :]
    assert "the unit itself (shutting down)" in body[body.index("by-itself") :]
    page = op_client.get(f"{LIST}by-alice/change/").content.decode()
    assert "operator user:alice, 3m" in page and "drained by" in page.lower()


def test_draining_a_unit_that_drains_itself_makes_it_an_operators_drain(op_client: Client) -> None:
    factories.unit("leaving", status=UnitStatus.MAINTENANCE)
    ExecutionUnit.objects.filter(pk="leaving").update(drained_by="self", drained_by_actor="unit:leaving")
    assert "Drained 1 unit." in messages_of(act(op_client, "drain_units", "leaving"))
    unit = ExecutionUnit.objects.get(pk="leaving")
    assert (unit.drained_by, unit.drained_by_actor) == ("operator", "user:op")


def test_resume_brings_draining_units_back_but_not_offline_ones(op_client: Client) -> None:
    draining = factories.unit("resume-me", status=UnitStatus.MAINTENANCE)
    offline = factories.unit("gone", status=UnitStatus.OFFLINE)
    online = factories.unit("fine")
    msgs = messages_of(act(op_client, "resume_units", draining.pk, offline.pk, online.pk))
    assert "Resumed 1 unit of 3 selected." in msgs
    assert "Not changed: 1 unit (#gone): OFFLINE units come back by heartbeating or re-registering." in msgs
    assert "Not changed: 1 unit (#fine): already online." in msgs
    assert ExecutionUnit.objects.get(pk=draining.pk).status == UnitStatus.ONLINE
    assert ExecutionUnit.objects.get(pk=offline.pk).status == UnitStatus.OFFLINE


def test_resume_lifts_the_drain_of_an_offline_unit_so_it_claims_when_back(op_client: Client) -> None:
    factories.unit("away", status=UnitStatus.OFFLINE)
    ExecutionUnit.objects.filter(pk="away").update(drained_by="operator", drained_by_actor="user:bob")
    assert "Resumed 1 unit." in messages_of(act(op_client, "resume_units", "away"))
    unit = ExecutionUnit.objects.get(pk="away")
    assert (unit.status, unit.drained_by, unit.drained_at) == (UnitStatus.OFFLINE, "", None)


def test_deregister_fails_the_units_tasks_over_and_deletes_it(op_client: Client) -> None:
    unit = factories.unit("leaving", capacity=3)
    tasks = [factories.leased_task(unit), factories.leased_task(unit)]
    msgs = messages_of(act(op_client, "deregister_units", unit.pk))
    assert any(m.startswith("Deregistered 1 unit. 2 running tasks failed over.") and "evicted" in m for m in msgs)
    assert not ExecutionUnit.objects.filter(pk=unit.pk).exists()
    for task in tasks:
        assert Task.objects.get(pk=task.pk).status == TaskStatus.PENDING
        last = TaskStatusHistory.objects.filter(task_id=task.pk).order_by("-id").first()
        assert last is not None and last.to_status == TaskStatus.PENDING
        assert "deregistered by user:op" in last.reason


def test_state_fields_are_read_only_and_units_are_not_added_or_deleted_here(op_client: Client) -> None:
    unit = factories.unit("ro-unit")
    body = op_client.get(f"{LIST}{unit.pk}/change/").content.decode()
    assert 'name="status"' not in body and 'name="capacity"' in body
    response = op_client.post(
        f"{LIST}{unit.pk}/change/", {"unit_name": "renamed", "capacity": "9", "endpoint": "", "status": "OFFLINE"}
    )
    assert response.status_code == 302
    unit.refresh_from_db()
    assert (unit.unit_name, unit.capacity, unit.status) == ("renamed", 9, UnitStatus.ONLINE)
    assert op_client.get(f"{LIST}add/").status_code == 403
    assert op_client.get(f"{LIST}{unit.pk}/delete/").status_code == 403


def test_viewer_sees_units_but_cannot_drain_them() -> None:
    client = Client()
    client.force_login(viewer())
    unit = factories.unit("look-only")
    listing = client.get(LIST)
    assert listing.status_code == 200 and b"drain_units" not in listing.content
    act(client, "drain_units", unit.pk)
    assert ExecutionUnit.objects.get(pk=unit.pk).status == UnitStatus.ONLINE
