"""GET /api/v1/events: the history rows as Server-Sent Events, resumed exactly after Last-Event-ID,
authorised as GET /tasks/{id}, with bad input refused naming the field."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tasks.events import EventCursor, EventFilter
from tasks.models import TaskStatusHistory
from tests.conftest import JsonClient

pytestmark = pytest.mark.django_db
API = "/api/v1"


@pytest.fixture(autouse=True)
def short_streams(settings: Any) -> None:
    settings.EVENTS_STREAM_MAX_SECONDS = 0.3
    settings.RESULTS_POLL_INTERVAL = 0.05
    settings.EVENTS_HEARTBEAT_SECONDS = 0.1
    # Ids rolled back by earlier tests (MariaDB does not reuse them) are gaps a stream would wait on.
    settings.EVENTS_GAP_GRACE_SECONDS = 0.0


def read_stream(response: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(events as {id, event, data}, comment lines) of a whole (ended) stream."""
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/event-stream")
    text = b"".join(response.streaming_content).decode()
    events, comments = [], []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            events.append({"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])})
    return events, comments


def make_changes(client: JsonClient, task_type: str = "EV") -> list[int]:
    """Two tasks, each created then cancelled: four history rows."""
    ids = []
    for name in ("one", "two"):
        task = client.post(f"{API}/tasks", {"name": name, "taskType": task_type}).json()
        assert client.put(f"{API}/tasks/{task['id']}/status", {"status": "CANCELLED", "reason": "r"}).status_code == 200
        ids.append(task["id"])
    return ids


def test_a_stream_resumes_exactly_after_last_event_id(client_a: JsonClient, settings: Any) -> None:
    settings.EVENTS_GAP_GRACE_SECONDS = 5.0  # the ids below are contiguous: nothing to wait for
    make_changes(client_a)
    history = list(TaskStatusHistory.objects.order_by("id").values_list("id", "task_id", "to_status"))
    assert len(history) == 4
    for start in range(4):
        after = history[start - 1][0] if start else history[0][0] - 1
        events, _ = read_stream(client_a.get(f"{API}/events", HTTP_LAST_EVENT_ID=str(after)))
        seen = [(int(e["id"]), e["data"]["taskId"], e["data"]["toStatus"]) for e in events]
        assert seen == history[start:], (after, seen)  # no gap, no duplicate, in order
        assert all(e["event"] == "task.status" and e["data"]["historyId"] == int(e["id"]) for e in events)
    # The query parameter does the same (EventSource cannot set headers on its first connection).
    events, _ = read_stream(client_a.get(f"{API}/events?lastEventId={history[1][0]}"))
    assert [int(e["id"]) for e in events] == [h[0] for h in history[2:]]


def test_a_stream_without_last_event_id_starts_after_the_newest_change(client_a: JsonClient) -> None:
    make_changes(client_a)
    events, comments = read_stream(client_a.get(f"{API}/events"))
    assert events == []
    assert any(c.startswith("events after") for c in comments) and "heartbeat" in comments


def test_events_carry_the_change_and_follow_the_filters(client_a: JsonClient) -> None:
    first, second = make_changes(client_a, "EV_A")
    [other] = make_changes(client_a, "EV_B")[:1]
    events, _ = read_stream(client_a.get(f"{API}/events?lastEventId=0&taskIds={second},{other}"))
    assert {e["data"]["taskId"] for e in events} == {second, other}
    events, _ = read_stream(client_a.get(f"{API}/events?lastEventId=0&taskType=EV_A"))
    assert {e["data"]["taskId"] for e in events} == {first, second}
    last = events[-1]["data"]
    assert (last["fromStatus"], last["toStatus"], last["taskType"], last["actorType"]) == (
        "PENDING",
        "CANCELLED",
        "EV_A",
        "api_key",
    )
    assert last["createdAt"].endswith("Z") and last["reason"] == "r"


def test_another_keys_tasks_never_appear(client_a: JsonClient, client_b: JsonClient) -> None:
    mine = make_changes(client_a)
    theirs = make_changes(client_b)
    for query in ("", f"&taskIds={theirs[0]}", "&mine=true", "&taskType=EV"):
        events, _ = read_stream(client_a.get(f"{API}/events?lastEventId=0{query}"))
        assert {e["data"]["taskId"] for e in events} <= set(mine), query
        assert all("client-b" not in json.dumps(e) for e in events)
    events, _ = read_stream(client_b.get(f"{API}/events?lastEventId=0"))
    assert {e["data"]["taskId"] for e in events} == set(theirs)


def test_a_unit_token_cannot_follow_events(
    register_unit: Callable[..., tuple[JsonClient, dict[str, Any]]],
) -> None:
    unit, _ = register_unit()
    assert unit.get(f"{API}/events").status_code == 403


@pytest.mark.parametrize(
    ("query", "header", "field"),
    [
        ("taskIds=1,x", None, "taskIds"),
        ("taskIds=", None, "taskIds"),
        ("taskIds=" + ",".join(str(i) for i in range(1, 1000)), None, "taskIds"),
        ("taskIds=1,,2", None, "taskIds"),
        ("taskIds=9999999999999999999", None, "taskIds"),
        ("taskType=a%20b", None, "taskType"),
        ("mine=maybe", None, "mine"),
        ("lastEventId=-1", None, "lastEventId"),
        ("", "abc", "Last-Event-ID"),
        ("", "99999999999999999999", "Last-Event-ID"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client_a: JsonClient, query: str, header: str | None, field: str) -> None:
    extra = {"HTTP_LAST_EVENT_ID": header} if header is not None else {}
    response = client_a.get(f"{API}/events?{query}", **extra)
    assert response.status_code == 400, response.status_code
    assert response.json()["message"].startswith(f"{field}:"), response.json()


def test_a_missing_id_holds_back_what_follows_until_the_grace_passes(settings: Any) -> None:
    """The gap rule: id 11 visible before 10 may mean 10 is still being committed."""
    settings.EVENTS_GAP_GRACE_SECONDS = 5
    now = timezone.now()
    cursor = EventCursor(viewer=None, events=EventFilter(), after=9)  # type: ignore[arg-type]
    fresh, old = now - timedelta(seconds=1), now - timedelta(seconds=6)
    assert cursor.settled_upto([(10, fresh), (11, fresh)], now) == 11  # no gap
    assert cursor.settled_upto([(11, fresh), (12, fresh)], now) == 9  # 10 missing, 11 fresh: wait
    assert cursor.settled_upto([(11, old), (13, fresh)], now) == 11  # 10 given up; 12 still awaited
    assert cursor.settled_upto([], now) == 9
