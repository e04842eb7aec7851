"""Django's Tasks framework on taskhub, end to end: the example project (examples/django_tasks)
enqueues with `.enqueue()` through `taskhub_client.django_tasks.TaskhubBackend` and reads
`get_result()` until done, against a real hub (`manage.py runhub`) and a real `taskhub-unit`
process running the Django tasks handler (`taskhub_unit.django_tasks:run`). Also the handler's
error text and its refusals, in this process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.hub import Hub, call, running_hub, scrubbed_environ, unit_argv, unit_env
from testkit.processes import ROOT, Process
from testkit.waiting import wait_for

EXAMPLE = ROOT / "examples" / "django_tasks"
SDK = ROOT / "clients" / "python"
HANDLER = "taskhub_unit.django_tasks:run"


def example_env(hub: Hub, **extra: str) -> dict[str, str]:
    """The example project's environment: the SDK from the tree, the hub's address and key."""
    return scrubbed_environ() | {
        "PYTHONPATH": f"{SDK}:{EXAMPLE}",
        "DJANGO_SETTINGS_MODULE": "exampleproject.settings",
        "TASKHUB_URL": hub.url,
        "TASKHUB_API_KEY": hub.key,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def unit_online(hub: Hub, unit: Process) -> bool:
    assert unit.running, f"the unit exited:\n{unit.output()[-3000:]}"
    status, body = call(hub.base, "GET", "/execution-units/django-unit", hub.key)
    return status == 200 and body["status"] == "ONLINE"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with (
        tempfile.TemporaryDirectory(prefix="taskhub-djtasks-") as tmp,
        running_hub(Path(tmp), TASK_RETRY_BACKOFF_BASE="1", DEBUG="false", ALLOWED_HOSTS="127.0.0.1,localhost") as hub,
    ):
        yield hub


@pytest.mark.slow
def test_example_project_runs_its_tasks_through_a_taskhub_unit(hub: Hub, tmp_path: Path) -> None:
    env = unit_env(hub.url, hub.key, "django-unit", "DJANGO_REPORTS", 4, TASKHUB_HANDLER=HANDLER) | example_env(hub)
    env |= {"TASKHUB_POLL_INTERVAL": "0.2", "TASKHUB_RETRY_MAX": "1"}
    unit = Process("django-unit", unit_argv(), env=env, log_path=tmp_path / "unit.log", cwd=EXAMPLE).start()
    try:
        wait_for(lambda: unit_online(hub, unit), 30, "the unit to register")
        done = subprocess.run(
            [sys.executable, "manage.py", "run_reports", "--timeout", "60"],
            cwd=EXAMPLE,
            env=example_env(hub),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{unit.output()[-3000:]}"
    finally:
        unit.stop(10)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    enqueued, finished = lines[0]["enqueued"], lines[1]["finished"]
    assert [r["status"] for r in enqueued] == ["READY", "READY"]
    assert enqueued[0]["priority"] == 10 and enqueued[0]["runAfter"] is not None

    counted, broken = finished
    assert counted["status"] == "SUCCESSFUL", (counted, unit.output()[-3000:])
    assert counted["returnValue"] == {"words": 10, "top": [["the", 3], ["and", 2]]}
    assert counted["args"] == ["the quick fox and the lazy dog and the cat"] and counted["kwargs"] == {"top": 2}
    assert counted["attempts"] == 1 and counted["workerIds"] == ["django-unit"] and counted["errors"] == []
    assert counted["queueName"] == "reports" and counted["priority"] == 10

    # Raised on both attempts (max_retries=1: taskhub retried it once), then FAILED for good.
    assert broken["status"] == "FAILED" and broken["returnValue"] is None
    assert broken["attempts"] == 2 and broken["workerIds"] == ["django-unit", "django-unit"]
    [error] = broken["errors"]
    assert error["class"] == "reports.tasks.ReportError"
    assert error["traceback"].startswith("Traceback (most recent call last):")
    assert "reports.tasks.ReportError: report 'q3' has no data (attempt 2)" in error["traceback"]
    assert "in broken_report\n    raise ReportError(" in error["traceback"]

    # What the hub holds: queue -> taskType, priority, run_after -> scheduledAt, taskhub's own knobs.
    hub_counted: dict[str, Any] = hub.api("GET", f"/tasks/{counted['id']}")
    hub_broken: dict[str, Any] = hub.api("GET", f"/tasks/{broken['id']}")
    assert hub_counted["taskType"] == hub_broken["taskType"] == "DJANGO_REPORTS"
    assert hub_counted["name"] == "reports.tasks.word_count" and hub_counted["priority"] == 10
    assert hub_counted["scheduledAt"] is not None and hub_counted["status"] == "COMPLETED"
    assert hub_counted["config"]["djangoTask"] == "reports.tasks.word_count"
    assert (hub_counted["maxRetries"], hub_counted["timeoutSeconds"]) == (0, 300)  # OPTIONS
    assert (hub_broken["maxRetries"], hub_broken["retryCount"], hub_broken["status"]) == (1, 1, "FAILED")
    assert hub_broken["error"].startswith("reports.tasks.ReportError: report 'q3' has no data (attempt 2)\n\n")


def test_a_unit_without_django_settings_refuses_to_start() -> None:
    env = scrubbed_environ() | {"PYTHONPATH": str(EXAMPLE)}
    argv = [*unit_argv(), "--server", "http://127.0.0.1:9", "--enroll-key", "k", "--type", "X", "--handler", HANDLER]
    done = subprocess.run(argv, env=env, cwd=EXAMPLE, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "needs DJANGO_SETTINGS_MODULE" in done.stderr


def test_the_error_text_names_the_exception_class_and_keeps_the_traceback_within_bounds() -> None:
    from taskhub_unit import django_tasks

    class Local(Exception):
        pass

    try:
        raise ValueError("bad\n  input")
    except ValueError as exc:
        text = django_tasks.describe(exc)
    head, _, trace = text.partition("\n\n")
    assert head == "ValueError: bad input"
    assert trace.startswith("Traceback (most recent call last):") and trace.endswith("ValueError: bad\n  input\n")

    long = django_tasks.describe(Local("x" * 50_000))
    assert len(long) <= django_tasks.MAX_ERROR_CHARS
    assert long.startswith(f"{__name__}.test_the_error_text_names_the_exception_class_and_keeps_the_traceback")
    assert long.partition("\n\n")[2].startswith("...\n")
