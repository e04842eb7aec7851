"""The operator dashboard, the roles, and the periodic jobs' pages in the console."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from taskhub.base.actors import Actor
from taskhub.console.dashboard import dashboard_data, throughput
from taskhub.console.roles import OPERATOR_PERMISSIONS, OPERATORS, VIEWER_PERMISSIONS, VIEWERS, sync_roles
from tasks.models import Task
from tasks.states import TaskStatus
from tasks.transitions.bulk import fail_over_tasks
from tests import factories
from tests.console_support import completed_task, failed_task, operator, staff, viewer
from units.models import UnitStatus

pytestmark = pytest.mark.django_db
S = TaskStatus


@pytest.fixture
def op_client() -> Client:
    client = Client()
    client.force_login(operator())
    return client


def test_dashboard_numbers_match_the_database(op_client: Client) -> None:
    unit = factories.unit("dash-unit", capacity=4)
    factories.unit("dash-off", status=UnitStatus.OFFLINE, capacity=9)
    factories.unit("dash-drain", status=UnitStatus.MAINTENANCE, capacity=2)
    factories.leased_task(unit)
    failed_task(unit)
    completed_task(unit)
    factories.task()
    data = op_client.get("/admin/dashboard/data.json").json()
    in_db = {s: Task.objects.filter(status=s).count() for s in S.values}
    assert data["tasks"]["byStatus"] == in_db and data["tasks"]["total"] == 4
    units = data["units"]
    assert (units["online"], units["offline"], units["maintenance"]) == (1, 1, 1)
    assert (units["running"], units["capacity"], units["utilisation"]) == (1, 4, 0.25)


def test_throughput_counts_completions_failures_and_failovers_per_minute_over_the_last_hour() -> None:
    now = timezone.now().replace(second=30, microsecond=0)
    unit = factories.unit("flow-unit", capacity=50)
    completed_task(unit, now=now - timedelta(minutes=90))  # outside the window
    for _ in range(3):
        completed_task(unit, now=now - timedelta(minutes=5))
    completed_task(unit, now=now)
    failed_task(unit, now=now - timedelta(minutes=2), error="kaput")
    lost = factories.leased_task(unit, now=now - timedelta(minutes=1))
    with transaction.atomic():  # its callers hold the unit rows locked
        fail_over_tasks(Q(pk=lost.pk), reason="unit lost", actor=Actor.system("test"), now=now - timedelta(minutes=1))

    data = dashboard_data(now)
    flow = data["throughput"]
    assert len(flow["completed"]) == 60 and flow["minutes"][-1] == now.strftime("%H:%M")
    assert flow["completed"][-1] == 1 and flow["completed"][-6] == 3 and sum(flow["completed"]) == 4
    assert flow["failed"][-3] == 1 and flow["failedOver"][-2] == 1
    assert data["lastHour"] == {"completed": 4, "failed": 1, "failedOver": 1}
    [failure] = data["recentFailures"]
    assert "kaput" in failure["reason"] and failure["url"].endswith(f"/tasks/task/{failure['taskId']}/change/")


def test_a_requeue_by_a_person_is_not_a_failover_but_the_sweepers_take_back_of_a_task_nobody_holds_is() -> None:
    from tasks.transitions import verbs
    from units.sweeper import sweep_heartbeats

    now = timezone.now().replace(second=30, microsecond=0)
    requeued, lapsed = factories.task(now=now), factories.task(now=now)
    for task in (requeued, lapsed):
        verbs.change_status(task.pk, S.RUNNING, actor=Actor.api_key("seed"), now=now)
    verbs.change_status(requeued.pk, S.PENDING, actor=Actor.operator("op"), now=now)
    sweep_heartbeats(now + timedelta(minutes=1))
    assert Task.objects.get(pk=lapsed.pk).status == S.PENDING
    data = dashboard_data(now + timedelta(minutes=1))
    assert data["lastHour"]["failedOver"] == 1
    assert data["throughput"]["failedOver"][-1] == 1


def test_throughput_and_the_whole_dashboard_take_a_bounded_number_of_queries(
    op_client: Client, django_assert_max_num_queries, django_assert_num_queries
) -> None:
    unit = factories.unit("q-unit", capacity=100)
    for _ in range(30):
        completed_task(unit)
        failed_task(unit)
    with django_assert_max_num_queries(2):
        throughput(timezone.now())
    op_client.get("/admin/dashboard/data.json")
    # session + user + 2 permission loads, then eight: tasks by status with the dead/waiting-retry
    # split, RUNNING by their unit's status (running on alive units, orphans), units by status, PENDING
    # types no claiming unit serves, the history floor and the last hour, the recent failures, the
    # queues with settings. (It was fifteen.)
    with django_assert_num_queries(4 + 8):
        assert op_client.get("/admin/dashboard/data.json").status_code == 200
    with django_assert_num_queries(8):
        dashboard_data()


def test_dashboard_page_refreshes_itself_and_loads_nothing_from_the_internet(op_client: Client) -> None:
    failed = failed_task(factories.unit("page-unit"))
    body = op_client.get("/admin/dashboard/").content.decode()
    assert 'data-url="/admin/dashboard/data.json"' in body and 'data-refresh-ms="5000"' in body
    assert "/static/console/dashboard.js" in body
    assert f'href="/admin/tasks/task/{failed.pk}/change/"' in body
    assert 'href="/admin/django_celery_beat/periodictask/"' in body  # operators reach the beat schedules
    external = re.findall(r'(?:src|href)="(https?:)?//', body)
    assert external == [], external
    assert b'href="/admin/dashboard/"' in op_client.get("/admin/").content  # linked from the index


def test_dashboard_is_for_operators_and_viewers_only() -> None:
    for user, code in ((operator(), 200), (viewer(), 200), (staff("plain-staff"), 403)):
        client = Client()
        client.force_login(user)
        assert client.get("/admin/dashboard/").status_code == code, user.username
        assert client.get("/admin/dashboard/data.json").status_code == code, user.username
    anonymous = Client().get("/admin/dashboard/data.json")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


def test_the_migration_made_both_roles_with_exactly_their_permissions() -> None:
    for name, wanted in ((OPERATORS, OPERATOR_PERMISSIONS), (VIEWERS, VIEWER_PERMISSIONS)):
        group = Group.objects.get(name=name)
        have = set(group.permissions.values_list("content_type__app_label", "codename"))
        assert have == set(wanted), name
    assert sync_roles() == {VIEWERS: len(VIEWER_PERMISSIONS), OPERATORS: len(OPERATOR_PERMISSIONS)}


def test_operators_edit_periodic_jobs_and_viewers_only_see_them() -> None:
    every = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.SECONDS)
    job = PeriodicTask.objects.create(name="taskhub: sweep_heartbeats", task="taskhub.sweep_heartbeats", interval=every)
    url = f"/admin/django_celery_beat/periodictask/{job.pk}/change/"
    op = Client()
    op.force_login(operator())
    assert b"Periodic tasks" in op.get("/admin/").content
    assert op.get("/admin/django_celery_beat/periodictask/").status_code == 200
    assert b'name="enabled"' in op.get(url).content
    look = Client()
    look.force_login(viewer())
    assert look.get("/admin/django_celery_beat/periodictask/").status_code == 200
    page = look.get(url)
    assert page.status_code == 200 and b'name="enabled"' not in page.content


def test_tasks_running_on_a_draining_unit_count_as_running_but_not_against_online_capacity(
    client_a, register_unit
) -> None:
    """One definition of a live unit (units.states.ALIVE): a draining unit still runs its tasks, so
    the dashboard and the stats API count them; only units that claim offer capacity."""
    online, draining = factories.unit("dash-online", capacity=4), factories.unit("dash-draining", capacity=6)
    factories.leased_task(online)
    factories.leased_task(draining)
    factories.unit("dash-gone", status=UnitStatus.OFFLINE, capacity=9)
    draining.status = UnitStatus.MAINTENANCE
    draining.save(update_fields=["status"])
    units = dashboard_data()["units"]
    assert (units["running"], units["capacity"], units["utilisation"]) == (2, 4, 0.25)
    client = Client()
    client.force_login(operator())
    stats = client.get("/api/v1/execution-units/stats").json()
    assert (stats["runningTasks"], stats["onlineCapacity"], stats["utilisation"]) == (2, 4, 0.25)


def test_dashboard_shows_paused_queues_first_with_their_limits(op_client: Client) -> None:
    from taskhub.base.actors import Actor
    from tests.test_queues import Operator
    from units.queues import update_queue_settings

    for task_type, changes in (("A", {"max_running": 2}), ("B", {"paused": True})):
        update_queue_settings(task_type, changes, viewer=Operator(), actor=Actor.operator("op"), owner_id=None)
    data = op_client.get("/admin/dashboard/data.json").json()
    assert data["queues"] == [
        {"taskType": "B", "paused": True, "limits": {}},
        {"taskType": "A", "paused": False, "limits": {"maxRunning": 2}},
    ]
    assert "PAUSED" in op_client.get("/admin/dashboard/").content.decode()
