"""Queues in the console: pause/resume actions and edits through the one audited writer; the task
list's "all N matching this filter" through the bulk service."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from taskhub.console.queues import timings_by_minute
from taskhub.jobs.rollups import MinuteRollup, RollupScope, minute_start
from tasks.bulk_actions import CHUNK
from tasks.models import QueueChange, QueueSettings, Task
from tasks.transitions import reports
from tests import factories
from tests.console_support import messages_of, operator, viewer
from units.claim import claim, claim_tasks
from units.states import UnitStatus

pytestmark = pytest.mark.django_db
QUEUES = "/admin/tasks/queuesettings/"


@pytest.fixture
def op_client() -> Client:
    client = Client()
    client.force_login(operator())
    return client


def test_an_operator_adds_a_limited_queue_in_the_console_and_the_change_is_audited(op_client: Client) -> None:
    response = op_client.post(
        f"{QUEUES}add/", {"task_type": "EXPORT", "max_running": "2", "per_key_concurrency": "1"}, follow=True
    )
    assert response.status_code == 200
    row = QueueSettings.objects.get(pk="EXPORT")
    assert (row.max_running, row.per_key_concurrency, row.owner_id) == (2, 1, None)
    change = QueueChange.objects.get(task_type="EXPORT")
    assert change.actor == "user:op" and change.changes["maxRunning"] == [None, 2]


def test_an_operator_sets_a_queues_retention_in_the_console_within_its_bounds(op_client: Client) -> None:
    refused = op_client.post(f"{QUEUES}add/", {"task_type": "EXPORT", "retention_seconds": "10"})
    assert refused.status_code == 200 and "retention_seconds" in refused.context["adminform"].form.errors
    assert not QueueSettings.objects.exists()
    op_client.post(f"{QUEUES}add/", {"task_type": "EXPORT", "retention_seconds": "3600"}, follow=True)
    op_client.post(
        f"{QUEUES}EXPORT/change/", {"retention_seconds": "3600", "dead_retention_seconds": "7200"}, follow=True
    )
    row = QueueSettings.objects.get(pk="EXPORT")
    assert (row.retention_seconds, row.dead_retention_seconds) == (3600, 7200)
    audit = [c.changes for c in QueueChange.objects.filter(task_type="EXPORT").order_by("id")]
    assert audit == [{"retentionSeconds": [None, 3600]}, {"deadRetentionSeconds": [None, 7200]}]


def test_pause_and_resume_actions_stop_and_restart_claims(op_client: Client) -> None:
    factories.task()
    unit = factories.unit()
    op_client.post(f"{QUEUES}add/", {"task_type": "DATA_PROCESSING"})
    response = op_client.post(
        QUEUES, {"action": "pause_queues", "_selected_action": ["DATA_PROCESSING"], "index": "0"}, follow=True
    )
    assert any("Paused 1 queue" in m for m in messages_of(response))
    assert claim(unit.pk, 5, now=timezone.now()).hold.paused  # type: ignore[union-attr]
    op_client.post(QUEUES, {"action": "resume_queues", "_selected_action": ["DATA_PROCESSING"], "index": "0"})
    assert len(claim(unit.pk, 5, now=timezone.now()).tasks) == 1
    assert QueueChange.objects.filter(task_type="DATA_PROCESSING").count() == 2


def test_a_viewer_sees_queues_but_cannot_pause_them() -> None:
    client = Client()
    client.force_login(viewer())
    QueueSettings.objects.create(task_type="X", created_at=timezone.now(), updated_at=timezone.now())
    assert client.get(QUEUES).status_code == 200
    client.post(QUEUES, {"action": "pause_queues", "_selected_action": ["X"], "index": "0"})
    assert not QueueSettings.objects.get(pk="X").paused


def test_all_matching_this_filter_acts_on_every_matching_task_in_chunks(op_client: Client) -> None:
    now = timezone.now()
    factories.tasks_in_bulk(CHUNK + 50, now=now, task_type="EXPORT")
    factories.tasks_in_bulk(5, now=now, task_type="OTHER")
    form = {"action": "cancel_tasks", "_selected_action": ["1"], "select_across": "1", "index": "0"}
    # Cancel asks first: the page counts every matching task and posts back to the filtered list.
    asked = op_client.post("/admin/tasks/task/?task_type=EXPORT", form).content.decode()
    assert f"Cancel all {CHUNK + 50} tasks matching this filter?" in asked
    assert 'action="/admin/tasks/task/?task_type=EXPORT"' in asked and 'name="select_across" value="1"' in asked
    assert Task.objects.filter(status="CANCELLED").count() == 0
    response = op_client.post("/admin/tasks/task/?task_type=EXPORT", {**form, "post": "yes"}, follow=True)
    assert any(
        f"Cancelled {CHUNK + 50} of {CHUNK + 50} matching tasks in 2 chunk(s)" in m for m in messages_of(response)
    )
    assert Task.objects.filter(task_type="EXPORT", status="CANCELLED").count() == CHUNK + 50
    assert Task.objects.filter(task_type="OTHER", status="PENDING").count() == 5


# --- the queue pages (issue 17, item 3) ------------------------------------------------------------

PAGE = "/admin/queues/DATA_PROCESSING/"


def test_every_queue_is_listed_and_its_page_shows_state_counts_and_its_units(op_client: Client) -> None:
    unit = factories.unit("q-page-unit", capacity=4)
    factories.unit("q-page-off", status=UnitStatus.OFFLINE)
    factories.leased_task(unit)
    factories.task()
    factories.task()
    factories.task(task_type="NOBODY")
    listing = op_client.get("/admin/queues/").content.decode()
    assert 'href="/admin/queues/DATA_PROCESSING/"' in listing and 'href="/admin/queues/NOBODY/"' in listing
    body = op_client.get(PAGE).content.decode()
    assert 'data-field="byStatus.PENDING">2<' in body and 'data-field="byStatus.RUNNING">1<' in body
    assert 'id="th-queue-status">ACTIVE<' in body and 'id="th-queue-pause"' in body
    units = body[body.index('id="th-queue-units"') :]
    assert "q-page-unit</a>" in units and "q-page-off</a>" in units and "1 / 4" in units
    assert "(1 claiming: ONLINE or BUSY)" in body and 'id="th-queue-unserved"' not in body
    assert 'id="th-queue-unserved"' in op_client.get("/admin/queues/NOBODY/").content.decode()
    # Linked from the dashboard and the task list.
    assert 'href="/admin/queues/"' in op_client.get("/admin/dashboard/").content.decode()
    assert (
        'href="/admin/queues/DATA_PROCESSING/" class="th-queue-link"'
        in op_client.get("/admin/tasks/task/").content.decode()
    )
    external = re.findall(r'(?:src|href)="(https?:)?//', body)
    assert external == [], external


def test_pause_and_resume_from_the_queue_page_stop_and_restart_claims_and_are_audited(op_client: Client) -> None:
    factories.task()
    unit = factories.unit()
    response = op_client.post(PAGE, {"op": "pause"}, follow=True)
    assert any("Paused queue DATA_PROCESSING" in m for m in messages_of(response))
    body = response.content.decode()
    assert 'id="th-queue-status">PAUSED<' in body and "by user:op" in body and 'id="th-queue-resume"' in body
    assert claim(unit.pk, 5, now=timezone.now()).hold.paused  # type: ignore[union-attr]
    op_client.post(PAGE, {"op": "resume"})
    assert len(claim(unit.pk, 5, now=timezone.now()).tasks) == 1
    changes = list(QueueChange.objects.filter(task_type="DATA_PROCESSING").values_list("actor", "changes"))
    assert changes == [("user:op", {"paused": [False, True]}), ("user:op", {"paused": [True, False]})]
    assert "paused: False &rarr; True" in op_client.get(PAGE).content.decode()


def test_limits_change_from_the_queue_page_through_the_audited_writer_and_bad_values_change_nothing(
    op_client: Client,
) -> None:
    limits = {"op": "limits", "max_running": "2", "rate_limit": "5"}
    response = op_client.post(PAGE, limits, follow=True)
    assert any("maxRunning None → 2" in m and "rateLimit None → 5" in m for m in messages_of(response))
    row = QueueSettings.objects.get(pk="DATA_PROCESSING")
    assert (row.max_running, row.rate_limit, row.rate_period) == (2, 5, 60)  # the writer's default window
    assert 'name="max_running" value="2"' in response.content.decode()
    for bad in ("0", "x", "100001"):
        response = op_client.post(PAGE, {**limits, "max_running": bad}, follow=True)
        assert any(m.startswith("Max running:") for m in messages_of(response)), bad
    assert QueueSettings.objects.get(pk="DATA_PROCESSING").max_running == 2
    op_client.post(PAGE, {"op": "limits", "max_running": "", "rate_limit": "5", "rate_period": "60"})
    assert QueueSettings.objects.get(pk="DATA_PROCESSING").max_running is None
    assert QueueChange.objects.filter(task_type="DATA_PROCESSING").count() == 2


def test_a_viewer_sees_a_queue_page_without_its_controls_and_cannot_post_to_it() -> None:
    client = Client()
    client.force_login(viewer())
    body = client.get(PAGE).content.decode()
    assert 'id="th-queue-pause"' not in body and 'name="max_running"' not in body and "no limit" in body
    assert client.post(PAGE, {"op": "pause"}).status_code == 403
    assert not QueueSettings.objects.filter(pk="DATA_PROCESSING").exists()


def test_the_queue_page_charts_depth_throughput_and_queue_wait_and_run_time_percentiles(op_client: Client) -> None:
    now = timezone.now()
    base = minute_start(now) - timedelta(minutes=10)
    unit = factories.unit("chart-q", capacity=10)
    made = [factories.task(now=base + timedelta(seconds=s)) for s in (0, 2, 4, 6)]
    claim_tasks(unit.pk, 4, now=base + timedelta(seconds=20))  # waits 20, 18, 16, 14 s
    for task, ran in zip(made, (10, 11, 12, 20), strict=True):  # run times
        reports.complete_attempt(task.pk, unit_id=unit.pk, attempt=1, result={}, now=base + timedelta(seconds=20 + ran))
    timings = timings_by_minute("DATA_PROCESSING", now)
    i = 50  # the minute `base` starts: ten minutes ago of sixty
    assert (timings["wait_p50"][i], timings["wait_p95"][i]) == (16.0, 20.0)
    assert (timings["run_p50"][i], timings["run_p95"][i]) == (11.0, 20.0)
    assert timings["wait_p50"][i - 1] is None and (timings["claims"], timings["ends"]) == (4, 4)
    # A scheduled task waits from its scheduled time, not from its creation.
    sched = factories.task(task_type="SCHED", now=base, scheduled_at=base + timedelta(seconds=15))
    claim_tasks(factories.unit("sched-unit", unit_type="SCHED").pk, 1, now=base + timedelta(seconds=20))
    assert timings_by_minute("SCHED", now)["wait_p50"][i] == 5.0 and sched.pk
    for age, pending in ((3, 7), (2, 4)):
        MinuteRollup.objects.create(
            minute=minute_start(now) - timedelta(minutes=age),
            scope=RollupScope.TYPE,
            key="DATA_PROCESSING",
            pending=pending,
            running=1,
            completed=3,
            failed=1,
        )
    body = op_client.get(PAGE).content.decode()

    def svg(chart_id: str) -> str:
        at = body.index(f'<svg id="{chart_id}"')
        return body[at : body.index("</svg>", at)]

    depth = svg("th-queue-depth")
    assert re.findall(r'data-series="PENDING".*?</g>', depth, re.S)[0].count("<circle") == 2
    assert sorted(re.findall(r'data-series="PENDING".*?</g>', depth, re.S)[0].split('data-value="')[1:])[0][0] == "4"
    flow = svg("th-queue-throughput")
    assert flow.count("<rect") == 60 * 3 and flow.count('class="th-bar-completed" data-minute') == 60
    wait = svg("th-queue-wait")
    assert 'data-series="p95"' in wait and 'data-value="20"' in wait and 'data-value="16"' in wait
    run = svg("th-queue-run")
    assert 'data-value="11"' in run and "UTC: p95 20.0s" in run
