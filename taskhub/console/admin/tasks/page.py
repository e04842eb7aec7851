"""The task page: its history, its logs (paged) and each attempt's full log, and the buttons of the
actions that make sense for the task now."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from taskhub.base.errors import DomainError
from taskhub.console.admin.tasks.actions import buttons
from taskhub.console.admin.tasks.summary import summary, timeline
from taskhub.console.formatting import plural
from taskhub.console.permissions import OPERATE_TASKS
from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
from tasks.services import task_update
from tasks.states import EDITABLE_FIELDS, TaskStatus

S = TaskStatus
HISTORY_SHOWN = 200
STATE_HISTORY_PER_PAGE = 200
LOGS_PER_PAGE = 50
ATTEMPT_LOG_PER_PAGE = 500


class TaskPage(admin.ModelAdmin):
    """Part of TaskAdmin (taskhub.console.admin.tasks)."""

    def get_urls(self) -> list[URLPattern]:  # type: ignore[override]
        own = [
            path(
                "<path:object_id>/attempt/<int:attempt>/log/",
                self.admin_site.admin_view(self.attempt_log_view),
                name="tasks_task_attempt_log",
            ),
            path(
                "<path:object_id>/priority/",
                self.admin_site.admin_view(self.priority_view),
                name="tasks_task_priority",
            ),
        ]
        return own + super().get_urls()  # type: ignore[operator]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra = dict(extra_context or {})
        task = self.get_object(request, object_id) if self.has_view_or_change_permission(request) else None
        if task is not None:
            extra.update(self._detail_context(request, task))
        return super().change_view(request, object_id, form_url, extra)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The HISTORY button: the task's state history (every status change, who and why), not
        Django's log of admin edits (tasks change through the API and the units, not here)."""
        task = self.get_object(request, object_id)
        if task is None or not self.has_view_or_change_permission(request, task):
            raise Http404("No such task")
        rows = TaskStatusHistory.objects.filter(task_id=task.pk).order_by("id")
        page = Paginator(rows, STATE_HISTORY_PER_PAGE).get_page(request.GET.get("page"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": task,
            "task": task,
            "page": page,
            "title": f"Task #{task.pk}: state history",
            "task_url": reverse("admin:tasks_task_change", args=[task.pk]),
        }
        return TemplateResponse(request, "admin/tasks/task/state_history.html", context)

    def _detail_context(self, request: HttpRequest, task: Task) -> dict[str, Any]:
        history = list(TaskStatusHistory.objects.filter(task_id=task.pk).order_by("-id")[: HISTORY_SHOWN + 1])
        logs = Paginator(TaskExecutionLog.objects.filter(task_id=task.pk).order_by("-id"), LOGS_PER_PAGE)
        logs_page = logs.get_page(request.GET.get("logs_page"))
        per_attempt = {
            row["attempt"]: row
            for row in TaskExecutionLog.objects.filter(task_id=task.pk)
            .order_by()
            .values("attempt")
            .annotate(lines=Count("id"), errors=Count("id", filter=Q(level="ERROR")))
        }
        attempts = [
            {
                "attempt": n,
                "lines": per_attempt.get(n, {}).get("lines", 0),
                "errors": per_attempt.get(n, {}).get("errors", 0),
                "lines_text": plural(per_attempt.get(n, {}).get("lines", 0), "line"),
                "errors_text": plural(per_attempt.get(n, {}).get("errors", 0), "error"),
                "url": reverse("admin:tasks_task_attempt_log", args=[task.pk, n]),
            }
            for n in sorted(set(range(1, task.attempt + 1)) | set(per_attempt), reverse=True)
        ]
        shown = history[:HISTORY_SHOWN]
        return {
            "th_history": shown,
            "th_history_more": len(history) > HISTORY_SHOWN,
            "th_logs_page": logs_page,
            "th_attempts": attempts,
            "th_summary": summary(task, timezone.now(), shown),
            "th_timeline": timeline(shown, attempts),
            "th_task_actions": self._task_actions(request, task),
            "th_priority": self._priority_form(request, task),
            "th_changelist_url": reverse("admin:tasks_task_changelist"),
        }

    def _task_actions(self, request: HttpRequest, task: Task) -> list[tuple[str, str]]:
        """The buttons of the actions that make sense for this task now (action name, label)."""
        return buttons(task) if request.user.has_perm(OPERATE_TASKS) else []

    def _priority_form(self, request: HttpRequest, task: Task) -> dict[str, Any] | None:
        """Raise priority: offered while the task's state lets its priority change (EDITABLE_FIELDS)."""
        if not request.user.has_perm(OPERATE_TASKS) or "priority" not in EDITABLE_FIELDS.get(task.status, ()):
            return None
        return {"url": reverse("admin:tasks_task_priority", args=[task.pk]), "next": task.priority + 1}

    def priority_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(OPERATE_TASKS):
            raise PermissionDenied
        task = self.get_object(request, object_id)
        if task is None:
            raise Http404("No such task")
        back = HttpResponseRedirect(reverse("admin:tasks_task_change", args=[task.pk]))
        try:
            priority = int(request.POST.get("priority", ""))
        except ValueError:
            messages.error(request, "Priority: a whole number, please.")
            return back
        try:
            task_update(task.pk, {"priority": priority}, queryset=Task.objects.all())
        except DomainError as exc:
            messages.error(request, f"Priority not changed: {exc.message}")
            return back
        messages.success(request, f"Priority of task #{task.pk} set to {priority} (was {task.priority}).")
        return back

    def attempt_log_view(self, request: HttpRequest, object_id: str, attempt: int) -> HttpResponseBase:
        task = self.get_object(request, object_id)
        if task is None or not self.has_view_or_change_permission(request, task):
            raise Http404("No such task")
        lines = TaskExecutionLog.objects.filter(task_id=task.pk, attempt=attempt).order_by("id")
        if request.GET.get("format") == "text":
            response = StreamingHttpResponse(_as_text(lines), content_type="text/plain; charset=utf-8")
            response["Content-Disposition"] = f'inline; filename="task-{task.pk}-attempt-{attempt}.log"'
            return response
        page = Paginator(lines, ATTEMPT_LOG_PER_PAGE).get_page(request.GET.get("page"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": task,
            "task": task,
            "attempt": attempt,
            "page": page,
            "title": f"Task #{task.pk}, attempt {attempt}: log",
            "task_url": reverse("admin:tasks_task_change", args=[task.pk]),
            "history": TaskStatusHistory.objects.filter(task_id=task.pk, attempt=attempt).order_by("id"),
        }
        return TemplateResponse(request, "admin/tasks/task/attempt_log.html", context)


def _as_text(lines: QuerySet[TaskExecutionLog]) -> Iterator[str]:
    for line in lines.iterator(chunk_size=2000):
        yield f"{line.timestamp:%Y-%m-%dT%H:%M:%S.%fZ} {line.level:<5} {line.message}\n"
