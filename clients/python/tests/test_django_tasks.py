"""TaskhubBackend (Django's Tasks framework) against a real hub: what `.enqueue()` creates, and
how `get_result()` maps each state, result and error back, with a unit driven by hand reporting
what the unit's Django tasks handler reports (the end-to-end run with a real `taskhub-unit` and the
example project is the hub's tests/test_django_tasks.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import django
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django_tasks import TaskResultStatus, task_backends
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist, TaskResultMismatch

from hub import Hub
from taskhub_client import Client
from taskhub_client.django_tasks import TaskhubBackend, TaskhubCancelled, TaskhubFailure

pytestmark = pytest.mark.hub

# As the unit's handler reports it, less the final newline (the hub strips the text).
TRACE = 'Traceback (most recent call last):\n  File "djtasks_app.py", line 19, in boom\ndjtasks_app.Boom: nope'


@pytest.fixture(scope="module")
def app(hub: Hub) -> Iterator[ModuleType]:
    backend = "taskhub_client.django_tasks.TaskhubBackend"
    settings.configure(
        USE_TZ=True,
        INSTALLED_APPS=["django_tasks"],
        TASKS={
            "default": {"BACKEND": backend, "QUEUES": [], "OPTIONS": {"url": hub.url, "key": hub.key}},
            "keyless": {"BACKEND": backend, "QUEUES": [], "OPTIONS": {"url": hub.url}},
        },
    )
    django.setup()
    import djtasks_app

    yield djtasks_app
    sys.modules.pop("djtasks_app", None)


def test_enqueue_creates_a_taskhub_task_of_the_queues_type(app: Any, client: Client, task_type: str) -> None:
    when = datetime.now(UTC) - timedelta(minutes=1)
    result = app.add.using(queue_name=task_type, priority=7, run_after=when).enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY and result.id.isdigit() and not result.is_finished
    assert (result.args, result.kwargs, result.backend, result.errors, result.attempts) == (
        [2],
        {"b": 3},
        "default",
        [],
        0,
    )
    hub_task = client.get(int(result.id))
    assert (hub_task.name, hub_task.task_type, hub_task.priority, hub_task.scheduled_at) == (
        "djtasks_app.add", task_type, 7, when
    )  # fmt: skip
    assert hub_task.config == {"djangoTask": "djtasks_app.add", "args": [2], "kwargs": {"b": 3}, "queueName": task_type}
    assert hub_task.timeout_seconds is None  # taskhub's defaults unless the task or OPTIONS say
    hub_task = client.get(int(app.boom.using(queue_name=task_type, max_retries=2).enqueue().id))
    assert (hub_task.max_retries, hub_task.timeout_seconds) == (2, 30)


def test_a_completed_task_is_successful_with_its_result(app: Any, hub: Hub, task_type: str) -> None:
    result = app.add.using(queue_name=task_type).enqueue(2, 3)
    unit = hub.unit(f"{task_type}-u", task_type)
    [claimed] = unit.claim()
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING and result.worker_ids == [f"{task_type}-u"]
    assert result.started_at is not None and result.finished_at is None
    unit.report(claimed, "complete", result=5)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5 and result.finished_at
    again = app.add.get_result(result.id)
    assert again.return_value == 5 and again.task.queue_name == task_type and again.task.func is app.add.func
    with pytest.raises(TaskResultMismatch):
        app.boom.get_result(result.id)


def test_errors_carry_the_class_path_and_traceback_the_unit_reported(app: Any, hub: Hub, task_type: str) -> None:
    unit = hub.unit(f"{task_type}-u", task_type)
    retried = app.boom.using(queue_name=task_type, max_retries=1).enqueue()
    [claimed] = unit.claim()
    unit.report(claimed, "fail", error=f"djtasks_app.Boom: nope\n\n{TRACE}", retryable=True)
    retried.refresh()  # FAILED with a retry on its way: ready to run again, the error kept
    assert retried.status == TaskResultStatus.READY and retried.attempts == 1
    [error] = retried.errors
    assert (error.exception_class_path, error.exception_class, error.traceback) == ("djtasks_app.Boom", app.Boom, TRACE)

    outcomes = {
        "ValueError: bad input\n\nTraceback ...": "builtins.ValueError",
        "timed out after 30s on the unit": "taskhub_client.django_tasks.TaskhubFailure",
        "stopped: the unit is shutting down": "taskhub_client.django_tasks.TaskhubFailure",
    }
    for text, path in outcomes.items():
        failed = app.boom.using(queue_name=task_type).enqueue()
        [claimed] = unit.claim()
        unit.report(claimed, "fail", error=text, retryable=True)  # max_retries=0: FAILED for good
        failed.refresh()
        assert failed.status == TaskResultStatus.FAILED and failed.is_finished, text
        assert failed.errors[0].exception_class_path == path
        with pytest.raises(ValueError, match="Task failed"):
            failed.return_value  # noqa: B018
    assert failed.errors[0].exception_class is TaskhubFailure and failed.errors[0].traceback == text


def test_a_cancelled_task_has_failed_with_taskhub_cancelled(app: Any, client: Client, task_type: str) -> None:
    result = app.add.using(queue_name=task_type).enqueue(1, 1)
    client.cancel(int(result.id), reason="not needed")
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.errors[0].exception_class is TaskhubCancelled


def test_results_that_are_not_django_tasks_do_not_exist(app: Any, client: Client, task_type: str) -> None:
    backend = task_backends["default"]
    plain = client.submit("plain", task_type)
    for result_id in ("abc", "999999999", str(plain.id)):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(result_id)


def test_what_the_hub_would_refuse_is_refused_when_the_task_is_made(app: Any) -> None:
    with pytest.raises(InvalidTaskError, match="not a taskhub task type"):
        app.add.using(queue_name="two words")
    with pytest.raises(InvalidTaskError, match="max_retries"):
        app.add.using(max_retries=101)
    with pytest.raises(InvalidTaskError, match="priority"):
        app.add.using(priority=101)
    keyless = app.add.using(backend="keyless")
    assert isinstance(keyless.get_backend(), TaskhubBackend)
    assert [m.id for m in keyless.get_backend().check()] == ["taskhub_client.E001"]
    with pytest.raises(ImproperlyConfigured, match="'key'"):
        keyless.enqueue(1, 2)
