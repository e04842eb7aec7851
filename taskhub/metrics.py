"""Prometheus metrics, served as text at `/metrics`.

Two kinds, kept apart on purpose:
- **Events** (requests, claims, failovers, refused stale reports, retries, job runs) are counters
  and histograms incremented where they happen, through the `record_*` helpers below (one-line
  calls in the scheduling code). With several gunicorn workers (and Celery processes) set
  `PROMETHEUS_MULTIPROC_DIR` to a directory shared by them, emptied at each start: every process
  writes its values there and a scrape of any worker sums them all (prometheus_client's
  multiprocess mode). Without it, each process reports only its own.
- **State** (tasks by status, units by status) is read from the database at scrape time by a
  custom collector, one grouped query each, so it is right whichever worker answers.

Counters for work done inside a transaction are bumped on commit: a claim retried after a
deadlock, or a sweep that rolled back, counts once or not at all.

Access: with `METRICS_TOKEN` set, a scrape must send `Authorization: Bearer <token>`; without it
the endpoint is open, except with APP_ENV=production, where it is off (403) until a token is set.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, transaction
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger("taskhub.metrics")

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
if MULTIPROC_DIR and not os.path.isdir(MULTIPROC_DIR):
    raise ImproperlyConfigured(f"PROMETHEUS_MULTIPROC_DIR must be an existing directory, got {MULTIPROC_DIR!r}")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

HTTP_REQUESTS = Counter(
    "taskhub_http_requests", "HTTP requests served, by method, route name and status", ["method", "view", "status"]
)
HTTP_LATENCY = Histogram(
    "taskhub_http_request_duration_seconds",
    "Time to serve an HTTP request, by method and route name",
    ["method", "view"],
    buckets=_LATENCY_BUCKETS,
)
CLAIMS = Counter("taskhub_claims", "Claim calls by units, by outcome (claimed: at least one task)", ["outcome"])
TASKS_CLAIMED = Counter("taskhub_tasks_claimed", "Tasks leased to units by claims, by task type", ["task_type"])
FAILOVERS = Counter("taskhub_task_failovers", "RUNNING tasks taken back from a lost unit and made PENDING again")
POISONED = Counter("taskhub_tasks_poisoned", "RUNNING tasks failed as poison after too many failovers")
STALE_REPORTS = Counter(
    "taskhub_stale_reports_refused", "Unit reports refused because their attempt was no longer live (409)"
)
RETRIES = Counter("taskhub_task_retries", "Automatic retries: FAILED tasks moved back to PENDING after backoff")
JOB_DURATION = Histogram(
    "taskhub_job_duration_seconds", "Run time of the periodic jobs, by job", ["job"], buckets=_JOB_BUCKETS
)


def _on_commit(fn: Callable[[], None]) -> None:
    """Run `fn` when the current transaction commits (at once outside one)."""
    transaction.on_commit(fn, robust=True)


# --- one-line hooks for the code paths ----------------------------------------------------------


def record_claim(task_type: str, claimed: int) -> None:
    def bump() -> None:
        CLAIMS.labels("claimed" if claimed else "empty").inc()
        if claimed:
            TASKS_CLAIMED.labels(task_type).inc(claimed)

    _on_commit(bump)


def record_failover(counts: Mapping[str, int]) -> None:
    failed_over, poisoned = counts.get("failedOver", 0), counts.get("poisoned", 0)

    def bump() -> None:
        FAILOVERS.inc(failed_over)
        POISONED.inc(poisoned)

    if failed_over or poisoned:
        _on_commit(bump)


def record_stale_report() -> None:
    # Not on commit: the refusal rolls its transaction back, and the refusal is the event.
    STALE_REPORTS.inc()


def record_retries(count: int) -> None:
    if count:
        _on_commit(lambda: RETRIES.inc(count))


def observe_job(name: str, seconds: float) -> None:
    JOB_DURATION.labels(name).observe(seconds)


# --- state read at scrape time --------------------------------------------------------------------


class DatabaseCollector:
    """Tasks and units by status, one grouped query each, every scrape."""

    def collect(self) -> Iterator[Metric]:
        from tasks.models import Task
        from tasks.states import TaskStatus
        from units.models import ExecutionUnit, UnitStatus

        tasks = GaugeMetricFamily("taskhub_tasks", "Tasks by status (read from the database)", labels=["status"])
        units = GaugeMetricFamily(
            "taskhub_units", "Execution units by status (read from the database)", labels=["status"]
        )
        capacity = GaugeMetricFamily(
            "taskhub_units_capacity", "Summed capacity of execution units, by status", labels=["status"]
        )
        up = GaugeMetricFamily("taskhub_metrics_database_up", "1 if the state gauges could be read from the database")
        try:
            by_task = dict.fromkeys(TaskStatus.values, 0)
            for row in Task.objects.order_by().values("status").annotate(n=Count("id")):
                by_task[row["status"]] = row["n"]
            by_unit = {s: (0, 0) for s in UnitStatus.values}
            for row in ExecutionUnit.objects.order_by().values("status").annotate(n=Count("id"), cap=Sum("capacity")):
                by_unit[row["status"]] = (row["n"], row["cap"] or 0)
        except DatabaseError:
            logger.exception("metrics: could not read task and unit counts")
            up.add_metric([], 0)
            yield up
            return
        for status, n in by_task.items():
            tasks.add_metric([status], n)
        for status, (n, cap) in by_unit.items():
            units.add_metric([status], n)
            capacity.add_metric([status], cap)
        up.add_metric([], 1)
        yield from (tasks, units, capacity, up)


def render_process_metrics() -> bytes:
    """The event metrics: this process's, or every process's in multiprocess mode."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def render_state_metrics() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())  # type: ignore[arg-type]
    return generate_latest(registry)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    from taskhub.api.errors import json_error  # the API's error shape; imported late to keep this module light

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


class PrometheusMiddleware:
    """Counts and times every request, labelled by route name (bounded), never by raw path."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        match = getattr(request, "resolver_match", None)
        view = (match.view_name if match is not None else "") or "<unmatched>"
        method = request.method if request.method in _METHODS else "OTHER"
        HTTP_REQUESTS.labels(method, view, str(response.status_code)).inc()
        HTTP_LATENCY.labels(method, view).observe(elapsed)
        return response
