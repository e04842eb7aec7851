"""The outbox writer: called by the history writer (tasks/history.py) in the transaction of the
change, so a delivery row exists exactly when its history row does — nothing for a rollback."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import current_app  # the hub's app (taskhub.celery), without importing upwards
from django.conf import settings
from django.db import transaction

from taskhub.base.sql import insert_rows
from taskhub.webhooks.models import DeliveryStatus, WebhookDelivery
from taskhub.webhooks.subscriptions import Subscription

logger = logging.getLogger("taskhub.webhooks")
JOB_NAME = "deliver_webhooks"  # the job of taskhub/jobs/registry.py that delivers the outbox
EVENT = "task.status"


@dataclass(frozen=True, slots=True)
class Change:
    """One committed-with-its-transaction state change, as the subscriptions match it."""

    history_id: int
    task_id: int
    owner_id: int | None
    task_type: str
    to_status: str
    body: dict[str, Any]


def record(changes: Sequence[Change], subscriptions: Sequence[Subscription], now: datetime) -> int:
    """Outbox rows for every (change, subscription that wants it); returns how many."""
    rows = [
        WebhookDelivery(
            subscription_id=sub.id,
            history_id=change.history_id,
            task_id=change.task_id,
            event=EVENT,
            payload=change.body,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            last_error="",
            created_at=now,
        )
        for change in changes
        for sub in subscriptions
        if sub.wants(
            owner_id=change.owner_id, task_type=change.task_type, task_id=change.task_id, to_status=change.to_status
        )
    ]
    if rows:
        insert_rows(WebhookDelivery, rows)
        if settings.WEBHOOK_KICK:
            transaction.on_commit(kick)
    return len(rows)


def kick(countdown: float | None = None) -> None:
    """Ask a Celery worker for a delivery run now (after the commit), or in `countdown` seconds (a
    retry's due time); beat runs one every WEBHOOK_POLL_INTERVAL anyway, so a broker that is down
    only delays deliveries."""
    try:
        current_app.send_task(f"taskhub.{JOB_NAME}", countdown=countdown)
    except Exception:
        logger.warning("could not enqueue a webhook delivery run; beat's next run delivers", exc_info=True)
