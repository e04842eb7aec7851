"""The active subscriptions, as the history writer matches them against each change.

Every state change asks "does anyone want this?": the answer comes from a per-process list, read
again after WEBHOOK_SUBSCRIPTIONS_TTL seconds (and at once in the process that changed a
subscription), so a hub with no webhooks writes history exactly as before: no extra query."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.conf import settings

from taskhub.webhooks.models import WebhookSubscription


@dataclass(frozen=True, slots=True)
class Subscription:
    id: int
    owner_id: int | None  # None: an operator's (every task)
    statuses: frozenset[str]  # empty: every change
    task_type: str
    task_id: int | None

    def wants(self, *, owner_id: int | None, task_type: str, task_id: int, to_status: str) -> bool:
        """The visibility rule of GET /tasks/{id} (an API key sees the tasks it created, an operator
        every task) and then the subscription's own filters."""
        if self.owner_id is not None and self.owner_id != owner_id:
            return False
        if self.statuses and to_status not in self.statuses:
            return False
        if self.task_type and self.task_type != task_type:
            return False
        return self.task_id is None or self.task_id == task_id


_lock = threading.Lock()
_cached: tuple[float, list[Subscription]] | None = None


def active() -> list[Subscription]:
    """The subscriptions that receive events: active, of a key not revoked."""
    global _cached
    now = time.monotonic()
    cached = _cached
    if cached is not None and now - cached[0] < settings.WEBHOOK_SUBSCRIPTIONS_TTL:
        return cached[1]
    rows = WebhookSubscription.objects.filter(is_active=True).exclude(owner__revoked_at__isnull=False)
    subs = [
        Subscription(s.pk, s.owner_id, frozenset(s.statuses or ()), s.task_type, s.task_id)
        for s in rows.only("id", "owner_id", "statuses", "task_type", "task_id")
    ]
    with _lock:
        _cached = (now, subs)
    return subs


def invalidate() -> None:
    global _cached
    with _lock:
        _cached = None
