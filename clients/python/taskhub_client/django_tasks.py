"""A backend for Django's Tasks framework (django-tasks, the backport of django.tasks): each
`.enqueue()` submits a taskhub task, `get_result()` reads it back; a `taskhub-unit` started with
the Django tasks handler (`--handler taskhub_unit.django_tasks:run`) runs the function.

    pip install './clients/python[django]'

    TASKS = {"default": {"BACKEND": "taskhub_client.django_tasks.TaskhubBackend",
                         "OPTIONS": {"url": "http://127.0.0.1:8000", "key": "<tasks:read,tasks:write>"}}}

How the framework's terms map onto taskhub's:

- `queue_name` -> `taskType` (the same name unless `OPTIONS["task_types"]` maps it): a unit of that
  type runs the queue. `priority` (-100..100) -> `priority` (higher first, as in taskhub);
  `run_after` -> `scheduledAt`. The task's config is `{"djangoTask": module path, "args", "kwargs",
  "queueName"}`, its name the module path; `TaskResult.id` is the task's id as a string.
- Status: PENDING, PAUSED, and FAILED with an automatic retry pending -> READY; RUNNING ->
  RUNNING; COMPLETED -> SUCCESSFUL (`return_value` = the task's `result`); FAILED for good and
  CANCELLED -> FAILED. `errors` holds the task's last error (taskhub keeps one): the class path and
  traceback the unit reported, or `TaskhubFailure` (a timeout, a poisoned failover: failures the
  hub or unit made) / `TaskhubCancelled`. `worker_ids`: the unit of each attempt (from the
  task's history), so `attempts` is taskhub's `attempt`.
- What the framework cannot say is taskhub's own: retries and timeouts per task with
  `@task(max_retries=2, timeout_seconds=60)` or `.using(max_retries=...)` (this backend's
  `TaskhubTask`), defaulted by `OPTIONS["max_retries"]` / `OPTIONS["timeout_seconds"]` (unset:
  the hub's TASK_MAX_RETRY_COUNT, no timeout). Failover of a lost unit needs nothing: the hub
  hands the task to another unit and the attempt count grows.

Trace context: `.enqueue()` submits in the current OpenTelemetry context, when the `otel` extra is
installed and a TracerProvider set (a `taskhub.submit` span, whose traceparent the task keeps).

Other OPTIONS: `timeout` (seconds per HTTP request, 30) and `retries` (3), passed to `Client`.
Nothing of Django is imported by `import taskhub_client`; only importing this module does.
"""

from __future__ import annotations

import builtins
import dataclasses
import re
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Self, TypeVar

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django_tasks.backends.base import BaseTaskBackend
from django_tasks.base import Task, TaskError, TaskResult, TaskResultStatus
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
from django_tasks.signals import task_enqueued
from django_tasks.utils import normalize_json
from typing_extensions import ParamSpec

from taskhub_client import models
from taskhub_client._sync import Client
from taskhub_client.errors import NotFound

T = TypeVar("T")
P = ParamSpec("P")

TASK_TYPE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")  # the hub's taskType
MAX_RETRIES = 100  # the hub's bounds for maxRetries and timeoutSeconds
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
# The first line of an error the unit's Django tasks handler reports: "<class path>: <message>".
_ERROR_HEAD = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?::|$)")


class TaskhubFailure(Exception):
    """The class of a TaskError for a failure that is not an exception of the task's function: a
    timeout, a failover past the hub's limit, a result the hub refused."""


class TaskhubCancelled(Exception):
    """The class of a TaskError for a task cancelled on the hub."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskhubTask(Task[P, T]):
    """A django_tasks Task with taskhub's own knobs: `@task(max_retries=..., timeout_seconds=...)`."""

    max_retries: int | None = None
    """Automatic retries after a failed attempt (None: OPTIONS["max_retries"], else the hub's)."""

    timeout_seconds: int | None = None
    """A running attempt longer than this fails, retryable (None: OPTIONS["timeout_seconds"])."""

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | None = None,
        backend: str | None = None,
        max_retries: int | None = None,
        timeout_seconds: int | None = None,
    ) -> Self:
        task = super().using(priority=priority, queue_name=queue_name, run_after=run_after, backend=backend)
        knobs = {"max_retries": max_retries, "timeout_seconds": timeout_seconds}
        changes: dict[str, Any] = {name: value for name, value in knobs.items() if value is not None}
        return dataclasses.replace(task, **changes) if changes else task


def _bounded(value: Any, low: int, high: int, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidTaskError(f"{what} must be a whole number between {low} and {high}.")
    return value


class TaskhubBackend(BaseTaskBackend):
    task_class = TaskhubTask
    supports_defer = True
    supports_async_task = True  # the unit runs coroutine functions with async_to_sync
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = self.options
        self.url = str(options.get("url") or "")
        self.key = str(options.get("key") or "")
        self.task_types: dict[str, str] = dict(options.get("task_types") or {})
        self.max_retries = _bounded(options.get("max_retries"), 0, MAX_RETRIES, "OPTIONS max_retries")
        self.timeout_seconds = _bounded(
            options.get("timeout_seconds"), 1, MAX_TIMEOUT_SECONDS, "OPTIONS timeout_seconds"
        )
        self._client_options = {
            "timeout": float(options.get("timeout", 30.0)),
            "retries": int(options.get("retries", 3)),
        }
        self._client: Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        """The hub's Client, made on first use (importing tasks makes backends: no I/O then)."""
        with self._lock:
            if self._client is None:
                if not self.url or not self.key:
                    raise ImproperlyConfigured(f"TASKS[{self.alias!r}]: OPTIONS needs the hub's 'url' and an API 'key'")
                self._client = Client(self.url, self.key, **self._client_options)  # type: ignore[arg-type]
            return self._client

    def task_type(self, queue_name: str) -> str:
        return self.task_types.get(queue_name, queue_name)

    def validate_task(self, task: Task[Any, Any]) -> None:
        super().validate_task(task)
        if not TASK_TYPE.match(self.task_type(task.queue_name)):
            raise InvalidTaskError(
                f"Queue {task.queue_name!r} is not a taskhub task type (1-64 letters, digits, _ . : -); "
                "map it in OPTIONS['task_types']."
            )
        if isinstance(task, TaskhubTask):
            _bounded(task.max_retries, 0, MAX_RETRIES, "max_retries")
            _bounded(task.timeout_seconds, 1, MAX_TIMEOUT_SECONDS, "timeout_seconds")

    def enqueue(self, task: Task[P, T], args: P.args, kwargs: P.kwargs) -> TaskResult[T]:  # type: ignore[valid-type]
        self.validate_task(task)
        config = {
            "djangoTask": task.module_path,
            "args": normalize_json(args),
            "kwargs": normalize_json(kwargs),
            "queueName": task.queue_name,
        }
        own = task if isinstance(task, TaskhubTask) else None
        hub_task = self.client.submit(
            task.module_path[:255],
            self.task_type(task.queue_name),
            config=config,
            priority=task.priority,
            max_retries=self.max_retries if own is None or own.max_retries is None else own.max_retries,
            timeout_seconds=self.timeout_seconds if own is None or own.timeout_seconds is None else own.timeout_seconds,
            scheduled_at=task.run_after,
        )
        result: TaskResult[T] = self._result(task, hub_task, [])
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        try:
            task_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        try:
            hub_task = self.client.get(task_id)
        except NotFound:
            raise TaskResultDoesNotExist(result_id) from None
        path = hub_task.config.get("djangoTask")
        if not isinstance(path, str):
            raise TaskResultDoesNotExist(f"{result_id}: not a task enqueued through Django's Tasks framework")
        task = import_string(path)
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(f"{result_id}: {path} is no longer a django_tasks task")
        task = task.using(
            priority=hub_task.priority,
            queue_name=str(hub_task.config.get("queueName") or task.queue_name),
            run_after=hub_task.scheduled_at,
            backend=self.alias,
        )
        workers = [entry.unit_id or "" for entry in self.client.history(task_id) if entry.to_status == models.RUNNING]
        return self._result(task, hub_task, workers)

    def _result(self, task: Task[P, T], hub_task: models.Task, worker_ids: list[str]) -> TaskResult[T]:
        config = hub_task.config
        result: TaskResult[T] = TaskResult(
            task=task,
            id=str(hub_task.id),
            status=_status(hub_task),
            enqueued_at=hub_task.created_at,
            started_at=hub_task.started_at,
            finished_at=hub_task.finished_at if hub_task.done else None,
            last_attempted_at=hub_task.started_at,
            args=list(config.get("args") or []),
            kwargs=dict(config.get("kwargs") or {}),
            backend=self.alias,
            errors=_errors(hub_task),
            worker_ids=worker_ids,
        )
        if hub_task.status == models.COMPLETED:
            object.__setattr__(result, "_return_value", hub_task.result)
        return result

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        if not self.url or not self.key:
            yield checks.Error(
                f"TASKS[{self.alias!r}] (TaskhubBackend) needs OPTIONS 'url' and 'key'",
                hint="The hub's address and an API key with the tasks:read and tasks:write scopes.",
                id="taskhub_client.E001",
            )


def _status(task: models.Task) -> TaskResultStatus:
    if task.status == models.RUNNING:
        return TaskResultStatus.RUNNING
    if task.status == models.COMPLETED:
        return TaskResultStatus.SUCCESSFUL
    if task.status == models.CANCELLED or (task.status == models.FAILED and task.done):
        return TaskResultStatus.FAILED
    return TaskResultStatus.READY  # PENDING, PAUSED, or FAILED with a retry on its way


def _errors(task: models.Task) -> list[TaskError]:
    if task.status == models.CANCELLED:
        return [TaskError(exception_class_path=_path(TaskhubCancelled), traceback=task.error or "cancelled on the hub")]
    if not task.error:
        return []
    head, _, trace = task.error.partition("\n\n")
    match = _ERROR_HEAD.match(head)
    path = match[1] if match else ""
    if path and "." not in path:  # a builtin is reported by its bare name
        path = f"builtins.{path}" if isinstance(getattr(builtins, path, None), type) else ""
    return [TaskError(exception_class_path=path or _path(TaskhubFailure), traceback=trace or task.error)]


def _path(kind: type[BaseException]) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"
