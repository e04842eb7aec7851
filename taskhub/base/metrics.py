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
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

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
CLAIMS = Counter(
    "taskhub_claims",
    "Claim calls by units, by outcome (claimed: at least one task; empty: none; known_empty: a long poll"
    " that went straight to its wait, its doorbell's probe having just found nothing claimable)",
    ["outcome"],
)
TASKS_CLAIMED = Counter("taskhub_tasks_claimed", "Tasks leased to units by claims, by task type", ["task_type"])
FAILOVERS = Counter(
    "taskhub_task_failovers", "RUNNING tasks taken back from a lost unit and made PENDING again, by type", ["task_type"]
)
POISONED = Counter(
    "taskhub_tasks_poisoned", "RUNNING tasks failed as poison after too many failovers, by type", ["task_type"]
)
STALE_REPORTS = Counter(
    "taskhub_stale_reports_refused", "Unit reports refused because their attempt was no longer live (409)"
)
RETRIES = Counter(
    "taskhub_task_retries",
    "Automatic retries: FAILED tasks moved back to PENDING after backoff, by type",
    ["task_type"],
)
COMPLETED = Counter("taskhub_tasks_completed", "Tasks that reached COMPLETED, by type", ["task_type"])
FAILED = Counter(
    "taskhub_tasks_failed", "Moves to FAILED (an attempt failed, timed out or was poisoned), by type", ["task_type"]
)
# Seconds: from a few milliseconds (a busy hub) to a day (a backlog, a long job).
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)
QUEUE_WAIT = Histogram(
    "taskhub_task_queue_wait_seconds",
    "Time a due PENDING task waited for a claim (claim time - available_at), each attempt, by type",
    ["task_type"],
    buckets=_WAIT_BUCKETS,
)
DISPATCH_LATENCY = Histogram(
    "taskhub_task_dispatch_latency_seconds",
    "Time from a task's submission (or its scheduled time) to its first claim, by type",
    ["task_type"],
    buckets=_WAIT_BUCKETS,
)
RUN_TIME = Histogram(
    "taskhub_task_run_seconds",
    "Run time of an attempt that ended COMPLETED or FAILED (from its claim), by type",
    ["task_type"],
    buckets=_WAIT_BUCKETS,
)
WEBHOOK_ATTEMPTS = Counter(
    "taskhub_webhook_deliveries",
    "Webhook delivery attempts recorded, by outcome: delivered (a 2xx), retrying (failed, another attempt due), "
    "dead (failed, no attempt left)",
    ["outcome"],
)
PRUNED = Counter("taskhub_pruned_rows", "Rows deleted by retention (tasks/retention.py), by kind", ["kind"])
PRUNED_TASKS = Counter(
    "taskhub_pruned_tasks",
    "Tasks deleted by retention, by task type (queue) and period (finished: COMPLETED/CANCELLED; dead)",
    ["task_type", "period"],
)
SCHEDULE_FIRES = Counter("taskhub_schedule_fires", "Fire times of recurring schedules handled, by outcome", ["outcome"])
JOB_DURATION = Histogram(
    "taskhub_job_duration_seconds", "Run time of the periodic jobs, by job", ["job"], buckets=_JOB_BUCKETS
)


def _on_commit(fn: Callable[[], None]) -> None:
    """Run `fn` when the current transaction commits (at once outside one)."""
    transaction.on_commit(fn, robust=True)


def record_claim(task_type: str, claimed: int, *, ran: bool = True) -> None:
    """A claim call: `claimed` tasks leased; `ran` False for a long poll whose claim was skipped
    (taskhub.api.views.units: known to find nothing)."""

    def bump() -> None:
        CLAIMS.labels("claimed" if claimed else "empty" if ran else "known_empty").inc()
        if claimed:
            TASKS_CLAIMED.labels(task_type).inc(claimed)

    _on_commit(bump)


def record_failover(failed_over: Mapping[str, int], poisoned: Mapping[str, int]) -> None:
    """Failovers and poisoned tasks, each by task type."""

    def bump() -> None:
        for task_type, n in failed_over.items():
            FAILOVERS.labels(task_type).inc(n)
        for task_type, n in poisoned.items():
            POISONED.labels(task_type).inc(n)
            FAILED.labels(task_type).inc(n)

    if any(failed_over.values()) or any(poisoned.values()):
        _on_commit(bump)


def record_dispatch(task_type: str, queue_waits: Sequence[float], first_dispatches: Sequence[float]) -> None:
    """A claim's tasks: each one's queue wait, and the dispatch latency of those claimed first."""

    def observe() -> None:
        for seconds in queue_waits:
            QUEUE_WAIT.labels(task_type).observe(max(seconds, 0.0))
        for seconds in first_dispatches:
            DISPATCH_LATENCY.labels(task_type).observe(max(seconds, 0.0))

    if queue_waits:
        _on_commit(observe)


class Outcome(NamedTuple):
    task_type: str
    target: str  # the status moved to
    run_seconds: float | None  # an attempt's end (from RUNNING): its run time


def record_outcomes(outcomes: Sequence[Outcome]) -> None:
    """Moves to COMPLETED / FAILED, with the run time of the attempts they ended."""
    if not outcomes:
        return

    def bump() -> None:
        for outcome in outcomes:
            counter = COMPLETED if outcome.target == "COMPLETED" else FAILED
            counter.labels(outcome.task_type).inc()
            if outcome.run_seconds is not None:
                RUN_TIME.labels(outcome.task_type).observe(max(outcome.run_seconds, 0.0))

    _on_commit(bump)


def record_stale_report() -> None:
    # Not on commit: the refusal rolls its transaction back, and the refusal is the event.
    STALE_REPORTS.inc()


def record_retries(by_type: Mapping[str, int]) -> None:
    def bump() -> None:
        for task_type, n in by_type.items():
            RETRIES.labels(task_type).inc(n)

    if any(by_type.values()):
        _on_commit(bump)


def record_webhook_outcomes(counts: Mapping[str, int]) -> None:
    """The attempts a delivery run recorded (taskhub/webhooks/delivery.py), by outcome."""

    def bump() -> None:
        for outcome, n in counts.items():
            if n:
                WEBHOOK_ATTEMPTS.labels(outcome).inc(n)

    if any(counts.values()):
        _on_commit(bump)


def record_pruned(counts: Mapping[str, int], by_queue: Mapping[tuple[str, str], int] | None = None) -> None:
    # Each chunk commits on its own: the counts are of committed deletes.
    for kind, n in counts.items():
        if n:
            PRUNED.labels(kind).inc(n)
    for (task_type, period), n in (by_queue or {}).items():
        if n:
            PRUNED_TASKS.labels(task_type, period).inc(n)


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
