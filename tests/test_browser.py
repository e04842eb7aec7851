"""The operator console in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against pytest-django's live server: log in, dashboard, task list filters, a task's history and
logs, retry from the list and from the task page, and a viewer who can look but not act.

Screenshots go to test-artifacts/ (gitignored). Never run `playwright install`: the browser is the
system's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tasks.models import Task
from tasks.states import TaskStatus
from tasks.transitions import reports
from tests import factories
from tests.console_support import PASSWORD, completed_task, failed_task, log_lines, operator, viewer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"


@pytest.fixture(scope="module")
def _async_unsafe_allowed() -> Iterator[None]:
    """Playwright's sync API keeps an event loop running in this thread; Django refuses database
    calls from such a thread unless told it is fine (it is: the calls are ours, sequential)."""
    old = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if old is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = old


@pytest.fixture(scope="module")
def browser(_async_unsafe_allowed: None) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def world(transactional_db: None) -> dict[str, Any]:
    """Users in both roles, two units, and tasks in every interesting state with logs."""
    op, look = operator("op"), viewer("viewer")
    unit = factories.unit("worker-001", capacity=10)
    email = factories.unit("mailer-01", unit_type="EMAIL", capacity=4)
    broken = factories.leased_task(unit, name="nightly report")
    log_lines(broken, ("INFO", "loading data.csv"), ("WARN", "3 rows skipped"), ("ERROR", "disk full"))
    reports.fail_attempt(broken.pk, unit_id=unit.pk, attempt=broken.attempt, error="disk full", retryable=False)
    other_failure = failed_task(email, error="smtp refused", name="welcome mail")
    for i in range(3):
        completed_task(unit, name=f"import batch {i}")
    factories.leased_task(unit, name="long crunch")
    factories.task(name="waiting job")
    return {"operator": op, "viewer": look, "failed": broken, "other_failure": other_failure}


@pytest.fixture
def page(browser: Browser, live_server: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=live_server.url)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    yield tab
    context.close()


def login(page: Page, username: str) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text(username)


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_operator_opens_the_dashboard_and_it_refreshes_itself(page: Page, world: dict[str, Any]) -> None:
    login(page, "op")
    page.click("text=Open the dashboard")
    expect(page).to_have_url(re.compile(r"/admin/dashboard/$"))
    expect(page.locator('[data-field="tasks.byStatus.FAILED"]')).to_have_text("2")
    expect(page.locator('[data-field="tasks.byStatus.COMPLETED"]')).to_have_text("3")
    expect(page.locator('[data-field="units.online"]')).to_have_text("2")
    expect(page.locator("#th-chart svg rect.th-bar-done")).to_have_count(60)
    bars = page.locator("#th-chart svg rect.th-bar-done").evaluate_all("els => els.map(e => +e.dataset.count)")
    assert sum(bars) == 3  # the three completions, each in its minute
    expect(page.locator("#th-failures tbody tr")).to_have_count(2)
    expect(page.locator("#th-failures")).to_contain_text("disk full")
    shot(page, "dashboard")

    page.goto("/admin/dashboard/?refresh=1")
    page.wait_for_function("document.querySelector('.th-dash').dataset.refreshes >= 2", timeout=20_000)
    expect(page.locator("#th-refresh-error")).to_be_hidden()
    expect(page.locator("#th-chart svg rect.th-bar-done")).to_have_count(60)


def test_operator_filters_the_task_list(page: Page, world: dict[str, Any]) -> None:
    login(page, "op")
    page.goto("/admin/tasks/task/")
    expect(page.locator("#result_list tbody tr")).to_have_count(7)
    page.locator("#changelist-filter").get_by_role("link", name="Failed", exact=True).click()
    expect(page).to_have_url(re.compile(r"status__exact=FAILED"))
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    expect(page.locator("#result_list .th-badge")).to_have_text(["FAILED", "FAILED"])
    page.locator("#changelist-filter").get_by_role("link", name="EMAIL", exact=True).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text("welcome mail")
    shot(page, "tasks-filtered")


def test_operator_reads_a_tasks_history_and_logs(page: Page, world: dict[str, Any]) -> None:
    failed = world["failed"]
    login(page, "op")
    page.goto("/admin/tasks/task/")
    page.get_by_role("link", name="nightly report").click()
    history = page.locator("#th-history tbody tr")
    expect(history).to_have_count(3)
    expect(history.first).to_contain_text("FAILED")
    expect(history.first).to_contain_text("unit:worker-001")
    expect(history.first).to_contain_text("disk full (not retryable)")
    expect(history.last).to_contain_text("created")
    logs = page.locator("#th-logs")
    expect(logs.locator(".th-log-row .th-level-error")).to_have_text("ERROR")
    expect(logs.locator(".th-log-row .th-level-warn")).to_have_text("WARN")
    shot(page, "task-page")
    page.click(f'a[href="/admin/tasks/task/{failed.pk}/attempt/1/log/"]')
    expect(page.locator("#th-attempt-log tbody tr")).to_have_count(3)
    expect(page.locator("#th-attempt-log tbody tr").first).to_contain_text("loading data.csv")
    shot(page, "attempt-log")


def test_operator_retries_failed_tasks_and_sees_the_message_and_the_new_history_row(
    page: Page, world: dict[str, Any]
) -> None:
    failed, other = world["failed"], world["other_failure"]
    login(page, "op")
    page.goto("/admin/tasks/task/?status__exact=FAILED")
    page.check(f'input[name="_selected_action"][value="{failed.pk}"]')
    page.select_option('select[name="action"]', "retry_tasks")
    page.click('button[name="index"]')
    expect(page.locator(".messagelist .success")).to_have_text("Retried 1 task.")
    shot(page, "retry-message")
    page.goto(f"/admin/tasks/task/{failed.pk}/change/")
    newest = page.locator("#th-history tbody tr").first
    expect(newest).to_contain_text("PENDING")
    expect(newest).to_contain_text("user:op")
    expect(newest).to_contain_text("retried from the operator console")

    # The same action from the other task's own page, which it returns to.
    page.goto(f"/admin/tasks/task/{other.pk}/change/")
    page.click("#th-task-actions button.th-action-retry_tasks")
    expect(page).to_have_url(re.compile(rf"/admin/tasks/task/{other.pk}/change/$"))
    expect(page.locator(".messagelist .success")).to_have_text("Retried 1 task.")
    expect(page.locator("#th-history tbody tr").first).to_contain_text("user:op")
    expect(page.locator("#th-task-actions button.th-action-retry_tasks")).to_have_count(0)
    shot(page, "retry-history")
    assert Task.objects.get(pk=other.pk).status == TaskStatus.PENDING


def test_viewer_can_look_but_not_act(page: Page, world: dict[str, Any]) -> None:
    failed = world["failed"]
    login(page, "viewer")
    page.goto("/admin/dashboard/")
    expect(page.locator('[data-field="tasks.byStatus.FAILED"]')).to_have_text("2")
    page.goto("/admin/tasks/task/")
    expect(page.locator("#result_list tbody tr")).to_have_count(7)
    expect(page.locator('select[name="action"] option[value="retry_tasks"]')).to_have_count(0)
    page.goto(f"/admin/tasks/task/{failed.pk}/change/")
    expect(page.locator("#th-history tbody tr")).to_have_count(3)
    expect(page.locator("#th-task-actions")).to_have_count(0)
    expect(page.locator('input[name="_save"]')).to_have_count(0)
    shot(page, "viewer-task-page")
    page.goto("/admin/units/executionunit/")
    expect(page.locator('select[name="action"] option[value="drain_units"]')).to_have_count(0)
    assert Task.objects.get(pk=failed.pk).status == TaskStatus.FAILED
