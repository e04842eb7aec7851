"""Issue 17's operator journeys in a real headless Chromium (Debian's, driven by Playwright, as
tests/test_browser.py): a dead task -> why -> retry; pause a queue and resume it; drain a unit and see
its tasks finish; cancel with confirmation; the dashboard's tiles match the API's stats; the list
refreshes itself keeping its filters and the selection. Screenshots of each step go to test-artifacts/journey-*.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from taskhub.jobs.rollups import MinuteRollup, RollupScope, minute_start
from tasks.models import Task
from tasks.states import TaskStatus
from tasks.transitions import reports
from tests import factories
from tests.console_support import completed_task, failed_task, operator
from tests.test_browser import _async_unsafe_allowed, browser, login, shot  # noqa: F401 (fixtures)
from units.claim import claim
from units.models import ExecutionUnit
from units.states import UnitStatus

S = TaskStatus


@pytest.fixture
def world(transactional_db: None) -> dict[str, Any]:
    operator("op")
    unit = factories.unit("worker-001", capacity=10)
    factories.unit("mailer-01", unit_type="EMAIL", capacity=4)
    dead = failed_task(unit, error="disk full: /var/data has 0 bytes free", name="nightly report")
    waiting = factories.leased_task(unit, name="flaky fetch", max_retries=3)
    reports.fail_attempt(waiting.pk, unit_id=unit.pk, attempt=1, error="timeout talking to S3", retryable=True)
    completed_task(unit, name="import batch")
    running = [factories.leased_task(unit, name=f"long crunch {i}") for i in range(2)]
    pending = [factories.task(name=f"waiting job {i}") for i in range(3)]
    return {"unit": unit, "dead": dead, "waiting": waiting, "running": running, "pending": pending}


@pytest.fixture
def page(browser: Browser, live_server: Any) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=live_server.url)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    yield tab
    context.close()


def test_dead_task_why_and_retry(page: Page, world: dict[str, Any]) -> None:
    dead = world["dead"]
    login(page, "op")
    page.goto("/admin/dashboard/")
    expect(page.locator('[data-field="tasks.dead"]')).to_have_text("1")
    page.click("#th-tile-dead")
    expect(page).to_have_url(re.compile(r"failed=dead"))
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text("disk full")
    shot(page, "journey-dead-1-list")
    page.get_by_role("link", name="nightly report").click()
    # Why: the error leads the page, above the fields.
    error = page.locator("#th-current-error")
    expect(error).to_contain_text("disk full: /var/data has 0 bytes free")
    expect(page.locator("#th-summary-kind")).to_have_text("dead")
    box = error.bounding_box()
    assert box is not None and box["y"] < 500, box  # in the first screen, not ~1,000 px down
    expect(page.locator("#th-timeline .th-attempt")).to_have_count(2)
    shot(page, "journey-dead-2-why")
    page.click("#th-task-actions button.th-action-retry_tasks")
    expect(page.locator(".messagelist .success")).to_have_text("Retried 1 task.")
    expect(page.locator("#th-summary-status")).to_have_text("PENDING")
    expect(page.locator("#th-current-error")).to_have_count(0)
    expect(page.locator("#th-timeline .th-event-retry")).to_have_count(1)
    shot(page, "journey-dead-3-retried")
    assert Task.objects.get(pk=dead.pk).status == S.PENDING


def test_pause_a_queue_and_resume_it(page: Page, world: dict[str, Any]) -> None:
    unit = world["unit"]
    MinuteRollup.objects.bulk_create(
        MinuteRollup(
            minute=minute_start(timezone.now()) - timedelta(minutes=age),
            scope=RollupScope.TYPE,
            key="DATA_PROCESSING",
            pending=3 + age % 4,
            running=2,
            completed=age % 5,
            failed=age % 7 == 0,
        )
        for age in range(1, 40)
    )
    past = minute_start(timezone.now()) - timedelta(minutes=5)
    for i in range(6):  # claimed and finished five minutes ago: the percentiles' minute
        done = factories.leased_task(unit, now=past + timedelta(seconds=i))
        reports.complete_attempt(
            done.pk, unit_id=unit.pk, attempt=1, result={}, now=past + timedelta(seconds=10 + 5 * i)
        )
    login(page, "op")
    page.goto("/admin/dashboard/")
    page.click("#th-queues-link")
    expect(page.locator("#th-queue-list")).to_contain_text("DATA_PROCESSING")
    page.click('#th-queue-list a.th-queue-link:text-is("DATA_PROCESSING")')
    expect(page).to_have_url(re.compile(r"/admin/queues/DATA_PROCESSING/$"))
    expect(page.locator("#th-queue-status")).to_have_text("ACTIVE")
    expect(page.locator('[data-field="byStatus.PENDING"]')).to_have_text("3")
    expect(page.locator("#th-queue-units")).to_contain_text("worker-001")
    expect(page.locator("#th-queue-depth")).to_be_visible()
    expect(page.locator("#th-queue-wait")).to_be_visible()
    shot(page, "journey-queue-1-page")
    page.click("#th-queue-pause")
    expect(page.locator(".messagelist .success")).to_contain_text("Paused queue DATA_PROCESSING")
    expect(page.locator("#th-queue-status")).to_have_text("PAUSED")
    expect(page.locator("#th-queue-state")).to_contain_text("by user:op")
    expect(page.locator("#th-queue-changes")).to_contain_text("paused: False → True")
    assert claim(unit.pk, 5, now=timezone.now()).tasks == []  # a paused queue's tasks are not claimed
    shot(page, "journey-queue-2-paused")
    page.fill("#id_max_running", "4")
    page.click("#th-queue-limits-save")
    expect(page.locator(".messagelist .success")).to_contain_text("maxRunning None → 4")
    page.click("#th-queue-resume")
    expect(page.locator(".messagelist .success")).to_contain_text("Resumed queue DATA_PROCESSING")
    expect(page.locator("#th-queue-status")).to_have_text("ACTIVE")
    shot(page, "journey-queue-3-resumed")
    assert len(claim(unit.pk, 5, now=timezone.now()).tasks) == 2  # resumed: 2 more, up to its new limit of 4 running


def test_drain_a_unit_and_see_its_tasks_finish(page: Page, world: dict[str, Any]) -> None:
    unit, running = world["unit"], world["running"]
    login(page, "op")
    page.goto(f"/admin/units/executionunit/{unit.pk}/change/")
    tasks = page.locator("#th-unit-tasks")
    expect(tasks.locator("tr.th-unit-task-running")).to_have_count(2)
    page.click("#th-unit-actions button.th-action-drain_units")
    expect(page.locator(".messagelist .success")).to_have_text("Drained 1 unit.")
    expect(page.locator("#th-unit-status")).to_have_text("MAINTENANCE")
    expect(page.locator("#th-unit-drained")).to_contain_text("op")
    expect(page.locator("#th-unit-actions button.th-action-resume_units")).to_have_count(1)
    expect(tasks.locator("tr.th-unit-task-running")).to_have_count(2)  # a drained unit keeps its tasks
    shot(page, "journey-drain-1-drained")
    for task in running:  # the unit finishes what it holds
        reports.complete_attempt(task.pk, unit_id=unit.pk, attempt=task.attempt, result={"ok": True})
    page.reload()
    expect(tasks.locator("tr.th-unit-task-running")).to_have_count(0)
    expect(tasks.locator("tr.th-unit-task-completed")).to_have_count(3)
    shot(page, "journey-drain-2-finished")
    page.click("#th-unit-actions button.th-action-resume_units")
    expect(page.locator("#th-unit-status")).to_have_text("ONLINE")
    assert ExecutionUnit.objects.get(pk=unit.pk).status == UnitStatus.ONLINE


def test_cancel_asks_for_confirmation(page: Page, world: dict[str, Any]) -> None:
    first, second, third = world["pending"]
    login(page, "op")
    page.goto("/admin/tasks/task/?status__exact=PENDING")
    for task in (first, second):
        page.check(f'input[name="_selected_action"][value="{task.pk}"]')
    page.select_option('select[name="action"]', "cancel_tasks")
    page.click('button[name="index"]')
    expect(page.locator("#th-confirm-text")).to_contain_text("Cancel 2 tasks?")
    expect(page.locator("#th-confirm-list li")).to_have_count(2)
    shot(page, "journey-cancel-1-confirm")
    page.click("#th-confirm-no")
    assert set(Task.objects.filter(pk__in=[first.pk, second.pk]).values_list("status", flat=True)) == {S.PENDING}
    for task in (first, second):
        page.check(f'input[name="_selected_action"][value="{task.pk}"]')
    page.select_option('select[name="action"]', "cancel_tasks")
    page.click('button[name="index"]')
    page.click("#th-confirm-yes")
    expect(page.locator(".messagelist .success")).to_have_text("Cancelled 2 tasks.")
    shot(page, "journey-cancel-2-done")
    # From a task's own page: the same question, then back to the page.
    page.goto(f"/admin/tasks/task/{third.pk}/change/")
    page.click("#th-task-actions button.th-action-cancel_tasks")
    expect(page.locator("#th-confirm-text")).to_contain_text("Cancel 1 task?")
    page.click("#th-confirm-yes")
    expect(page).to_have_url(re.compile(rf"/admin/tasks/task/{third.pk}/change/$"))
    expect(page.locator("#th-summary-status")).to_have_text("CANCELLED")
    assert set(Task.objects.filter(pk__in=[t.pk for t in world["pending"]]).values_list("status", flat=True)) == {
        S.CANCELLED
    }


def test_the_dashboard_tiles_match_the_api_stats(page: Page, world: dict[str, Any]) -> None:
    login(page, "op")
    page.goto("/admin/dashboard/")
    stats = page.request.get("/api/v1/tasks/stats").json()
    for status, n in stats["byStatus"].items():
        expect(page.locator(f'[data-field="tasks.byStatus.{status}"]')).to_have_text(str(n))
    expect(page.locator('[data-field="tasks.dead"]')).to_have_text(str(stats["dead"]))
    expect(page.locator('[data-field="tasks.waitingRetry"]')).to_have_text(str(stats["waitingRetry"]))
    expect(page.locator('[data-field="tasks.total"]')).to_have_text(str(stats["total"]))
    assert (stats["dead"], stats["waitingRetry"]) == (1, 1)
    expect(page.locator("#th-unserved")).to_be_hidden()  # both types have a unit
    ExecutionUnit.objects.filter(pk="worker-001").update(status=UnitStatus.OFFLINE)
    expect(page.locator("#th-unserved")).to_be_visible(timeout=15_000)  # the next refresh says so
    expect(page.locator("#th-unserved-list")).to_contain_text("DATA_PROCESSING (3 PENDING)")
    expect(page.locator('[data-field="tasks.orphaned"]')).to_have_text("2")
    shot(page, "journey-dashboard-tiles")


def test_the_list_refreshes_itself_and_keeps_filters_and_selection(page: Page, world: dict[str, Any]) -> None:
    running = world["running"]
    login(page, "op")
    page.evaluate("localStorage.setItem('th-live-ms', '700')")
    page.goto("/admin/tasks/task/?status__exact=RUNNING")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    page.check(f'input[name="_selected_action"][value="{running[0].pk}"]')
    Task.objects.filter(pk=running[0].pk).update(progress=70)
    page.wait_for_function("+document.getElementById('th-live').dataset.refreshes >= 2")
    row = page.locator(f'#result_list tr:has(input[value="{running[0].pk}"])')
    expect(row.locator(".th-bar-label")).to_have_text("70%")
    expect(page.locator(f'input[name="_selected_action"][value="{running[0].pk}"]')).to_be_checked()
    expect(page).to_have_url(re.compile(r"status__exact=RUNNING"))
    # A row that leaves the filter while something is selected is kept, marked, not dropped.
    reports.complete_attempt(running[1].pk, unit_id="worker-001", attempt=1, result={})
    expect(page.locator(f'#result_list tr.th-gone:has(input[value="{running[1].pk}"])')).to_have_count(1)
    expect(page.locator(f'input[name="_selected_action"][value="{running[0].pk}"]')).to_be_checked()
    expect(page.locator(".action-counter")).to_contain_text("1 of 2 selected")
    shot(page, "journey-live-list")
