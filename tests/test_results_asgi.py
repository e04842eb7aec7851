"""Under ASGI the waiting responses are async iterators: no thread is held while they wait, and
each read runs on a connection closed right after (Django's AsyncClient goes through ASGIHandler)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from tests.conftest import JsonClient

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"


@pytest.fixture(autouse=True)
def quick(settings: Any) -> None:
    settings.EVENTS_STREAM_MAX_SECONDS = 0.5
    settings.RESULTS_POLL_INTERVAL = 0.05
    settings.EVENTS_GAP_GRACE_SECONDS = 0.0


def test_the_stream_and_the_wait_are_async_under_asgi(client_a: JsonClient) -> None:
    task = client_a.post(f"{API}/tasks", {"name": "a", "taskType": "ASGI"}).json()
    client_a.put(f"{API}/tasks/{task['id']}/status", {"status": "PAUSED", "reason": "p"})
    pending = client_a.post(f"{API}/tasks", {"name": "b", "taskType": "ASGI"}).json()
    headers = {"Authorization": f"Bearer {client_a.secret}"}  # type: ignore[attr-defined]

    async def run() -> tuple[Any, bytes, Any, bytes]:
        client = AsyncClient()
        stream = await client.get(f"{API}/events?lastEventId=0&taskType=ASGI", headers=headers)
        events = b"".join([chunk async for chunk in stream.streaming_content])  # type: ignore[attr-defined]
        held = await client.get(f"{API}/tasks/{pending['id']}?waitFor=terminal&waitSeconds=1", headers=headers)
        body = b"".join([chunk async for chunk in held.streaming_content])  # type: ignore[attr-defined]
        return stream, events, held, body

    stream, events, held, body = async_to_sync(run)()
    assert stream.is_async and held.is_async  # the async drivers, not the WSGI ones
    data = [json.loads(line[6:]) for line in events.decode().splitlines() if line.startswith("data: ")]
    assert [(e["taskId"], e["toStatus"]) for e in data] == [
        (task["id"], "PENDING"),
        (task["id"], "PAUSED"),
        (pending["id"], "PENDING"),
    ]
    assert json.loads(body)["status"] == "PENDING"
