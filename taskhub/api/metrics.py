"""`/metrics` (Prometheus text): the event metrics of `taskhub.base.metrics`, and the state gauges
(tasks and units by status) read from the database at scrape time by a custom collector, through
the same status-count selectors as the stats API and the dashboard, so they are right whichever
worker answers. Also the middleware that counts and times every request.

Access: with `METRICS_TOKEN` set, a scrape must send `Authorization: Bearer <token>`; without it
the endpoint is open, except with APP_ENV=production, where it is off (403) until a token is set.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from taskhub.api.errors import json_error
from taskhub.api.middleware import BothModes
from taskhub.base import metrics
from taskhub.jobs.rollups import last_rollup_minute
from taskhub.webhooks.models import DeliveryStatus, WebhookDelivery
from tasks.selectors import oldest_due_by_type, status_counts, status_counts_and_split, status_counts_by_type
from units.queues import queue_settings_summary
from units.selectors import orphaned_running, unit_status_counts, unserved_types

logger = logging.getLogger("taskhub.metrics")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def delivery_counts() -> dict[str, int]:
    """Webhook deliveries by status, every status present: one grouped query (webhook_due_idx)."""
    counts = dict.fromkeys(DeliveryStatus.values, 0)
    for row in WebhookDelivery.objects.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


class DatabaseCollector:
    """Tasks and units by status, one grouped query each, every scrape; then the gauges operators
    alert on (tasks by type and status, the dead set, the oldest due task's age by type, orphaned
    RUNNING tasks, types with work and no unit to claim it, webhook deliveries by status, the newest
    rollup as proof of beat)."""

    def collect(self) -> Iterator[Metric]:
        yield from self._by_status()
        yield from self._alerting()

    def _alerting(self) -> Iterator[Metric]:
        now = timezone.now()
        try:
            by_type = status_counts_by_type()
            _, split = status_counts_and_split()
            oldest = oldest_due_by_type(now)
            orphaned = orphaned_running().count()
            unserved = unserved_types(limit=1000)
            last_rollup = last_rollup_minute()
            deliveries = delivery_counts()
        except DatabaseError:
            logger.exception("metrics: could not read the alerting gauges")
            return
        typed = GaugeMetricFamily(
            "taskhub_tasks_by_type", "Tasks by type and status (read from the database)", labels=["task_type", "status"]
        )
        for task_type, counts in sorted(by_type.items()):
            for status, n in sorted(counts.items()):
                typed.add_metric([task_type, status], n)
        yield typed
        yield GaugeMetricFamily("taskhub_tasks_dead", "FAILED tasks with no automatic retry left", value=split["dead"])
        yield GaugeMetricFamily(
            "taskhub_tasks_waiting_retry", "FAILED tasks with an automatic retry due", value=split["waitingRetry"]
        )
        age = GaugeMetricFamily(
            "taskhub_task_oldest_due_age_seconds",
            "Age of the oldest due PENDING task (now - available_at), by type",
            labels=["task_type"],
        )
        for task_type, since in sorted(oldest.items()):
            age.add_metric([task_type], max((now - since).total_seconds(), 0.0))
        yield age
        yield GaugeMetricFamily(
            "taskhub_tasks_orphaned",
            "RUNNING tasks no live unit holds (taken back when their lease runs out)",
            orphaned,
        )
        unclaimed = GaugeMetricFamily(
            "taskhub_tasks_pending_unserved",
            "PENDING tasks of a type no ONLINE or BUSY unit serves, by type (absent: every type with work is served)",
            labels=["task_type"],
        )
        for row in unserved:
            unclaimed.add_metric([row["taskType"]], row["pending"])
        yield unclaimed
        outbox = GaugeMetricFamily(
            "taskhub_webhook_deliveries_by_status",
            "Webhook deliveries in the outbox by status: PENDING (due or retrying), DELIVERED, DEAD (database)",
            labels=["status"],
        )
        for status, n in deliveries.items():
            outbox.add_metric([status], n)
        yield outbox
        if last_rollup is not None:
            yield GaugeMetricFamily(
                "taskhub_rollup_last_minute_timestamp_seconds",
                "End of the newest minute the rollup_minute beat job wrote (Unix time): beat and a worker run",
                value=last_rollup.timestamp() + 60,
            )

    def _by_status(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("taskhub_tasks", "Tasks by status (read from the database)", labels=["status"])
        units = GaugeMetricFamily(
            "taskhub_units", "Execution units by status (read from the database)", labels=["status"]
        )
        capacity = GaugeMetricFamily(
            "taskhub_units_capacity", "Summed capacity of execution units, by status", labels=["status"]
        )
        up = GaugeMetricFamily("taskhub_metrics_database_up", "1 if the state gauges could be read from the database")
        paused = GaugeMetricFamily(
            "taskhub_queue_paused", "1 for each paused queue (task type with settings)", labels=["task_type"]
        )
        limits = GaugeMetricFamily(
            "taskhub_queue_limit", "The limits set on each queue (absent: no limit)", labels=["task_type", "limit"]
        )
        paused_total = GaugeMetricFamily("taskhub_queues_paused", "Queues paused")
        try:
            by_task = status_counts()
            by_unit = unit_status_counts()
            queues = queue_settings_summary()
        except DatabaseError:
            logger.exception("metrics: could not read task and unit counts")
            up.add_metric([], 0)
            yield up
            return
        for status, n in by_task.items():
            tasks.add_metric([status], n)
        for status, row in by_unit.items():
            units.add_metric([status], row.units)
            capacity.add_metric([status], row.capacity)
        for task_type, (is_paused, values) in queues.items():
            paused.add_metric([task_type], 1 if is_paused else 0)
            for name, value in values.items():
                if value is not None:
                    limits.add_metric([task_type, name], value)
        paused_total.add_metric([], sum(1 for is_paused, _ in queues.values() if is_paused))
        up.add_metric([], 1)
        yield from (tasks, units, capacity, paused, paused_total, limits, up)


def render_process_metrics() -> bytes:
    """The event metrics: this process's, or every process's in multiprocess mode."""
    if metrics.MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics.MULTIPROC_DIR)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def render_state_metrics() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())  # type: ignore[arg-type]
    return generate_latest(registry)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    token = getattr(settings, "METRICS_TOKEN", "")
    if token:
        scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        response = json_error(401, "not_authenticated", "Send 'Authorization: Bearer <METRICS_TOKEN>' to read metrics")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if settings.PRODUCTION:
        return json_error(403, "forbidden", "Metrics are off: set METRICS_TOKEN to enable /metrics")
    return None


def metrics_view(request: HttpRequest) -> HttpResponse:
    refused = _refusal(request)
    if refused is not None:
        return refused
    if request.method not in ("GET", "HEAD"):
        return HttpResponse("Use GET\n", status=405, content_type="text/plain", headers={"Allow": "GET, HEAD"})
    return HttpResponse(render_process_metrics() + render_state_metrics(), content_type=CONTENT_TYPE_LATEST)


class PrometheusMiddleware(BothModes):
    """Counts and times every request, labelled by route name (bounded), never by raw path."""

    def before(self, request: HttpRequest) -> tuple[HttpResponse | None, Any]:
        return None, time.perf_counter()

    def after(self, request: HttpRequest, response: HttpResponse, started: Any) -> HttpResponse:
        elapsed = time.perf_counter() - started
        match = getattr(request, "resolver_match", None)
        view = (match.view_name if match is not None else "") or "<unmatched>"
        method = request.method if request.method in _METHODS else "OTHER"
        metrics.observe_request(method, view, response.status_code, elapsed)
        return response
