"""GET /tasks/{id}?waitFor=terminal&waitSeconds=N: at once for a done task, after the wait for one
that is not, as GET /tasks/{id} renders and authorises it; bad input 400 naming the field."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections

from tasks.events import is_done
from tests.conftest import JsonClient

API = "/api/v1"


@pytest.fixture(autouse=True)
def quick_polls(settings: Any) -> None:
    settings.RESULTS_POLL_INTERVAL = 0.05


def body_of(response: Any) -> Any:
    assert response.status_code == 200, response.content
    if response.streaming:
        return json.loads(b"".join(response.streaming_content))
    return response.json()


@pytest.mark.django_db
def test_a_done_task_is_answered_at_once(client_a: JsonClient) -> None:
    task = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "W"}).json()
    client_a.put(f"{API}/tasks/{task['id']}/status", {"status": "CANCELLED", "reason": "x"})
    response = client_a.get(f"{API}/tasks/{task['id']}?waitFor=terminal&waitSeconds=30")
    assert not response.streaming and response.json()["status"] == "CANCELLED"


@pytest.mark.django_db
def test_a_task_not_done_is_answered_as_it_is_when_the_wait_ends(client_a: JsonClient) -> None:
    task = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "W"}).json()
    started = time.monotonic()
    response = client_a.get(f"{API}/tasks/{task['id']}?waitFor=terminal&waitSeconds=1")
    body = body_of(response)
    assert time.monotonic() - started >= 0.9  # it was held (a lower bound, not a speed assertion)
    assert body == client_a.get(f"{API}/tasks/{task['id']}").json()
    assert body_of(client_a.get(f"{API}/tasks/{task['id']}?waitFor=terminal&waitSeconds=0"))["status"] == "PENDING"
    assert not client_a.get(f"{API}/tasks/{task['id']}?waitSeconds=5").streaming  # without waitFor: at once


@pytest.mark.django_db
def test_another_keys_task_is_a_404_and_not_waited_for(client_a: JsonClient, client_b: JsonClient) -> None:
    task = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "W"}).json()
    response = client_b.get(f"{API}/tasks/{task['id']}?waitFor=terminal&waitSeconds=5")
    assert response.status_code == 404 and not response.streaming


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("waitFor=done", "waitFor"),
        ("waitFor=terminal&waitSeconds=31", "waitSeconds"),
        ("waitFor=terminal&waitSeconds=-1", "waitSeconds"),
        ("waitFor=terminal&waitSeconds=x", "waitSeconds"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client_a: JsonClient, query: str, field: str) -> None:
    task = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "W"}).json()
    response = client_a.get(f"{API}/tasks/{task['id']}?{query}")
    assert response.status_code == 400 and response.json()["message"].startswith(f"{field}:"), response.content


def test_done_means_what_the_sdk_means() -> None:
    from datetime import UTC, datetime

    assert is_done("COMPLETED", None) and is_done("CANCELLED", None) and is_done("FAILED", None)
    assert not is_done("FAILED", datetime.now(UTC)) and not is_done("PENDING", None) and not is_done("RUNNING", None)


@pytest.mark.django_db(transaction=True)
def test_a_waiter_returns_when_the_task_completes(
    leased: Callable[..., tuple[JsonClient, list[dict[str, Any]]]], client_a: JsonClient
) -> None:
    unit, [task] = leased(1)

    def complete_soon() -> None:
        time.sleep(0.5)
        try:
            assert (
                unit.post(f"{API}/tasks/{task['id']}/complete", {"attempt": task["attempt"], "result": 7}).status_code
                == 200
            )
        finally:
            connections.close_all()

    thread = threading.Thread(target=complete_soon)
    thread.start()
    started = time.monotonic()
    body = body_of(client_a.get(f"{API}/tasks/{task['id']}?waitFor=terminal&waitSeconds=20"))
    thread.join()
    assert (body["status"], body["result"]) == ("COMPLETED", 7)
    assert time.monotonic() - started < 15  # returned on the change, not at the end of the wait
