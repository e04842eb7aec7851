"""The Django Tasks handler: runs the `@task` functions (django-tasks, the backport of
django.tasks) that `taskhub_client.django_tasks.TaskhubBackend` enqueued.

    DJANGO_SETTINGS_MODULE=mysite.settings taskhub-unit --type default \\
        --handler taskhub_unit.django_tasks:run          # run where the project's code imports

Importing this module sets Django up (once, with the project's settings); a unit started without
DJANGO_SETTINGS_MODULE or with settings that do not load exits at once naming the problem.

A task's config, as the backend writes it: `{"djangoTask": "pkg.module.function", "args": [...],
"kwargs": {...}, "queueName": "default"}`. The function is imported by that path and called with
the arguments (a `takes_context` task gets a django_tasks TaskContext first: `context.attempt` is
taskhub's attempt); its return value (JSON) is the task's result. An exception fails the attempt
with the error text `"<exception class path>: <message>\\n\\n<traceback>"` (builtins without the
`builtins.` prefix), which the backend maps back to a TaskError; it is retryable (taskhub's
`maxRetries` decide), except `taskhub_unit.NonRetryableError`. Django's task_started and
task_finished signals are sent on the unit, and the thread's database connections are closed after
each task.
"""

from __future__ import annotations

import os
import threading
import traceback
from typing import Any

import django
from django.apps import apps
from django.db import close_old_connections, connections
from django.utils import timezone
from django.utils.module_loading import import_string
from django_tasks.base import Task, TaskResult, TaskResultStatus
from django_tasks.base import TaskContext as DjangoTaskContext
from django_tasks.signals import task_finished, task_started
from django_tasks.utils import normalize_json

from taskhub_unit.context import NonRetryableError, TaskContext, TaskFailed

MAX_ERROR_CHARS = 10_000  # the hub refuses longer `error` texts
MAX_HEAD_CHARS = 2_000  # of the first line (class path and message)

_setup_lock = threading.Lock()


def setup() -> None:
    """django.setup() with DJANGO_SETTINGS_MODULE, once; ImportError naming what is wrong."""
    with _setup_lock:
        if apps.ready:
            return
        settings_module = os.environ.get("DJANGO_SETTINGS_MODULE", "").strip()
        if not settings_module:
            raise ImportError("the Django tasks handler needs DJANGO_SETTINGS_MODULE (the project's settings module)")
        try:
            django.setup()
        except Exception as exc:
            raise ImportError(f"Django setup with {settings_module} failed: {type(exc).__name__}: {exc}") from exc


setup()


def describe(exc: BaseException) -> str:
    """The error text of a failure: `path: message`, a blank line, the traceback (its end kept)."""
    kind = type(exc)
    path = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    message = " ".join(str(exc).split())
    head = (f"{path}: {message}" if message else path)[:MAX_HEAD_CHARS]
    trace = "".join(traceback.format_exception(exc))
    room = MAX_ERROR_CHARS - len(head) - 2
    if len(trace) > room:
        trace = "...\n" + trace[-(room - 4) :]
    return f"{head}\n\n{trace}"


def _load(config: dict[str, Any]) -> tuple[Task[Any, Any], list[Any], dict[str, Any]]:
    path, args, kwargs = config.get("djangoTask"), config.get("args", []), config.get("kwargs", {})
    if not isinstance(path, str) or not path:
        raise NonRetryableError("config.djangoTask is required: the module path of a django_tasks @task function")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise NonRetryableError("config.args must be a list and config.kwargs an object")
    try:
        task = import_string(path)
    except ImportError as exc:
        raise NonRetryableError(f"config.djangoTask {path!r} cannot be imported: {exc}") from None
    if not isinstance(task, Task):
        raise NonRetryableError(f"config.djangoTask {path!r} is not a django_tasks @task function")
    return task, args, kwargs


def _task_result(task: Task[Any, Any], ctx: TaskContext, args: list[Any], kwargs: dict[str, Any]) -> TaskResult[Any]:
    now = timezone.now()
    return TaskResult(
        task=task,
        id=str(ctx.id),
        status=TaskResultStatus.RUNNING,
        enqueued_at=None,
        started_at=now,
        last_attempted_at=now,
        finished_at=None,
        args=args,
        kwargs=kwargs,
        backend=task.backend,
        errors=[],
        # One per attempt (`attempts` is its length); only this attempt's unit is known here.
        worker_ids=[""] * (ctx.attempt - 1) + [ctx.unit_id],
    )


def run(ctx: TaskContext) -> Any:
    """The handler: run the Django task the config names and return its JSON result."""
    task, args, kwargs = _load(ctx.config)
    result = _task_result(task, ctx, args, kwargs)
    sender = type(task.get_backend())
    close_old_connections()
    ctx.logger.info("running %s", task.module_path)
    task_started.send(sender=sender, task_result=result)
    try:
        if task.takes_context:
            value = task.call(DjangoTaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = normalize_json(value)
    except NonRetryableError:
        raise
    except Exception as exc:
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        object.__setattr__(result, "finished_at", timezone.now())
        task_finished.send(sender=sender, task_result=result)
        raise TaskFailed(describe(exc)) from exc
    finally:
        connections.close_all()  # this thread's: each task runs in a thread of its own
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "finished_at", timezone.now())
    task_finished.send(sender=sender, task_result=result)
    return value
