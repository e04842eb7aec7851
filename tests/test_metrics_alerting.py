"""The metrics operators alert on (issue 17, item 4): tasks by status and type, outcome counters and
histograms by type, the oldest due task's age, the dead set, orphaned and unserved work, beat's
proof of life; `promtool check metrics` on a real scrape; the alert rules checked and unit tested
with promtool; the Grafana dashboard's panels naming only metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from taskhub.jobs.rollups import write_rollups
from tasks.jobs import move_due_retries
from tasks.models import Task
from tasks.transitions import reports
from tests import factories
from tests.console_support import completed_task, failed_task
from units.models import ExecutionUnit, UnitStatus

pytestmark = pytest.mark.django_db
DEPLOY = Path(settings.BASE_DIR) / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
)


def scrape_text() -> str:
    response = Client().get("/metrics")
    assert response.status_code == 200
    return response.content.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_alerting_metrics_say_what_happened_by_type(django_capture_on_commit_callbacks) -> None:
    now = timezone.now()
    unit = factories.unit("m-unit", capacity=10)
    before = samples(scrape_text())
    with django_capture_on_commit_callbacks(execute=True):
        completed_task(unit)
        completed_task(unit)
        failed_task(unit, error="dead one")
        retrying = factories.leased_task(unit, max_retries=2)
        reports.fail_attempt(retrying.pk, unit_id=unit.pk, attempt=1, error="x", retryable=True)
        move_due_retries(now + timedelta(hours=2))
    factories.task(task_type="EMAIL", now=now - timedelta(minutes=10))  # due, no EMAIL unit
    lost = factories.leased_task(factories.unit("lost-unit"))
    ExecutionUnit.objects.filter(pk="lost-unit").update(status=UnitStatus.OFFLINE)
    write_rollups(now)
    after = samples(scrape_text())

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    t = "DATA_PROCESSING"
    assert delta("taskhub_tasks_completed_total", task_type=t) == 2
    assert delta("taskhub_tasks_failed_total", task_type=t) == 2  # the dead one and the retried attempt
    assert delta("taskhub_task_retries_total", task_type=t) == 1
    assert delta("taskhub_task_run_seconds_count", task_type=t) == 4
    assert delta("taskhub_task_queue_wait_seconds_count", task_type=t) == 4  # each claim (committed ones)
    assert delta("taskhub_task_dispatch_latency_seconds_count", task_type=t) == 4  # all first claims
    for status in ("COMPLETED", "FAILED", "PENDING", "RUNNING"):
        assert (
            value(after, "taskhub_tasks_by_type", task_type=t, status=status)
            == Task.objects.filter(task_type=t, status=status).count()
        )
    assert value(after, "taskhub_tasks_by_type", task_type="EMAIL", status="PENDING") == 1
    assert value(after, "taskhub_tasks_dead") == 1
    assert value(after, "taskhub_tasks_orphaned") == 1 and lost.pk
    assert value(after, "taskhub_tasks_pending_unserved", task_type="EMAIL") == 1
    assert ("taskhub_tasks_pending_unserved", (("task_type", t),)) not in after
    assert 590 <= value(after, "taskhub_task_oldest_due_age_seconds", task_type="EMAIL") <= 700
    assert value(after, "taskhub_units", status="OFFLINE") == 1
    assert value(after, "taskhub_rollup_last_minute_timestamp_seconds") == pytest.approx(
        now.replace(second=0, microsecond=0).timestamp(), abs=1
    )


@needs_promtool
def test_promtool_check_metrics_is_clean_on_a_real_scrape(django_capture_on_commit_callbacks) -> None:
    unit = factories.unit("lint-unit")
    with django_capture_on_commit_callbacks(execute=True):
        completed_task(unit)
        failed_task(unit)
    write_rollups(timezone.now())
    done = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=scrape_text(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


@needs_promtool
def test_the_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    rules = DEPLOY / "prometheus"
    check = subprocess.run(
        [str(PROMTOOL), "check", "rules", "alerts.yml"], cwd=rules, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yml"], cwd=rules, capture_output=True, text=True, timeout=60
    )
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
    names = set(re.findall(r"alert: (\w+)", (rules / "alerts.yml").read_text()))
    tested = set(re.findall(r"alertname: (\w+)", (rules / "alerts_test.yml").read_text()))
    assert names == tested and len(names) == 6, (names, tested)


def _exposed_names(django_capture_on_commit_callbacks) -> set[str]:
    unit = factories.unit("names-unit")
    with django_capture_on_commit_callbacks(execute=True):
        completed_task(unit)
        failed_task(unit)
    factories.task(task_type="NOBODY")
    write_rollups(timezone.now())
    names = set()
    for family in text_string_to_metric_families(scrape_text()):
        # A labelled family with no sample yet (no failover so far) is still declared (HELP/TYPE).
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


# Series names in a PromQL expression: identifiers that are not functions, keywords or label names.
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}


def metric_names(expr: str) -> set[str]:
    no_labels = re.sub(r"\{[^}]*\}", "", re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr))
    words = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b\s*(?!\()", no_labels))
    functions = set(re.findall(r"\b([a-z_]+)\s*\(", no_labels))
    return {w for w in words - functions - _PROMQL_WORDS if w.startswith("taskhub_")}


def test_every_grafana_panel_queries_metrics_that_exist(django_capture_on_commit_callbacks) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "taskhub.json").read_text())
    exposed = _exposed_names(django_capture_on_commit_callbacks)
    assert dashboard["panels"], "no panels"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= exposed, (panel["title"], names - exposed)


def test_every_alert_rule_names_metrics_that_exist(django_capture_on_commit_callbacks) -> None:
    exposed = _exposed_names(django_capture_on_commit_callbacks)
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = re.findall(r"expr: (?:\|\n((?:\s{10,}.*\n)+)|(.*))", text)
    assert len(exprs) == 6
    for block, line in exprs:
        names = metric_names(block or line)
        assert names and names <= exposed, (block or line, names - exposed)


def test_webhook_deliveries_are_counted_by_outcome_and_the_outbox_by_status(
    client_a, settings, django_capture_on_commit_callbacks
) -> None:
    from taskhub.webhooks import subscriptions
    from taskhub.webhooks.delivery import deliver_due_webhooks
    from tests.webhook_receiver import receiver

    settings.WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1
    settings.WEBHOOK_BACKOFF_BASE = 0.0  # a failed attempt is due again at once: one run retries it
    settings.WEBHOOK_KICK = False
    settings.WEBHOOK_SUBSCRIPTIONS_TTL = 0.0
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    subscriptions.invalidate()
    before = samples(scrape_text())
    answers = iter([503, 200, 500, 500])  # the first delivery: retried then delivered; the second: dead
    with receiver(lambda n: next(answers)) as hub_receiver:
        assert client_a.post("/api/v1/webhooks", {"url": hub_receiver.url}).status_code == 201
        with django_capture_on_commit_callbacks(execute=True):
            client_a.post("/api/v1/tasks", {"name": "t", "taskType": "HOOK"})
            assert deliver_due_webhooks(timezone.now()) == {"delivered": 1, "retrying": 1, "dead": 0}
            client_a.post("/api/v1/tasks", {"name": "u", "taskType": "HOOK"})
            assert deliver_due_webhooks(timezone.now()) == {"delivered": 0, "retrying": 1, "dead": 1}
    after = samples(scrape_text())
    for outcome, n in (("delivered", 1), ("retrying", 2), ("dead", 1)):
        got = value(after, "taskhub_webhook_deliveries_total", outcome=outcome)
        assert got - value(before, "taskhub_webhook_deliveries_total", outcome=outcome) == n, outcome
    for status, n in (("PENDING", 0), ("DELIVERED", 1), ("DEAD", 1)):
        assert value(after, "taskhub_webhook_deliveries_by_status", status=status) == n, status


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)  # ANALYZE TABLE commits: the rows must be flushed afterwards
def test_the_oldest_due_age_reads_one_index_entry_per_status_and_type_on_mariadb() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tasks.selectors import oldest_due_by_type

    now = timezone.now()
    statuses = ["PENDING", "PENDING", "COMPLETED", "COMPLETED", "FAILED", "RUNNING"]
    factories.tasks_in_bulk(
        6000,
        now=now - timedelta(minutes=5),
        row=lambda i: {
            "task_type": f"TYPE_{i % 5}",
            "status": statuses[i % 6],
            "available_at": now - timedelta(seconds=i),
        },
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE tasks")
    with CaptureQueriesContext(connection) as queries:
        oldest = oldest_due_by_type(now)
    assert set(oldest) == {f"TYPE_{i}" for i in range(5)}
    due = [i for i in range(6000) if i % 5 == 0 and statuses[i % 6] == "PENDING"]
    assert oldest["TYPE_0"] == now - timedelta(seconds=max(due))
    (sql,) = [q["sql"] for q in queries.captured_queries]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        columns = [c[0] for c in cursor.description]
        plan = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    assert len(plan) == 1 and plan[0]["key"] == "task_due_by_type_idx", plan
    assert "Using index for group-by" in plan[0]["Extra"], plan
