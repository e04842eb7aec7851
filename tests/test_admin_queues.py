"""Queues in the console: pause/resume actions and edits through the one audited writer; the task
list's "all N matching this filter" through the bulk service."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone

from tasks.bulk_actions import CHUNK
from tasks.models import QueueChange, QueueSettings, Task
from tests import factories
from tests.console_support import messages_of, operator, viewer
from units.claim import claim

pytestmark = pytest.mark.django_db
QUEUES = "/admin/tasks/queuesettings/"


@pytest.fixture
def op_client() -> Client:
    client = Client()
    client.force_login(operator())
    return client


def test_an_operator_adds_a_limited_queue_in_the_console_and_the_change_is_audited(op_client: Client) -> None:
    response = op_client.post(
        f"{QUEUES}add/", {"task_type": "EXPORT", "max_running": "2", "per_key_concurrency": "1"}, follow=True
    )
    assert response.status_code == 200
    row = QueueSettings.objects.get(pk="EXPORT")
    assert (row.max_running, row.per_key_concurrency, row.owner_id) == (2, 1, None)
    change = QueueChange.objects.get(task_type="EXPORT")
    assert change.actor == "user:op" and change.changes["maxRunning"] == [None, 2]


def test_an_operator_sets_a_queues_retention_in_the_console_within_its_bounds(op_client: Client) -> None:
    refused = op_client.post(f"{QUEUES}add/", {"task_type": "EXPORT", "retention_seconds": "10"})
    assert refused.status_code == 200 and "retention_seconds" in refused.context["adminform"].form.errors
    assert not QueueSettings.objects.exists()
    op_client.post(f"{QUEUES}add/", {"task_type": "EXPORT", "retention_seconds": "3600"}, follow=True)
    op_client.post(
        f"{QUEUES}EXPORT/change/", {"retention_seconds": "3600", "dead_retention_seconds": "7200"}, follow=True
    )
    row = QueueSettings.objects.get(pk="EXPORT")
    assert (row.retention_seconds, row.dead_retention_seconds) == (3600, 7200)
    audit = [c.changes for c in QueueChange.objects.filter(task_type="EXPORT").order_by("id")]
    assert audit == [{"retentionSeconds": [None, 3600]}, {"deadRetentionSeconds": [None, 7200]}]


def test_pause_and_resume_actions_stop_and_restart_claims(op_client: Client) -> None:
    factories.task()
    unit = factories.unit()
    op_client.post(f"{QUEUES}add/", {"task_type": "DATA_PROCESSING"})
    response = op_client.post(
        QUEUES, {"action": "pause_queues", "_selected_action": ["DATA_PROCESSING"], "index": "0"}, follow=True
    )
    assert any("Paused 1 queue" in m for m in messages_of(response))
    assert claim(unit.pk, 5, now=timezone.now()).hold.paused  # type: ignore[union-attr]
    op_client.post(QUEUES, {"action": "resume_queues", "_selected_action": ["DATA_PROCESSING"], "index": "0"})
    assert len(claim(unit.pk, 5, now=timezone.now()).tasks) == 1
    assert QueueChange.objects.filter(task_type="DATA_PROCESSING").count() == 2


def test_a_viewer_sees_queues_but_cannot_pause_them() -> None:
    client = Client()
    client.force_login(viewer())
    QueueSettings.objects.create(task_type="X", created_at=timezone.now(), updated_at=timezone.now())
    assert client.get(QUEUES).status_code == 200
    client.post(QUEUES, {"action": "pause_queues", "_selected_action": ["X"], "index": "0"})
    assert not QueueSettings.objects.get(pk="X").paused


def test_all_matching_this_filter_acts_on_every_matching_task_in_chunks(op_client: Client) -> None:
    now = timezone.now()
    factories.tasks_in_bulk(CHUNK + 50, now=now, task_type="EXPORT")
    factories.tasks_in_bulk(5, now=now, task_type="OTHER")
    form = {"action": "cancel_tasks", "_selected_action": ["1"], "select_across": "1", "index": "0"}
    # Cancel asks first: the page counts every matching task and posts back to the filtered list.
    asked = op_client.post("/admin/tasks/task/?task_type=EXPORT", form).content.decode()
    assert f"Cancel all {CHUNK + 50} tasks matching this filter?" in asked
    assert 'action="/admin/tasks/task/?task_type=EXPORT"' in asked and 'name="select_across" value="1"' in asked
    assert Task.objects.filter(status="CANCELLED").count() == 0
    response = op_client.post("/admin/tasks/task/?task_type=EXPORT", {**form, "post": "yes"}, follow=True)
    assert any(
        f"Cancelled {CHUNK + 50} of {CHUNK + 50} matching tasks in 2 chunk(s)" in m for m in messages_of(response)
    )
    assert Task.objects.filter(task_type="EXPORT", status="CANCELLED").count() == CHUNK + 50
    assert Task.objects.filter(task_type="OTHER", status="PENDING").count() == 5
