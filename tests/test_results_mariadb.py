"""Results that come to the client, proven on MariaDB (+ Redis) with real concurrency and real
processes: an event stream never skips a change committed after a later one, never announces a
rolled-back change, and resumes exactly after Last-Event-ID; a webhook is never sent for a
rolled-back change and is retried until its receiver answers 2xx, by the hub's own Celery worker."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connections, transaction
from django.utils import timezone

from taskhub.base.actors import Actor
from tasks.events import EventCursor, EventFilter, last_event_id
from tasks.transitions import verbs
from testkit.hub import PYTHON, ROOT, Hub, running_hub
from testkit.waiting import wait_for
from tests import factories
from tests.webhook_receiver import receiver

pytestmark = [pytest.mark.mariadb, pytest.mark.django_db(transaction=True)]


class Operator:
    is_operator = True
    unit_id = None
    api_key_id = None


def test_a_change_committed_after_a_later_one_is_not_skipped(settings: Any) -> None:
    """Id 10 handed out before id 11, committed after it: the stream holds 11 back until 10 is in."""
    settings.EVENTS_GAP_GRACE_SECONDS = 30
    first, second = factories.task(name="slow"), factories.task(name="quick")
    cursor = EventCursor(Operator(), EventFilter(task_ids=frozenset({first.pk, second.pk})), last_event_id())
    inserted, release, done = threading.Event(), threading.Event(), threading.Event()

    def slow_transaction() -> None:
        try:
            with transaction.atomic():
                verbs.change_status(first.pk, "CANCELLED", actor=Actor.operator("slow"), reason="slow")
                inserted.set()
                assert release.wait(30)
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=slow_transaction)
    thread.start()
    assert inserted.wait(30)
    verbs.change_status(second.pk, "CANCELLED", actor=Actor.operator("quick"), reason="quick")  # a later id, committed
    assert cursor.poll(timezone.now()) == []  # the earlier id may still commit: nothing yet
    release.set()
    assert done.wait(30)
    thread.join()
    events = cursor.poll(timezone.now())
    assert [(e["taskId"], e["toStatus"]) for e in events] == [(first.pk, "CANCELLED"), (second.pk, "CANCELLED")]
    assert events[0]["historyId"] < events[1]["historyId"]
    assert cursor.poll(timezone.now()) == []  # and never again


def test_a_rolled_back_change_is_skipped_after_the_grace(settings: Any) -> None:
    settings.EVENTS_GAP_GRACE_SECONDS = 0.5
    first, second = factories.task(name="undone"), factories.task(name="kept")
    cursor = EventCursor(Operator(), EventFilter(), last_event_id())
    with pytest.raises(RuntimeError), transaction.atomic():
        verbs.change_status(first.pk, "CANCELLED", actor=Actor.operator("op"), reason="undone")
        raise RuntimeError("roll back")  # its history id is used up: a gap for ever
    verbs.change_status(second.pk, "CANCELLED", actor=Actor.operator("op"), reason="kept")
    events = wait_for(lambda: cursor.poll(timezone.now()), 10, "the stream to give the lost id up")
    assert [(e["taskId"], e["reason"]) for e in events] == [(second.pk, "kept")]


# --- a real hub: runhub (gunicorn + Celery worker + beat) on MariaDB + Redis -------------------


WEBHOOKS_QUICKLY = {
    "DEBUG": "false",
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_BACKOFF_BASE": "0.2",
    "WEBHOOK_BACKOFF_MAX": "1",
    "WEBHOOK_SUBSCRIPTIONS_TTL": "0.5",
    "EVENTS_GAP_GRACE_SECONDS": "1",
}


@pytest.fixture
def real_hub(tmp_path: Path) -> Iterator[Hub]:
    if not django_settings.REDIS_URL:
        pytest.fail("this test needs Redis (REDIS_HOST) beside MariaDB")
    with running_hub(tmp_path, "mariadb", **WEBHOOKS_QUICKLY) as hub:
        yield hub


ROLLED_BACK = """
from django.db import transaction
from taskhub.base.actors import Actor
from taskhub.webhooks.models import WebhookDelivery
from tasks.transitions import verbs
before = WebhookDelivery.objects.count()
try:
    with transaction.atomic():
        verbs.change_status(TASK_ID, "CANCELLED", actor=Actor.operator("rollback"), reason="rolled back")
        assert WebhookDelivery.objects.count() > before  # the outbox row is there, inside
        raise RuntimeError("roll back")
except RuntimeError:
    pass
print("rolled back")
"""


def _events(base: str, key: str, after: int, task_id: int, until: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{base}/events?taskIds={task_id}")
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Last-Event-ID", str(after))
    seen: list[dict[str, Any]] = []
    with urllib.request.urlopen(request, timeout=30) as stream:
        for line in stream:
            if line.startswith(b"data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["toStatus"] == until:
                    return seen
    return seen


def test_a_real_hub_delivers_committed_changes_only_and_retries_until_2xx(real_hub: Hub) -> None:
    with receiver(lambda n: 500 if n < 2 else 200) as hub_receiver:
        hook = real_hub.api("POST", "/webhooks", {"url": hub_receiver.url, "events": ["PENDING", "CANCELLED"]})
        task_type = f"RESULTS_{os.getpid()}"
        task = real_hub.api("POST", "/tasks", {"name": "hooked", "taskType": task_type})
        # Another process changes the task and rolls back: its outbox row must never be delivered.
        done = subprocess.run(
            [PYTHON, "manage.py", "shell", "-c", ROLLED_BACK.replace("TASK_ID", str(task["id"]))],
            cwd=ROOT,
            env=real_hub.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "rolled back" in done.stdout, done.stderr
        real_hub.api("PUT", f"/tasks/{task['id']}/status", {"status": "CANCELLED", "reason": "for real"})

        def delivered() -> list[dict[str, Any]]:
            return [json.loads(r.body) for r in hub_receiver.requests if r.status == 200]

        wait_for(lambda: len(delivered()) >= 2, 60, "both committed changes delivered by the hub's worker")
        history = real_hub.api("GET", f"/tasks/{task['id']}/history")["items"]
        assert [h["reason"] for h in history][-1] == "for real" and "rolled back" not in [h["reason"] for h in history]
        ok = delivered()
        assert [(e["historyId"], e["toStatus"]) for e in ok] == [(h["id"], h["toStatus"]) for h in history]
        assert all(e["reason"] != "rolled back" for e in (json.loads(r.body) for r in hub_receiver.requests))
        assert [r.status for r in hub_receiver.requests][:3] == [500, 500, 200]  # retried until 2xx
        deliveries = real_hub.api("GET", f"/webhooks/{hook['id']}/deliveries")["items"]
        assert sorted(d["status"] for d in deliveries) == ["DELIVERED", "DELIVERED"]

        # The hub's event stream, resumed after the PENDING event: the CANCELLED one, once; the
        # rolled-back change's id (a gap) is skipped, not waited on for ever, nor announced.
        events = _events(real_hub.base, real_hub.key, history[0]["id"], task["id"], "CANCELLED")
        assert [(e["historyId"], e["reason"]) for e in events] == [(history[1]["id"], "for real")]
