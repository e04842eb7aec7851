"""Issue 17's "Found" list, one view test each (each failed on main before the fix): the failed task's
page leads with its current error, dead vs waiting retry, the error column, the HISTORY button, cancel
asks first, orphaned RUNNING and types no unit claims, one name for MAINTENANCE, the unit page's tasks
and buttons, live refresh, Tasks first on the index, and the small formatting items."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from taskhub.base.actors import Actor
from taskhub.console.dashboard import dashboard_data
from tasks.models import Task
from tasks.selectors import task_stats
from tasks.states import VERBS, TaskStatus
from tasks.transitions import reports, verbs
from tests import factories
from tests.console_support import completed_task, failed_task, log_lines, operator
from units.claim import claim_tasks
from units.models import ExecutionUnit
from units.states import UnitStatus

pytestmark = pytest.mark.django_db
S = TaskStatus
LIST = "/admin/tasks/task/"


def page(pk: int) -> str:
    return f"/admin/tasks/task/{pk}/change/"


@pytest.fixture
def op_client() -> Client:
    client = Client()
    client.force_login(operator())
    return client


def listed_ids(client: Client, query: str) -> set[int]:
    body = client.get(LIST + query).content.decode()
    return {int(pk) for pk in re.findall(r'name="_selected_action" value="(\d+)"', body)}


def waiting_retry_task(unit: ExecutionUnit, error: str = "flaky network") -> Task:
    task = factories.leased_task(unit, max_retries=3)
    reports.fail_attempt(task.pk, unit_id=unit.pk, attempt=task.attempt, error=error, retryable=True)
    task = Task.objects.get(pk=task.pk)
    assert task.status == S.FAILED and task.next_retry_at is not None
    return task


def failed_then_completed(unit: ExecutionUnit) -> Task:
    """Attempt 1 fails ("old failure"), a retry by hand, attempt 2 completes."""
    task = failed_task(unit, error="old failure", priority=1000)
    verbs.act([task.pk], VERBS["retry"], actor=Actor.operator("op"), reason="retry", live_unit=lambda _: True)
    (claimed,) = claim_tasks(unit.pk, 1, now=timezone.now())
    assert claimed.pk == task.pk
    reports.complete_attempt(task.pk, unit_id=unit.pk, attempt=2, result={"ok": 1})
    task = Task.objects.get(pk=task.pk)
    assert task.status == S.COMPLETED and task.error == "old failure"  # the row keeps the old text
    return task


def test_a_failed_tasks_page_leads_with_its_error_and_a_completed_one_shows_none(op_client: Client) -> None:
    unit = factories.unit("err-unit")
    failed = failed_task(unit, error="disk full on /var")
    body = op_client.get(page(failed.pk)).content.decode()
    assert 'id="th-current-error"' in body and "disk full on /var" in body
    # Before the fields (the old page showed it ~1,000 px down, under 15 of them).
    assert body.index('id="th-current-error"') < body.index("Execution</h2>")
    assert body.index('id="th-summary"') < body.index('id="th-timeline"') < body.index("Execution</h2>")
    assert re.search(r'id="th-summary-attempt">\s*1\b', body)
    assert f'href="/admin/queues/{failed.task_type}/" id="th-summary-queue"' in body

    done = failed_then_completed(unit)
    body = op_client.get(page(done.pk)).content.decode()
    assert 'id="th-current-error"' not in body
    fields = body[body.index("Execution</h2>") : body.index('id="th-history"')]
    assert "old failure" not in fields  # the error field shows only the current attempt's


def test_the_timeline_shows_each_attempt_claim_to_outcome_with_the_retry_as_an_event(op_client: Client) -> None:
    done = failed_then_completed(factories.unit("tl-unit"))
    body = op_client.get(page(done.pk)).content.decode()
    timeline = body[body.index('id="th-timeline"') : body.index("</fieldset>", body.index('id="th-timeline"'))]
    attempts = re.findall(r'data-attempt="(\d+)"', timeline)
    assert attempts == ["2", "1", "0"]
    assert "th-event-retry" in timeline and "th-event-failure" in timeline and "th-event-claim" in timeline
    assert "run time" in timeline and "queue wait" in timeline


def test_dead_and_waiting_retry_are_filters_tiles_and_match_the_api_stats(op_client: Client) -> None:
    unit = factories.unit("dead-unit", capacity=10)
    dead = failed_task(unit, error="no retries")
    waiting = waiting_retry_task(unit)
    assert listed_ids(op_client, "?failed=dead") == {dead.pk}
    assert listed_ids(op_client, "?failed=waiting_retry") == {waiting.pk}
    stats = task_stats(Task.objects.all())
    data = dashboard_data()["tasks"]
    assert (data["dead"], data["waitingRetry"]) == (stats["dead"], stats["waitingRetry"]) == (1, 1)
    html = op_client.get("/admin/dashboard/").content.decode()
    assert 'data-field="tasks.dead">1<' in html and 'data-field="tasks.waitingRetry">1<' in html
    listing = op_client.get(LIST).content.decode()
    assert ">dead<" in listing and ">waiting retry<" in listing


def test_the_task_list_has_an_error_column_with_only_current_errors(op_client: Client) -> None:
    unit = factories.unit("col-unit")
    failed_task(unit, error="smtp refused")
    failed_then_completed(unit)
    body = op_client.get(LIST).content.decode()
    assert "column-error_col" in body
    assert 'class="th-error-text" title="smtp refused">smtp refused<' in body
    assert "old failure" not in body


def test_the_history_button_opens_the_tasks_state_history(op_client: Client) -> None:
    done = failed_then_completed(factories.unit("hist-unit"))
    page_html = op_client.get(page(done.pk)).content.decode()
    assert f'href="/admin/tasks/task/{done.pk}/history/"' in page_html
    body = op_client.get(f"/admin/tasks/task/{done.pk}/history/").content.decode()
    assert "have a change history" not in body
    assert body.count('class="th-history-row"') == done.history.count() >= 5


def test_cancel_asks_for_confirmation_and_changes_nothing_until_confirmed(op_client: Client) -> None:
    tasks = [factories.task(name=f"to cancel {i}") for i in range(3)]
    pks = [str(t.pk) for t in tasks]
    asked = op_client.post(LIST, {"action": "cancel_tasks", "_selected_action": pks, "index": "0"})
    assert asked.status_code == 200
    body = asked.content.decode()
    assert "Cancel 3 tasks?" in body and 'name="post" value="yes"' in body and "to cancel 2" in body
    assert set(Task.objects.values_list("status", flat=True)) == {S.PENDING}
    done = op_client.post(LIST, {"action": "cancel_tasks", "_selected_action": pks, "index": "0", "post": "yes"})
    assert done.status_code == 302
    assert set(Task.objects.values_list("status", flat=True)) == {S.CANCELLED}


def test_an_orphaned_running_task_is_flagged_and_filtered_and_counted(op_client: Client) -> None:
    unit = factories.unit("gone-unit")
    orphan = factories.leased_task(unit, name="orphan task")
    held = factories.leased_task(factories.unit("alive-unit"), name="held task")
    ExecutionUnit.objects.filter(pk=unit.pk).update(status=UnitStatus.OFFLINE)
    body = op_client.get(LIST).content.decode()
    row = body[body.index("orphan task") - 1500 : body.index("orphan task") + 1500]
    assert "th-flag-orphan" in row
    ids = listed_ids(op_client, "?flag=orphaned")
    assert ids == {orphan.pk} and held.pk not in ids
    data = dashboard_data()
    assert data["tasks"]["orphaned"] == 1
    assert data["units"]["running"] == 1  # only the held one runs on a unit; the orphan is flagged, not counted


def test_a_type_with_pending_tasks_and_no_unit_to_claim_them_is_warned_about(op_client: Client) -> None:
    factories.unit("data-unit")  # DATA_PROCESSING is served
    factories.task(task_type="DATA_PROCESSING")
    factories.task(task_type="EMAIL")
    factories.unit("mail-drained", unit_type="EMAIL", status=UnitStatus.MAINTENANCE)  # claims nothing
    assert dashboard_data()["unservedTypes"] == [{"taskType": "EMAIL", "pending": 1}]
    body = op_client.get("/admin/dashboard/").content.decode()
    warning = body[body.index('id="th-unserved"') : body.index("</div>", body.index('id="th-unserved"'))]
    assert "hidden" not in warning.split(">")[0] and '/admin/queues/EMAIL/">EMAIL</a> (1 PENDING)' in warning


def test_the_drain_state_has_one_name_maintenance(op_client: Client) -> None:
    factories.unit("m-unit", status=UnitStatus.MAINTENANCE)
    dash = op_client.get("/admin/dashboard/").content.decode()
    assert "draining" not in dash.lower() and ">MAINTENANCE<" in dash
    units = op_client.get("/admin/units/executionunit/").content.decode()
    option = re.search(r'<option value="drain_units">([^<]*)</option>', units)
    assert option is not None and "MAINTENANCE" in option.group(1)


def test_a_units_page_lists_its_tasks_and_has_drain_and_resume_buttons_and_says_who_drained(op_client: Client) -> None:
    unit = factories.unit("page-unit", capacity=10)
    running = factories.leased_task(unit, name="crunching now")
    done = completed_task(unit, name="done before")
    url = f"/admin/units/executionunit/{unit.pk}/change/"
    body = op_client.get(url).content.decode()
    tasks = body[body.index('id="th-unit-tasks"') :]
    assert f"#{running.pk} crunching now" in tasks and f"#{done.pk} done before" in tasks
    assert 'value="drain_units"' in body and 'value="resume_units"' not in body
    op_client.post(
        "/admin/units/executionunit/",
        {"action": "drain_units", "_selected_action": unit.pk, "index": "0", "next": url},
    )
    body = op_client.get(url).content.decode()
    assert 'value="resume_units"' in body and 'value="drain_units"' not in body
    drained = body[body.index('id="th-unit-drained"') :][:200]
    assert "operator user:op" in drained or "operator op" in drained


def test_lists_load_the_live_refresh(op_client: Client) -> None:
    assert "console/live_list.js" in op_client.get(LIST).content.decode()
    assert "console/live_list.js" in op_client.get("/admin/units/executionunit/").content.decode()


def test_the_index_shows_tasks_first_and_the_periodic_jobs_last() -> None:
    client = Client()
    client.force_login(factories_superuser())
    body = client.get("/admin/").content.decode()
    apps = re.findall(r'class="app-([a-z_]+) module', body)
    assert apps[0] == "tasks" and apps[-1] == "django_celery_beat", apps


def factories_superuser() -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_superuser("root", password="x" * 12)


def test_small_items_attempt_links_separated_plurals_and_times_with_seconds(op_client: Client) -> None:
    unit = factories.unit("fmt-unit")
    task = factories.leased_task(unit, name="fmt", max_retries=3)
    log_lines(task, ("ERROR", "only line"))
    reports.fail_attempt(task.pk, unit_id=unit.pk, attempt=1, error="x", retryable=True)
    verbs.act([task.pk], VERBS["retry"], actor=Actor.operator("op"), reason="r", live_unit=lambda _: True)
    Task.objects.filter(pk=task.pk).update(priority=5000)
    claim_tasks(unit.pk, 1, now=timezone.now())
    task = Task.objects.get(pk=task.pk)
    log_lines(task, ("INFO", "a"), ("INFO", "b"))
    body = op_client.get(page(task.pk)).content.decode()
    attempts = body[body.index('class="th-attempts"') :][:1500]
    assert "(1 line, " in attempts and "1 error<" in attempts and "(2 lines)" in attempts
    assert "1 lines" not in body
    assert re.search(r"#2</a>.*?</span></span><span class=\"th-sep\">", attempts, re.S)
    # Read-only times in one format, with seconds (Django's default was "Dec. 1, 2026, 5:22 p.m.").
    assert "a.m." not in body and "p.m." not in body
    created = f"{task.created_at:%Y-%m-%d %H:%M:%S}"
    assert created in body
    listing = op_client.get(LIST).content.decode()
    assert created in listing


def test_raise_priority_from_the_task_page_where_the_state_allows_it(op_client: Client) -> None:
    task = factories.task(priority=3)
    body = op_client.get(page(task.pk)).content.decode()
    assert 'id="th-priority"' in body and 'value="4"' in body
    op_client.post(f"/admin/tasks/task/{task.pk}/priority/", {"priority": "9"})
    assert Task.objects.get(pk=task.pk).priority == 9
    assert op_client.post(f"/admin/tasks/task/{task.pk}/priority/", {"priority": "x"}).status_code == 302
    assert Task.objects.get(pk=task.pk).priority == 9
    cancelled = factories.task()
    verbs.act([cancelled.pk], VERBS["cancel"], actor=Actor.operator("op"), reason="c", live_unit=lambda _: True)
    assert 'id="th-priority"' not in op_client.get(page(cancelled.pk)).content.decode()
    assert timezone.now() - task.created_at < timedelta(hours=1)


def test_the_task_page_and_its_state_history_draw_history_with_one_template(op_client: Client) -> None:
    done = failed_then_completed(factories.unit("one-tpl-unit"))
    table = "admin/tasks/task/history_table.html"
    for url in (page(done.pk), f"/admin/tasks/task/{done.pk}/history/"):
        response = op_client.get(url)
        assert table in [t.name for t in response.templates], url
        assert response.content.decode().count('class="th-history-row"') == done.history.count()
    for name in ("change_form.html", "state_history.html"):
        text = (settings.BASE_DIR / "templates/admin/tasks/task" / name).read_text()
        assert "th-history-row" not in text and table in text, name
