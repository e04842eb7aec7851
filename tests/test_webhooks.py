"""Webhooks: registered with SSRF checks, written to the outbox in the transaction of the change
(nothing for a rollback), delivered signed, retried with backoff until a 2xx, dead after
WEBHOOK_MAX_ATTEMPTS, sent again on demand, and only for tasks the subscriber may read."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from taskhub.base.actors import Actor
from taskhub.webhooks import subscriptions
from taskhub.webhooks.delivery import deliver_due_webhooks, send_again
from taskhub.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookSubscription
from taskhub.webhooks.signing import SIGNATURE_HEADER, verify
from tasks.models import TaskStatusHistory
from tasks.transitions import verbs
from tests.conftest import JsonClient
from tests.webhook_receiver import receiver

pytestmark = pytest.mark.django_db
API = "/api/v1"


@pytest.fixture(autouse=True)
def webhook_settings(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1
    settings.WEBHOOK_BACKOFF_BASE = 0.0  # a failed attempt is due again at once: one run retries it
    settings.WEBHOOK_KICK = False
    settings.WEBHOOK_SUBSCRIPTIONS_TTL = 0.0
    subscriptions.invalidate()


def register(client: JsonClient, url: str, **extra: Any) -> dict[str, Any]:
    response = client.post(f"{API}/webhooks", {"url": url, **extra})
    assert response.status_code == 201, response.content
    return dict(response.json())


def new_task(client: JsonClient, task_type: str = "HOOK") -> int:
    return int(client.post(f"{API}/tasks", {"name": "t", "taskType": task_type}).json()["id"])


def cancel(client: JsonClient, task_id: int) -> None:
    assert client.put(f"{API}/tasks/{task_id}/status", {"status": "CANCELLED", "reason": "r"}).status_code == 200


def test_a_delivery_is_signed_and_carries_the_change(client_a: JsonClient) -> None:
    with receiver() as hub_receiver:
        hook = register(client_a, hub_receiver.url, events=["CANCELLED"])
        assert (
            hook["secret"].startswith("whsec_") and "secret" not in client_a.get(f"{API}/webhooks/{hook['id']}").json()
        )
        task_id = new_task(client_a)  # PENDING: not subscribed
        cancel(client_a, task_id)
        assert deliver_due_webhooks(timezone.now()) == {"delivered": 1, "retrying": 0, "dead": 0}
    [got] = hub_receiver.requests
    row = TaskStatusHistory.objects.get(task_id=task_id, to_status="CANCELLED")
    body = json.loads(got.body)
    assert (body["historyId"], body["taskId"], body["fromStatus"], body["toStatus"]) == (
        row.pk,
        task_id,
        "PENDING",
        "CANCELLED",
    )
    assert got.headers["Taskhub-Event-Id"] == str(row.pk) and got.headers["Taskhub-Event"] == "task.status"
    assert verify(hook["secret"], got.headers[SIGNATURE_HEADER], got.body, now=int(time.time()))
    assert not verify(hook["secret"], got.headers[SIGNATURE_HEADER], got.body + b" ", now=int(time.time()))
    assert not verify("whsec_other", got.headers[SIGNATURE_HEADER], got.body, now=int(time.time()))
    deliveries = client_a.get(f"{API}/webhooks/{hook['id']}/deliveries").json()["items"]
    assert [(d["eventId"], d["status"], d["attempts"]) for d in deliveries] == [(row.pk, "DELIVERED", 1)]


def test_a_rolled_back_change_writes_no_outbox_row_and_sends_nothing(client_a: JsonClient) -> None:
    with receiver() as hub_receiver:
        register(client_a, hub_receiver.url)
        task_id = new_task(client_a)
        before = WebhookDelivery.objects.count()
        with pytest.raises(RuntimeError), transaction.atomic():
            verbs.change_status(task_id, "CANCELLED", actor=Actor.operator("op"), reason="undone")
            assert WebhookDelivery.objects.count() == before + 1  # written with the change ...
            raise RuntimeError("roll back")
        assert WebhookDelivery.objects.count() == before  # ... and gone with it
        assert not TaskStatusHistory.objects.filter(task_id=task_id, to_status="CANCELLED").exists()
        deliver_due_webhooks(timezone.now())
    assert [json.loads(r.body)["toStatus"] for r in hub_receiver.requests] == ["PENDING"]


def test_a_failing_receiver_is_retried_until_it_answers_2xx(client_a: JsonClient) -> None:
    with receiver(lambda n: 500 if n < 2 else 204) as hub_receiver:
        register(client_a, hub_receiver.url, events=["PENDING"])
        new_task(client_a)
        assert deliver_due_webhooks(timezone.now())["delivered"] == 1
    assert [r.status for r in hub_receiver.requests] == [500, 500, 204]
    assert len({r.headers["Taskhub-Event-Id"] for r in hub_receiver.requests}) == 1
    assert [r.headers["Taskhub-Attempt"] for r in hub_receiver.requests] == ["1", "2", "3"]
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 3
    assert list(WebhookAttempt.objects.order_by("id").values_list("status_code", "ok")) == [
        (500, False),
        (500, False),
        (204, True),
    ]
    assert deliver_due_webhooks(timezone.now())["delivered"] == 0  # never sent again after its success


def test_backoff_spaces_the_retries(client_a: JsonClient, settings: Any) -> None:
    settings.WEBHOOK_BACKOFF_BASE = 60.0
    with receiver(lambda n: 503) as hub_receiver:
        register(client_a, hub_receiver.url)
        new_task(client_a)
        now = timezone.now()
        assert deliver_due_webhooks(now) == {"delivered": 0, "retrying": 1, "dead": 0}
        delivery = WebhookDelivery.objects.get()
        assert 30 <= (delivery.next_attempt_at - now).total_seconds() <= 61  # [base/2, base] for the first retry
        assert deliver_due_webhooks(timezone.now())["retrying"] == 0  # not due yet
    assert len(hub_receiver.requests) == 1


def test_a_delivery_that_keeps_failing_ends_dead_and_can_be_sent_again(client_a: JsonClient, settings: Any) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    healthy = [False]
    with receiver(lambda n: 200 if healthy[0] else 500) as hub_receiver:
        register(client_a, hub_receiver.url)
        new_task(client_a)
        assert deliver_due_webhooks(timezone.now()) == {"delivered": 0, "retrying": 2, "dead": 1}
        delivery = WebhookDelivery.objects.get()
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("DEAD", 3, 500)
        assert deliver_due_webhooks(timezone.now()) == {"delivered": 0, "retrying": 0, "dead": 0}
        healthy[0] = True
        assert send_again([delivery.pk], timezone.now()) == 1
        assert deliver_due_webhooks(timezone.now())["delivered"] == 1
    assert len(hub_receiver.requests) == 4
    assert WebhookDelivery.objects.get().status == "DELIVERED"


def test_deliveries_of_one_task_go_in_order(client_a: JsonClient) -> None:
    with receiver(lambda n: 500 if n == 0 else 200) as hub_receiver:
        register(client_a, hub_receiver.url)
        task_id = new_task(client_a)
        cancel(client_a, task_id)
        deliver_due_webhooks(timezone.now())
    statuses = [(json.loads(r.body)["toStatus"], r.status) for r in hub_receiver.requests]
    assert statuses == [("PENDING", 500), ("PENDING", 200), ("CANCELLED", 200)]


def test_a_subscriber_receives_only_changes_of_tasks_it_may_read(client_a: JsonClient, client_b: JsonClient) -> None:
    with receiver() as hub_receiver:
        register(client_b, hub_receiver.url)
        register(client_b, hub_receiver.url, taskType="HOOK")
        cancel(client_a, new_task(client_a))
        theirs = new_task(client_b, "OTHER")
        deliver_due_webhooks(timezone.now())
    assert [json.loads(r.body)["taskId"] for r in hub_receiver.requests] == [theirs]
    # A task of another key cannot be subscribed to by id: it does not exist for B.
    refused = client_b.post(f"{API}/webhooks", {"url": hub_receiver.url, "taskId": new_task(client_a)})
    assert refused.status_code == 404


def test_webhooks_of_another_key_are_not_found(client_a: JsonClient, client_b: JsonClient) -> None:
    with receiver() as hub_receiver:
        hook = register(client_a, hub_receiver.url)
    assert client_b.get(f"{API}/webhooks/{hook['id']}").status_code == 404
    assert client_b.delete(f"{API}/webhooks/{hook['id']}").status_code == 404
    assert client_b.get(f"{API}/webhooks").json()["items"] == []
    assert client_a.delete(f"{API}/webhooks/{hook['id']}").status_code == 204
    assert not WebhookSubscription.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_loopback_and_private_addresses_are_refused(client_a: JsonClient, settings: Any, url: str) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    response = client_a.post(f"{API}/webhooks", {"url": url})
    assert response.status_code == 400 and response.json()["message"].startswith("url:"), response.content
    assert not WebhookSubscription.objects.exists()


def test_a_url_that_became_private_is_refused_at_delivery(client_a: JsonClient, settings: Any) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    with receiver() as hub_receiver:
        register(client_a, hub_receiver.url)
        settings.WEBHOOK_ALLOW_PRIVATE = False
        new_task(client_a)
        assert deliver_due_webhooks(timezone.now())["dead"] == 1
    assert hub_receiver.requests == []
    assert WebhookDelivery.objects.get().last_error.startswith("refused:")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({}, "url"),
        ({"url": "https://example.com/x", "events": ["DONE"]}, "events[0]"),
        ({"url": "https://example.com/x", "events": "PENDING"}, "events"),
        ({"url": "https://example.com/x", "taskType": "a b"}, "taskType"),
        ({"url": "https://example.com/x", "taskId": "1"}, "taskId"),
        ({"url": "https://user:pw@example.com/x"}, "url"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client_a: JsonClient, body: dict[str, Any], field: str) -> None:
    response = client_a.post(f"{API}/webhooks", body)
    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith(f"{field}:"), response.json()
    assert not WebhookSubscription.objects.exists()


def test_with_no_subscription_a_change_costs_no_extra_query(client_a: JsonClient, settings: Any) -> None:
    settings.WEBHOOK_SUBSCRIPTIONS_TTL = 3600.0
    task_id = new_task(client_a)
    subscriptions.active()  # the (empty) list is read once per TTL; here it is cached
    with CaptureQueriesContext(connection) as captured:
        verbs.change_status(task_id, "CANCELLED", actor=Actor.operator("op"), reason="r")
    assert captured.captured_queries and not any("webhook" in q["sql"] for q in captured.captured_queries)
    assert not any("RETURNING" in q["sql"] for q in captured.captured_queries)
