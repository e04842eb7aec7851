"""The event metrics: Prometheus counters and histograms, and the one-line recorders the task and
unit code calls where things happen (claims, failovers, refused stale reports, retries, job runs).

Only counters here, no database reads: the state gauges (tasks and units by status) are read at
scrape time by the collector in `taskhub.api.metrics`, which also serves `/metrics`.

With several gunicorn workers (and Celery processes) set `PROMETHEUS_MULTIPROC_DIR` to a directory
shared by them, emptied at each start: every process writes its values there and a scrape of any
worker sums them all (prometheus_client's multiprocess mode). Without it, each process reports only
its own. Counters for work done inside a transaction are bumped on commit: a claim retried after a
deadlock, or a sweep that rolled back, counts once or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from prometheus_client import Counter, Histogram

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
if MULTIPROC_DIR and not os.path.isdir(MULTIPROC_DIR):
    raise ImproperlyConfigured(f"PROMETHEUS_MULTIPROC_DIR must be an existing directory, got {MULTIPROC_DIR!r}")

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
PRUNED = Counter("taskhub_pruned_rows", "Rows deleted by retention (tasks/retention.py), by kind", ["kind"])
SCHEDULE_FIRES = Counter("taskhub_schedule_fires", "Fire times of recurring schedules handled, by outcome", ["outcome"])
JOB_DURATION = Histogram(
    "taskhub_job_duration_seconds", "Run time of the periodic jobs, by job", ["job"], buckets=_JOB_BUCKETS
)


def _on_commit(fn: Callable[[], None]) -> None:
    """Run `fn` when the current transaction commits (at once outside one)."""
    transaction.on_commit(fn, robust=True)


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


def record_pruned(counts: Mapping[str, int]) -> None:
    # Each chunk commits on its own: the counts are of committed deletes.
    for kind, n in counts.items():
        if n:
            PRUNED.labels(kind).inc(n)


def record_fires(counts: Mapping[str, int]) -> None:
    def bump() -> None:
        for outcome, n in counts.items():
            if n:
                SCHEDULE_FIRES.labels(outcome).inc(n)

    _on_commit(bump)


def observe_job(name: str, seconds: float) -> None:
    JOB_DURATION.labels(name).observe(seconds)


def observe_request(method: str, view: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, view, str(status)).inc()
    HTTP_LATENCY.labels(method, view).observe(seconds)
