"""Delivering the outbox: claim due rows, POST each (signed) outside any transaction, record the
attempt; a failure is retried with the hub's backoff formula (taskhub/base/backoff.py, base
WEBHOOK_BACKOFF_BASE, cap WEBHOOK_BACKOFF_MAX) until WEBHOOK_MAX_ATTEMPTS, then DEAD.

`deliver_due_webhooks(now)` is the job (taskhub/jobs/registry.py): run by Celery when a commit wrote
outbox rows, and by beat every WEBHOOK_POLL_INTERVAL. Safe when two run at once: a claim moves the
rows' `next_attempt_at` past the attempt's lease under a row lock (SKIP LOCKED on MariaDB), and the
result is written only if the row is still at the attempt that was claimed. Deliveries of one
subscription and task go in order: one waits while an older one is pending.

At least once: a worker killed between the POST and the record sends again after the lease, so
receivers dedupe on `Taskhub-Event-Id` (the history id) — but within one recorded success nothing
is sent twice.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from taskhub.base import metrics
from taskhub.base.backoff import equal_jitter
from taskhub.base.sql import insert_rows
from taskhub.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookSubscription
from taskhub.webhooks.outbox import kick
from taskhub.webhooks.signing import SIGNATURE_HEADER, signature
from taskhub.webhooks.ssrf import UnsafeURL, check_url

logger = logging.getLogger("taskhub.webhooks")
P = DeliveryStatus
RUN_BUDGET_SECONDS = 20.0  # one run delivers batches until the outbox has nothing due or this passes
USER_AGENT = "taskhub-webhooks/1"


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    number: int  # this attempt's number since the row was (re)queued
    url: str
    secret: str
    history_id: int
    event: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Outcome:
    claimed: Claimed
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _lease() -> timedelta:
    return timedelta(seconds=settings.WEBHOOK_TIMEOUT * 2 + 30)


def claim_due(now: datetime, limit: int) -> list[Claimed]:
    older_pending = WebhookDelivery.objects.filter(
        subscription_id=OuterRef("subscription_id"),
        task_id=OuterRef("task_id"),
        status=P.PENDING,
        id__lt=OuterRef("id"),
    )
    with transaction.atomic():
        # No join under the lock: SKIP LOCKED would skip the deliveries of a subscription whose row
        # another run holds. The subscriptions are read after, unlocked.
        rows = list(
            WebhookDelivery.objects.filter(status=P.PENDING, next_attempt_at__lte=now)
            .exclude(Exists(older_pending))
            .order_by("next_attempt_at", "id")
            .select_for_update(skip_locked=True)
            .only("id", "subscription_id", "history_id", "event", "payload", "attempts")[:limit]
        )
        if not rows:
            return []
        WebhookDelivery.objects.filter(pk__in=[r.pk for r in rows]).update(
            next_attempt_at=now + _lease(), attempts=F("attempts") + 1
        )
    subs = WebhookSubscription.objects.in_bulk({r.subscription_id for r in rows})
    return [
        Claimed(
            r.pk,
            r.attempts + 1,
            subs[r.subscription_id].url,
            subs[r.subscription_id].secret,
            r.history_id,
            r.event,
            r.payload,
        )
        for r in rows
        if r.subscription_id in subs
    ]


def _target(url: str) -> tuple[str, dict[str, str]]:
    """Where to connect: for http the checked address itself (no second lookup a re-pointed name
    could answer differently), with the Host header of the URL; https goes by name (the
    certificate is checked against it)."""
    addresses = check_url(url)
    parts = urlsplit(url)
    if parts.scheme != "http":
        return url, {}
    address = addresses[0]
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc)), {"Host": parts.netloc.rsplit("@", 1)[-1]}


def send(claimed: Claimed, session: requests.Session) -> Outcome:
    started_at = timezone.now()
    clock = time.perf_counter()
    body = json.dumps(claimed.payload, separators=(",", ":"), sort_keys=True).encode()
    status_code: int | None = None
    error = ""
    try:
        url, extra = _target(claimed.url)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature(claimed.secret, int(time.time()), body),
            "Taskhub-Event": claimed.event,
            "Taskhub-Event-Id": str(claimed.history_id),
            "Taskhub-Delivery": str(claimed.id),
            "Taskhub-Attempt": str(claimed.number),
            **extra,
        }
        response = session.post(
            url, data=body, headers=headers, timeout=settings.WEBHOOK_TIMEOUT, allow_redirects=False, stream=True
        )
        status_code = response.status_code
        response.close()  # the body is not read: a receiver cannot make the hub download anything
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except UnsafeURL as exc:
        error = f"refused: {exc}"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
    return Outcome(claimed, started_at, (time.perf_counter() - clock) * 1000, status_code, error)


def record(outcomes: list[Outcome], now: datetime) -> tuple[dict[str, int], list[float]]:
    """Each attempt's row and its delivery's new state; returns the counts and the delays of the
    retries it scheduled. Successes and deaths are one UPDATE per attempt
    number; a retry is one per row (its own jittered time)."""
    counts = {"delivered": 0, "retrying": 0, "dead": 0}
    delays: list[float] = []
    with transaction.atomic():
        insert_rows(
            WebhookAttempt,
            [
                WebhookAttempt(
                    delivery_id=o.claimed.id,
                    number=o.claimed.number,
                    started_at=o.started_at,
                    duration_ms=round(o.duration_ms, 3),
                    status_code=o.status_code,
                    ok=o.ok,
                    error=o.error,
                )
                for o in outcomes
            ],
        )
        # Compare-and-set on the attempt claimed: a run whose lease ran out writes nothing.
        delivered: dict[tuple[int, int | None], list[int]] = {}
        for o in outcomes:
            mine = WebhookDelivery.objects.filter(pk=o.claimed.id, status=P.PENDING, attempts=o.claimed.number)
            common: dict[str, Any] = {"last_status_code": o.status_code, "last_error": o.error}
            if o.ok:
                delivered.setdefault((o.claimed.number, o.status_code), []).append(o.claimed.id)
            elif o.claimed.number >= settings.WEBHOOK_MAX_ATTEMPTS:
                counts["dead"] += mine.update(status=P.DEAD, **common)
            else:
                delay = equal_jitter(
                    o.claimed.number, base=settings.WEBHOOK_BACKOFF_BASE, cap=settings.WEBHOOK_BACKOFF_MAX
                )
                if mine.update(next_attempt_at=now + timedelta(seconds=delay), **common):
                    counts["retrying"] += 1
                    delays.append(delay)
        for (number, code), ids in delivered.items():
            counts["delivered"] += WebhookDelivery.objects.filter(pk__in=ids, status=P.PENDING, attempts=number).update(
                status=P.DELIVERED, delivered_at=now, last_status_code=code, last_error=""
            )
        metrics.record_webhook_outcomes(counts)
    return counts, delays


def deliver_due_webhooks(now: datetime) -> dict[str, int]:
    """Deliver what is due, batch after batch, until nothing is or RUN_BUDGET_SECONDS pass."""
    totals = {"delivered": 0, "retrying": 0, "dead": 0}
    started = time.monotonic()
    with requests.Session() as session, ThreadPoolExecutor(settings.WEBHOOK_CONCURRENCY) as pool:
        session.trust_env = False  # no proxy from the environment between the hub and its receivers
        while True:
            batch = claim_due(now, settings.WEBHOOK_BATCH)
            if not batch:
                break
            outcomes = list(pool.map(lambda c: send(c, session), batch))
            now = timezone.now()
            counts, delays = record(outcomes, now)
            for name, n in counts.items():
                totals[name] += n
            if delays and settings.WEBHOOK_KICK:
                # Runs when the first and the last of these retries are due (jitter spreads them over
                # at most a factor of two), rather than at beat's next run.
                for delay in sorted({min(delays), max(delays)}):
                    kick(countdown=delay)
            if time.monotonic() - started > RUN_BUDGET_SECONDS:
                break
    return totals


def send_again(ids: list[int], now: datetime) -> int:
    """Queue deliveries again (the console's "send again"): due now, with a fresh attempt count."""
    return WebhookDelivery.objects.filter(pk__in=ids).update(
        status=P.PENDING, attempts=0, next_attempt_at=now, delivered_at=None
    )
