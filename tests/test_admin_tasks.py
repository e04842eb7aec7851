"""Tasks in the operator console: list, filters, task page, actions, roles."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from taskhub.base.actors import Actor
from taskhub.console.paging import CappedCountPaginator
from tasks.models import ControlCommand, Task, TaskStatusHistory
from tasks.states import TaskStatus
from tasks.transitions import reports, verbs
from tests import factories
from tests.console_support import (
    completed_task,
    failed_task,
    log_lines,
    messages_of,
    operator,
    staff,
    viewer,
)
from units.claim import claim_tasks

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


@pytest.fixture
def viewer_client() -> Client:
    client = Client()
    client.force_login(viewer())
    return client


def act(client: Client, action: str, *pks: int, **extra: str) -> Any:
    return client.post(
        LIST, {"action": action, "_selected_action": [str(pk) for pk in pks], "index": "0", **extra}, follow=True
    )


def _make_rows(n: int, tag: str) -> None:
    """n tasks, about a quarter of them RUNNING on three units."""
    units = [factories.unit(f"{tag}-unit-{i}", capacity=1000) for i in range(3)]
    for i in range(n):
        factories.task(name=f"bulk {i}", priority=i % 7)
    for unit in units:
        claim_tasks(unit.pk, n // 12 + 1, now=timezone.now())


# --- the list ---------------------------------------------------------------------------------


def test_changelist_query_count_does_not_grow_with_rows(op_client: Client, django_assert_max_num_queries) -> None:
    _make_rows(10, "small")
    op_client.get(LIST)  # warm per-process caches (content types, permissions)
    with CaptureQueriesContext(connection) as small:
        assert op_client.get(LIST).status_code == 200
    _make_rows(190, "big")  # 200 rows: more than a page of 50
    with CaptureQueriesContext(connection) as big:
        response = op_client.get(LIST)
    assert response.status_code == 200
    assert response.content.count(b'class="action-checkbox"') == 50
    assert len(big) == len(small), [q["sql"] for q in big.captured_queries]
    # 9: a name search first finds the edge of its window (at most API_SEARCH_WINDOW + 1 ids).
    with django_assert_max_num_queries(9):
        op_client.get(LIST + "?status__exact=RUNNING&task_type=DATA_PROCESSING&q=bulk")


def test_changelist_shows_the_operator_columns(op_client: Client) -> None:
    unit = factories.unit("col-unit")
    task = factories.leased_task(unit, name="visible columns")
    Task.objects.filter(pk=task.pk).update(progress=40)
    body = op_client.get(LIST).content.decode()
    row = body[body.index("visible columns") - 600 :]
    assert 'class="th-badge th-status-running"' in row
    assert f'href="/admin/units/executionunit/{unit.pk}/change/"' in row
    assert 'style="width: 40%"' in row  # the progress bar
    assert "0/3" in row  # retries used / allowed
    for header in ("task type", "priority", "unit", "attempt", "retries", "progress", "created", "duration"):
        assert f">{header}" in body.lower() or f"{header}</" in body.lower(), header


def test_changelist_filters_by_status_type_unit_and_date_and_searches_id_and_name(op_client: Client) -> None:
    unit = factories.unit("filter-unit", unit_type="EMAIL")
    emailed = factories.leased_task(unit, name="send newsletter")
    other = factories.task(name="crunch numbers", task_type="DATA_PROCESSING")
    old = factories.task(name="ancient", now=timezone.now() - timedelta(days=40))

    def ids(query: str) -> set[int]:
        response = op_client.get(LIST + query)
        assert response.status_code == 200
        return {int(pk) for pk in re.findall(rb'name="_selected_action" value="(\d+)"', response.content)}

    assert ids("?status__exact=RUNNING") == {emailed.pk}
    assert ids("?task_type=DATA_PROCESSING") == {other.pk, old.pk}
    assert ids(f"?unit__id__exact={unit.pk}") == {emailed.pk}
    week_ago = (timezone.now() - timedelta(days=7)).replace(microsecond=0).isoformat()
    assert old.pk not in ids("?created_at__gte=" + week_ago.replace("+", "%2B"))
    assert ids(f"?q=%23{other.pk}") == {other.pk}
    assert ids("?q=newsletter") == {emailed.pk}
    assert b"EMAIL" in op_client.get(LIST).content  # the type filter offers the units' types


def test_changelist_count_is_capped_not_counted_in_full(op_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CappedCountPaginator, "cap", 5)
    for i in range(8):
        factories.task(name=f"many {i}")
    with CaptureQueriesContext(connection) as queries:
        body = op_client.get(LIST).content.decode()
    assert "5+ tasks" in re.sub(r"\s+", " ", body)
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT 6" in sql for sql in counts), counts


# --- the task page ------------------------------------------------------------------------------


def test_task_page_shows_history_newest_first_with_actor_and_reason_and_logs(op_client: Client) -> None:
    unit = factories.unit("page-unit")
    task = factories.leased_task(unit, name="with history")
    log_lines(task, ("INFO", "starting up"), ("WARN", "disk nearly full"), ("ERROR", "gave up: disk full"))
    reports.fail_attempt(task.pk, unit_id=unit.pk, attempt=1, error="disk full", retryable=False)
    body = op_client.get(page(task.pk)).content.decode()

    history = body[body.index('id="th-history"') : body.index('id="th-logs"')]
    rows = re.findall(r'<tr class="th-history-row">(.*?)</tr>', history, re.S)
    assert len(rows) == 3
    assert "FAILED" in rows[0] and "disk full (not retryable)" in rows[0] and "unit:page-unit" in rows[0]
    assert "claimed" in rows[1] and "created" in rows[2] and "job:test" in rows[2]
    logs = body[body.index('id="th-logs"') :]
    assert 'class="th-level th-level-error">ERROR' in logs and "gave up: disk full" in logs
    assert 'class="th-log-row th-row-warn"' in logs
    assert f'href="/admin/tasks/task/{task.pk}/attempt/1/log/"' in logs
    # State fields are not form inputs; only what the state allows is.
    assert 'name="status"' not in body and 'name="attempt"' not in body and 'name="unit"' not in body
    assert 'name="name"' in body  # a FAILED task's name may change
    assert 'value="retry_tasks"' in body and 'value="cancel_tasks"' in body and 'value="pause_tasks"' not in body


def test_task_page_pages_its_logs(op_client: Client) -> None:
    unit = factories.unit("paging-unit")
    task = factories.leased_task(unit)
    log_lines(task, *[("INFO", f"line {i:03d}") for i in range(120)])
    first = op_client.get(page(task.pk)).content.decode()
    assert "line 119" in first and "line 069" not in first and "page 1 of 3" in first
    third = op_client.get(page(task.pk) + "?logs_page=3").content.decode()
    assert "line 000" in third and "line 119" not in third


def test_attempt_log_view_shows_only_that_attempt_in_order_and_as_text(op_client: Client) -> None:
    unit = factories.unit("attempt-unit")
    task = factories.leased_task(unit)
    log_lines(task, ("INFO", "first attempt says hi"), ("ERROR", "first attempt dies"))
    reports.fail_attempt(task.pk, unit_id=unit.pk, attempt=1, error="x", retryable=False)
    verbs.retry_task(task.pk, actor=Actor.system("test"))
    claim_tasks(unit.pk, 1, now=timezone.now())
    log_lines(Task.objects.get(pk=task.pk), ("INFO", "second attempt line"))

    html = op_client.get(f"/admin/tasks/task/{task.pk}/attempt/1/log/").content.decode()
    assert html.index("first attempt says hi") < html.index("first attempt dies")
    assert "second attempt line" not in html
    response = op_client.get(f"/admin/tasks/task/{task.pk}/attempt/2/log/?format=text")
    text = response.getvalue().decode()
    assert response["Content-Type"].startswith("text/plain")
    assert "INFO  second attempt line" in text and "first attempt" not in text


# --- actions --------------------------------------------------------------------------------------


def test_retry_action_retries_failed_tasks_names_the_operator_and_says_why_others_did_not(op_client: Client) -> None:
    unit = factories.unit("retry-unit")
    failed = failed_task(unit)
    done = completed_task(unit)
    response = act(op_client, "retry_tasks", failed.pk, done.pk)
    assert response.status_code == 200
    msgs = messages_of(response)
    assert "Retried 1 task of 2 selected." in msgs
    assert f"Not changed: 1 task (#{done.pk}): only FAILED tasks can be retried, these are COMPLETED." in msgs
    failed.refresh_from_db()
    assert failed.status == S.PENDING
    last = TaskStatusHistory.objects.filter(task=failed).order_by("-id").first()
    assert last is not None
    assert (last.from_status, last.to_status, last.actor_type, last.actor) == (
        S.FAILED,
        S.PENDING,
        "operator",
        "user:op",
    )
    assert "operator console" in last.reason
    assert Task.objects.get(pk=done.pk).status == S.COMPLETED


def test_pause_resume_and_cancel_actions_go_through_the_transitions(op_client: Client) -> None:
    unit = factories.unit("pause-unit")
    running = factories.leased_task(unit)
    act(op_client, "pause_tasks", running.pk)
    running.refresh_from_db()
    assert running.status == S.PAUSED and running.pending_command == ControlCommand.PAUSE
    chain = list(TaskStatusHistory.objects.filter(task=running).order_by("id").values_list("to_status", "actor"))
    assert chain[-2:] == [(S.PENDING, "job:pause-request"), (S.PAUSED, "user:op")]

    response = act(op_client, "resume_tasks", running.pk)
    assert "Resumed 1 task." in messages_of(response)
    assert Task.objects.get(pk=running.pk).status == S.PENDING

    response = act(op_client, "cancel_tasks", running.pk)  # asks first, changes nothing
    assert Task.objects.get(pk=running.pk).status == S.PENDING
    response = act(op_client, "cancel_tasks", running.pk, post="yes")
    assert "Cancelled 1 task." in messages_of(response)
    assert Task.objects.get(pk=running.pk).status == S.CANCELLED
    response = act(op_client, "cancel_tasks", running.pk, post="yes")
    assert f"Not changed: 1 task (#{running.pk}): CANCELLED is a final state." in messages_of(response)


def test_resume_never_retries_a_failed_task(op_client: Client) -> None:
    failed = failed_task(factories.unit("resume-unit"))
    response = act(op_client, "resume_tasks", failed.pk)
    assert f"Not changed: 1 task (#{failed.pk}): only PAUSED tasks can be resumed, these are FAILED." in messages_of(
        response
    )
    assert Task.objects.get(pk=failed.pk).status == S.FAILED


def test_requeue_action_takes_back_a_task_no_live_unit_holds_naming_the_operator(op_client: Client) -> None:
    orphan = factories.task()
    verbs.change_status(orphan.pk, S.RUNNING, actor=Actor.api_key("seed"))  # no unit holds it
    held = factories.leased_task(factories.unit("requeue-unit"))
    waiting = factories.task()
    response = act(op_client, "requeue_tasks", orphan.pk, held.pk, waiting.pk)
    msgs = messages_of(response)
    assert "Requeued 1 task of 3 selected." in msgs
    assert (
        f"Not changed: 1 task (#{held.pk}): a live unit holds them: cancel or pause them, or deregister the unit."
        in msgs
    )
    assert f"Not changed: 1 task (#{waiting.pk}): only RUNNING tasks can be requeued, these are PENDING." in msgs
    orphan.refresh_from_db()
    assert (orphan.status, orphan.lease_expires_at, orphan.failover_count) == (S.PENDING, None, 0)
    last = TaskStatusHistory.objects.filter(task=orphan).latest("id")
    assert (last.from_status, last.to_status, last.actor_type, last.actor, last.reason) == (
        S.RUNNING,
        S.PENDING,
        "operator",
        "user:op",
        "requeued from the operator console",
    )
    assert Task.objects.get(pk=held.pk).status == S.RUNNING


def test_task_page_offers_requeue_only_for_a_running_task_no_live_unit_holds(op_client: Client) -> None:
    orphan = factories.task()
    verbs.change_status(orphan.pk, S.RUNNING, actor=Actor.api_key("seed"))
    held = factories.leased_task(factories.unit("button-unit"))
    button = 'value="requeue_tasks"'
    orphan_page = op_client.get(page(orphan.pk)).content.decode()
    assert button in orphan_page and "no unit holds it: back to PENDING at" in orphan_page
    assert button not in op_client.get(page(held.pk)).content.decode()
    assert button not in op_client.get(page(factories.task().pk)).content.decode()


def test_an_action_run_from_the_task_page_returns_to_it(op_client: Client) -> None:
    failed = failed_task(factories.unit("next-unit"))
    response = op_client.post(
        LIST, {"action": "retry_tasks", "_selected_action": str(failed.pk), "index": "0", "next": page(failed.pk)}
    )
    assert response.status_code == 302 and response["Location"] == page(failed.pk)
    evil = op_client.post(
        LIST,
        {
            "action": "cancel_tasks",
            "_selected_action": str(failed.pk),
            "index": "0",
            "next": "https://evil.test/",
            "post": "yes",
        },
    )
    assert evil["Location"] != "https://evil.test/"


def test_editing_changes_only_what_the_state_allows_and_never_the_status(op_client: Client) -> None:
    task = factories.task(name="editable", priority=1)
    form = {"name": "renamed", "priority": "9", "max_retries": "3", "config": "{}", "status": S.COMPLETED}
    response = op_client.post(page(task.pk), form)
    assert response.status_code == 302, response.content[:2000]
    task.refresh_from_db()
    assert (task.name, task.priority, task.status) == ("renamed", 9, S.PENDING)

    running = factories.leased_task(factories.unit("edit-unit"))
    body = op_client.get(page(running.pk)).content.decode()
    assert 'name="priority"' in body and 'name="config"' not in body  # RUNNING: config is fixed


# --- roles ------------------------------------------------------------------------------------------


def test_viewer_sees_tasks_but_has_no_actions_and_cannot_post_them(viewer_client: Client) -> None:
    failed = failed_task(factories.unit("viewer-unit"))
    listing = viewer_client.get(LIST)
    assert listing.status_code == 200 and b"retry_tasks" not in listing.content
    detail = viewer_client.get(page(failed.pk))
    assert detail.status_code == 200
    assert b"th-task-actions" not in detail.content and b'name="name"' not in detail.content
    assert b"th-history" in detail.content
    act(viewer_client, "retry_tasks", failed.pk)
    assert Task.objects.get(pk=failed.pk).status == S.FAILED
    assert viewer_client.post(page(failed.pk), {"name": "hijacked"}).status_code == 403


def test_staff_without_a_role_sees_nothing() -> None:
    client = Client()
    client.force_login(staff("nobody"))
    assert b"have permission to view or edit anything" in client.get("/admin/").content
    assert client.get(LIST).status_code == 403
    assert client.get("/admin/dashboard/").status_code == 403


def test_tasks_cannot_be_added_or_deleted_in_the_admin(op_client: Client) -> None:
    task = factories.task()
    assert op_client.get("/admin/tasks/task/add/").status_code == 403
    assert op_client.get(f"/admin/tasks/task/{task.pk}/delete/").status_code == 403
    assert b"delete_selected" not in op_client.get(LIST).content


def test_the_search_for_an_id_is_a_primary_key_lookup_not_a_scan_of_names(op_client: Client) -> None:
    """The console searches as the API does (tasks.selectors.search_tasks): digits name a task id,
    answered by the primary key; `id = x OR name LIKE '%x%'` read every row (1.7 s at 1M rows)."""
    task = factories.task(name="needle")
    factories.task(name=f"has {task.pk} in its name")
    op_client.get(LIST)  # warm per-process caches
    with CaptureQueriesContext(connection) as queries:
        response = op_client.get(f"{LIST}?q={task.pk}")
    assert response.status_code == 200
    assert {int(pk) for pk in re.findall(rb'name="_selected_action" value="(\d+)"', response.content)} == {task.pk}
    reads = [q["sql"] for q in queries.captured_queries if Task._meta.db_table in q["sql"] and "SELECT" in q["sql"]]
    assert reads and not [sql for sql in reads if "LIKE" in sql.upper()], reads


def test_a_name_search_looks_at_the_newest_window_and_says_so(op_client: Client, settings: Any) -> None:
    settings.API_SEARCH_WINDOW = 3
    old = factories.task(name="report old")
    newer = [factories.task(name=f"report {i}") for i in range(3)]
    response = op_client.get(f"{LIST}?q=report")
    shown = {int(pk) for pk in re.findall(rb'name="_selected_action" value="(\d+)"', response.content)}
    assert shown == {t.pk for t in newer} and old.pk not in shown
    assert any("newest 3 tasks" in m for m in messages_of(response))
