"""Prometheus metrics at /metrics: event counters from the code paths, state gauges from the database,
access control, and multiprocess aggregation (several gunicorn workers)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from taskhub.base.errors import Conflict
from taskhub.jobs.runner import run_job
from tasks.jobs import move_due_retries
from tasks.models import Task
from tasks.states import TaskStatus
from tasks.transitions import reports
from tests import factories
from units.claim import claim_tasks_with_status
from units.models import UnitStatus

pytestmark = pytest.mark.django_db
BASE_DIR = Path(django_settings.BASE_DIR)


def scrape(client: Client | None = None, **headers: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_claim_through_the_service_counts_and_the_status_gauges_match_the_database(
    django_capture_on_commit_callbacks,
) -> None:
    unit = factories.unit("metrics-unit", capacity=5)
    for _ in range(4):
        factories.task()
    factories.unit("metrics-off", status=UnitStatus.OFFLINE)
    before = scrape()
    with django_capture_on_commit_callbacks(execute=True):
        claimed, _ = claim_tasks_with_status(unit.pk, 3, now=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        claim_tasks_with_status("metrics-off", 1, now=timezone.now())  # OFFLINE: claims nothing, counts nothing
    after = scrape()
    assert len(claimed) == 3
    delta = value(after, "taskhub_tasks_claimed_total", task_type="DATA_PROCESSING") - value(
        before, "taskhub_tasks_claimed_total", task_type="DATA_PROCESSING"
    )
    assert delta == 3
    assert (
        value(after, "taskhub_claims_total", outcome="claimed")
        - value(before, "taskhub_claims_total", outcome="claimed")
        == 1
    )
    for status in TaskStatus.values:
        assert value(after, "taskhub_tasks", status=status) == Task.objects.filter(status=status).count(), status
    assert value(after, "taskhub_tasks", status="RUNNING") == 3
    assert value(after, "taskhub_units", status="ONLINE") == 1 and value(after, "taskhub_units", status="OFFLINE") == 1
    assert value(after, "taskhub_units_capacity", status="ONLINE") == 5
    assert value(after, "taskhub_metrics_database_up") == 1


def test_a_claim_that_rolls_back_counts_nothing() -> None:
    unit = factories.unit("rollback-unit")
    factories.task()
    before = scrape()
    # pytest-django's `db` wraps the test in a transaction that never commits: on-commit hooks
    # never run, as after a rollback.
    claim_tasks_with_status(unit.pk, 1, now=timezone.now())
    after = scrape()
    assert value(after, "taskhub_tasks_claimed_total", task_type="DATA_PROCESSING") == value(
        before, "taskhub_tasks_claimed_total", task_type="DATA_PROCESSING"
    )


def test_failovers_retries_stale_reports_and_job_durations_are_counted(django_capture_on_commit_callbacks) -> None:
    now = timezone.now()
    unit = factories.unit("lost-unit", now=now - timedelta(minutes=5), capacity=5)
    factories.task(now=now - timedelta(minutes=6))
    factories.task(now=now - timedelta(minutes=6))
    with django_capture_on_commit_callbacks(execute=True):
        claimed, _ = claim_tasks_with_status(unit.pk, 2, now=now - timedelta(minutes=5))
    factories.unit("live-unit", now=now)  # the hub hears others: the lost unit's silence is its own
    factories.hub_listening(now)
    before = scrape()
    with django_capture_on_commit_callbacks(execute=True):
        result = run_job("sweep_heartbeats", now)
    assert result["failedOver"] == 2

    # A report for the attempt that was just taken away is refused (409) and counted.
    with pytest.raises(Conflict):
        reports.complete_attempt(claimed[0].pk, unit_id=unit.pk, attempt=claimed[0].attempt, result={})

    retry_unit = factories.unit("retry-unit", capacity=5, unit_type="EMAIL")
    task = factories.task(max_retries=2, task_type="EMAIL")
    with django_capture_on_commit_callbacks(execute=True):
        [leased], _ = claim_tasks_with_status(retry_unit.pk, 1, now=timezone.now())
        reports.fail_attempt(task.pk, unit_id=retry_unit.pk, attempt=leased.attempt, error="x", retryable=True)
        moved = move_due_retries(now + timedelta(hours=1))
    assert moved == {"retried": 1}
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("taskhub_task_failovers_total", task_type="DATA_PROCESSING") == 2
    assert delta("taskhub_tasks_poisoned_total", task_type="DATA_PROCESSING") == 0
    assert delta("taskhub_stale_reports_refused_total") == 1
    assert delta("taskhub_task_retries_total", task_type="EMAIL") == 1
    assert delta("taskhub_job_duration_seconds_count", job="sweep_heartbeats") == 1
    assert value(after, "taskhub_job_duration_seconds_sum", job="sweep_heartbeats") > 0


def test_requests_are_counted_by_route_name_and_status_not_by_raw_path() -> None:
    client = Client()
    before = scrape(client)
    client.get("/api/v1/tasks/12345")  # 401: no key
    client.get("/api/v1/tasks/67890")
    after = scrape(client)
    labels = {"method": "GET", "view": "task-detail", "status": "401"}
    assert (
        value(after, "taskhub_http_requests_total", **labels) - value(before, "taskhub_http_requests_total", **labels)
        == 2
    )
    assert value(after, "taskhub_http_request_duration_seconds_count", method="GET", view="task-detail") >= 2
    assert not any("12345" in str(key) for key in after)


def test_metrics_need_the_token_when_one_is_set_and_are_off_in_production_without_one(settings) -> None:
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    client = Client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.json()["code"] == "not_authenticated"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
    settings.METRICS_TOKEN = ""
    settings.PRODUCTION = True
    assert client.get("/metrics").status_code == 403


def test_several_worker_processes_are_summed_in_multiprocess_mode(tmp_path: Path) -> None:
    """Two "gunicorn workers" count in their own processes; a scrape by a third sees the sum."""
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "taskhub.settings",
        "LOG_DIR": str(tmp_path / "logs"),
    }
    worker = textwrap.dedent(
        """
        import django; django.setup()
        from taskhub.base import metrics
        metrics.record_stale_report()
        metrics.record_stale_report()
        metrics.observe_job("sweep_heartbeats", 0.2)
        """
    )
    reader = textwrap.dedent(
        """
        import django; django.setup()
        from taskhub.api.metrics import render_process_metrics
        print(render_process_metrics().decode())
        """
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", worker], env=env, cwd=BASE_DIR, check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", reader], env=env, cwd=BASE_DIR, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
    }
    assert value(samples, "taskhub_stale_reports_refused_total") == 4
    assert value(samples, "taskhub_job_duration_seconds_count", job="sweep_heartbeats") == 2


def test_paused_queues_and_queue_limits_are_gauges() -> None:
    from taskhub.base.actors import Actor
    from taskhub.base.viewer import OPERATOR
    from units.queues import update_queue_settings

    for task_type, changes in (("A", {"paused": True}), ("B", {"max_running": 3, "rate_limit": 10})):
        update_queue_settings(task_type, changes, viewer=OPERATOR, actor=Actor.operator("op"), owner_id=None)
    samples = scrape()
    assert value(samples, "taskhub_queues_paused") == 1
    assert value(samples, "taskhub_queue_paused", task_type="A") == 1
    assert value(samples, "taskhub_queue_paused", task_type="B") == 0
    assert value(samples, "taskhub_queue_limit", task_type="B", limit="maxRunning") == 3
    assert value(samples, "taskhub_queue_limit", task_type="B", limit="ratePeriodSeconds") == 60
    assert ("taskhub_queue_limit", (("limit", "maxRunning"), ("task_type", "A"))) not in samples
