"""POST /tasks/bulk: a list filter, an action, chunks, counts per outcome; only the caller's tasks."""

from __future__ import annotations

import pytest
from django.utils import timezone

from tasks.bulk_actions import CHUNK
from tasks.models import Task, TaskStatusHistory
from tests import factories
from tests.conftest import JsonClient

pytestmark = pytest.mark.django_db


def _mine(client, n: int, **extra):  # type: ignore[no-untyped-def]
    body = {"tasks": [{"name": f"t{i}", "taskType": "EXPORT", **extra} for i in range(n)]}
    response = client.post("/api/v1/tasks/batch", body)
    assert response.status_code == 201, response.content
    return [item["id"] for item in response.json()["items"]]


def test_bulk_cancel_by_filter_counts_outcomes_and_leaves_other_owners_alone(client_a, client_b):
    mine = _mine(client_a, 5)
    theirs = _mine(client_b, 3)
    factories.task(task_type="OTHER", owner=None)
    client_a.put(f"/api/v1/tasks/{mine[0]}/status", {"status": "CANCELLED"})
    reply = client_a.post("/api/v1/tasks/bulk", {"filter": {"taskType": "EXPORT"}, "action": "cancel"})
    assert reply.status_code == 200, reply.content
    body = reply.json()
    assert body == {
        "action": "cancel",
        "matched": 5,
        "changed": 4,
        "skipped": {"wrongStatus": 1},
        "chunks": 1,
        "truncated": False,
    }
    assert set(Task.objects.filter(pk__in=theirs).values_list("status", flat=True)) == {"PENDING"}
    assert TaskStatusHistory.objects.filter(task_id__in=mine, to_status="CANCELLED").count() == 5


def test_bulk_pause_resume_retry_and_reprioritize_by_status_filter(client_a):
    ids = _mine(client_a, 4)
    assert (
        client_a.post("/api/v1/tasks/bulk", {"filter": {"status": "PENDING"}, "action": "pause"}).json()["changed"] == 4
    )
    assert set(Task.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"PAUSED"}
    reply = client_a.post("/api/v1/tasks/bulk", {"filter": {}, "action": "reprioritize", "priority": 7}).json()
    assert reply["changed"] == 4 and set(Task.objects.filter(pk__in=ids).values_list("priority", flat=True)) == {7}
    again = client_a.post("/api/v1/tasks/bulk", {"filter": {}, "action": "reprioritize", "priority": 7}).json()
    assert again["changed"] == 0 and again["skipped"] == {"unchanged": 4}
    assert (
        client_a.post("/api/v1/tasks/bulk", {"filter": {"status": "PAUSED"}, "action": "resume"}).json()["changed"] == 4
    )
    retry = client_a.post("/api/v1/tasks/bulk", {"filter": {}, "action": "retry"}).json()
    assert retry["changed"] == 0 and retry["skipped"] == {"wrongStatus": 4}


def test_bulk_works_in_chunks_and_says_when_the_limit_cut_it():
    key, secret = factories.api_key("bulk-owner")
    factories.tasks_in_bulk(CHUNK + 20, now=timezone.now(), owner=key, task_type="EXPORT")
    owner = JsonClient(secret)
    body = {"filter": {"taskType": "EXPORT"}, "action": "cancel", "limit": CHUNK + 10}
    reply = owner.post("/api/v1/tasks/bulk", body).json()
    assert (reply["matched"], reply["changed"], reply["chunks"], reply["truncated"]) == (
        CHUNK + 10,
        CHUNK + 10,
        2,
        True,
    )
    assert Task.objects.filter(owner=key, status="PENDING").count() == 10


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"filter": {}, "action": "explode"}, "action"),
        ({"action": "cancel"}, "filter"),
        ({"filter": {"colour": "red"}, "action": "cancel"}, "colour"),
        ({"filter": {"status": "SLEEPING"}, "action": "cancel"}, "status"),
        ({"filter": {}, "action": "reprioritize"}, "priority"),
        ({"filter": {}, "action": "cancel", "priority": 3}, "priority"),
        ({"filter": {}, "action": "cancel", "limit": 0}, "limit"),
    ],
)
def test_bad_bulk_requests_are_a_400_naming_the_field_and_change_nothing(client_a, body, field):
    ids = _mine(client_a, 2)
    reply = client_a.post("/api/v1/tasks/bulk", body)
    assert reply.status_code == 400, reply.content
    assert field in reply.content.decode()
    assert set(Task.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"PENDING"}


def test_bulk_needs_the_write_scope(make_client):
    reader = make_client("reader", scopes=("tasks:read",))
    assert reader.post("/api/v1/tasks/bulk", {"filter": {}, "action": "cancel"}).status_code == 403
