"""Registering and removing webhooks (the API's and the console's one way in)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet

from taskhub.apikeys.models import ApiKey
from taskhub.base.errors import InvalidInput, NotFound
from taskhub.webhooks import subscriptions
from taskhub.webhooks.models import WebhookSubscription
from taskhub.webhooks.outbox import kick
from taskhub.webhooks.signing import new_secret
from taskhub.webhooks.ssrf import UnsafeURL, check_url


def visible_webhooks(owner: ApiKey | None, *, operator: bool) -> QuerySet[WebhookSubscription]:
    """An API key sees the webhooks it registered; an operator every one."""
    qs = WebhookSubscription.objects.all()
    return qs if operator else qs.filter(owner=owner)


def webhook_register(
    *,
    owner: ApiKey | None,
    url: str,
    statuses: Sequence[str],
    task_type: str = "",
    task_id: int | None = None,
    now: datetime,
) -> WebhookSubscription:
    try:
        check_url(url)
    except UnsafeURL as exc:
        raise InvalidInput("url", str(exc)) from None
    sub = WebhookSubscription.objects.create(
        owner=owner,
        url=url,
        secret=new_secret(),
        statuses=sorted(set(statuses)),
        task_type=task_type,
        task_id=task_id,
        is_active=True,
        created_at=now,
    )
    transaction.on_commit(subscriptions.invalidate)
    subscriptions.invalidate()
    return sub


def webhook_delete(pk: int, *, queryset: QuerySet[WebhookSubscription]) -> None:
    deleted, _ = queryset.filter(pk=pk).delete()
    if not deleted:
        raise NotFound(f"Webhook {pk} not found")
    transaction.on_commit(subscriptions.invalidate)
    subscriptions.invalidate()


def deliveries_queued() -> None:
    """After the console queued deliveries again: a run now, once committed."""
    transaction.on_commit(kick)
