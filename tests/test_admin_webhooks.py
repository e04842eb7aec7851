"""Webhooks in the console: deliveries with their attempts, "send again", adding an operator's
webhook (URL checked, secret shown once), and viewers who may look but not act."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from taskhub.webhooks import subscriptions
from taskhub.webhooks.delivery import deliver_due_webhooks
from taskhub.webhooks.models import WebhookDelivery, WebhookSubscription
from tests import factories
from tests.console_support import messages_of, operator, viewer
from tests.webhook_receiver import receiver

pytestmark = pytest.mark.django_db
DELIVERIES = "/admin/webhooks/webhookdelivery/"
SUBSCRIPTIONS = "/admin/webhooks/webhooksubscription/"


@pytest.fixture(autouse=True)
def webhook_settings(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_BACKOFF_BASE = 0.0
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    settings.WEBHOOK_KICK = False
    settings.WEBHOOK_SUBSCRIPTIONS_TTL = 0.0
    subscriptions.invalidate()


def test_an_operator_adds_a_webhook_sees_a_dead_delivery_and_sends_it_again(settings: Any) -> None:
    client = Client()
    client.force_login(operator())
    healthy = [False]
    with receiver(lambda n: 200 if healthy[0] else 500) as hub_receiver:
        added = client.post(
            f"{SUBSCRIPTIONS}add/", {"url": hub_receiver.url, "statuses": ["PENDING"], "is_active": "on"}, follow=True
        )
        assert any("shown once" in m for m in messages_of(added)), messages_of(added)
        sub = WebhookSubscription.objects.get()
        assert sub.owner is None and sub.secret.startswith("whsec_") and sub.statuses == ["PENDING"]
        factories.task(name="hooked")  # an operator's webhook receives every task's changes
        deliver_due_webhooks(timezone.now())
        delivery = WebhookDelivery.objects.get()
        assert delivery.status == "DEAD"
        page = client.get(f"{DELIVERIES}{delivery.pk}/change/").content.decode()
        assert "HTTP 500" in page and page.count("500") >= 2  # both attempts, inline
        listing = client.get(f"{DELIVERIES}?status=DEAD").content.decode()
        assert "th-delivery-dead" in listing
        healthy[0] = True
        done = client.post(
            DELIVERIES, {"action": "send_again_action", "_selected_action": [delivery.pk], "index": "0"}, follow=True
        )
        assert any("Queued again 1 delivery" in m for m in messages_of(done)), messages_of(done)
        deliver_due_webhooks(timezone.now())
    assert WebhookDelivery.objects.get().status == "DELIVERED"
    assert len(hub_receiver.requests) == 3


def test_a_private_url_is_refused_in_the_console(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    client = Client()
    client.force_login(operator())
    page = client.post(f"{SUBSCRIPTIONS}add/", {"url": "http://127.0.0.1/x", "is_active": "on"})
    assert page.status_code == 200 and "non-public address" in page.content.decode()
    assert not WebhookSubscription.objects.exists()


def test_a_viewer_cannot_send_again() -> None:
    client = Client()
    client.force_login(viewer())
    assert client.get(DELIVERIES).status_code == 200
    assert "send_again_action" not in client.get(DELIVERIES).content.decode()
    assert client.get(f"{SUBSCRIPTIONS}add/").status_code == 403
