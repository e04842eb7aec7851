"""Tasks in the operator console.

The list is built for big tables: one query for the page (unit joined in), a capped count, no
full count, filters whose choices come from small tables. A task's page is read-only for its
state; its history and logs are shown read-only below it. Actions (retry/redrive, cancel, pause,
resume, requeue) call the same transition functions as the API, one task per transaction, with the operator
as the history row's actor, and need the `console.operate_tasks` permission.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from taskhub.console.actions import Outcome, back_to_next, run_each, selected_pks
from taskhub.console.paging import CappedCountPaginator
from taskhub.console.permissions import OPERATE_TASKS
from taskhub.errors import DomainError, NotFound
from tasks import transitions
from tasks.actors import Actor
from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
from tasks.services import EDITABLE_FIELDS, task_update
from tasks.states import TERMINAL, TaskStatus, can_transition
from units.models import ExecutionUnit

S = TaskStatus
HISTORY_SHOWN = 200
LOGS_PER_PAGE = 50
ATTEMPT_LOG_PER_PAGE = 500
ACTION_REASON = "from the operator console"


def format_duration(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def status_badge(status: str, title: str = "") -> SafeString:
    return format_html('<span class="th-badge th-status-{}" title="{}">{}</span>', status.lower(), title, status)


def task_duration(task: Task, now: datetime) -> str:
    """How long the last attempt ran (so far, while RUNNING)."""
    if task.started_at is None:
        return "—"
    if task.status == S.RUNNING:
        return format_duration(now - task.started_at)
    if task.status in (S.COMPLETED, S.FAILED, S.CANCELLED) and task.finished_at:
        return format_duration(task.finished_at - task.started_at)
    return "—"


class TaskTypeFilter(admin.SimpleListFilter):
    """Choices from the units' types (a small table) rather than a DISTINCT over all tasks; a type
    no unit serves can still be filtered by URL (`?task_type=X`), and then shows as a choice."""

    title = "task type"
    parameter_name = "task_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        types = set(ExecutionUnit.objects.order_by().values_list("unit_type", flat=True).distinct())
        if self.value():
            types.add(str(self.value()))
        return [(t, t) for t in sorted(types)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(task_type=self.value()) if self.value() else queryset


class TaskAdminForm(forms.ModelForm):
    class Meta:
        model = Task
        # The admin narrows this to what the task's state allows (see get_readonly_fields).
        fields = ("name", "priority", "config", "max_retries", "timeout_seconds", "scheduled_at")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk and self.changed_data:
            # The state may have moved since the page was shown: check against the current one.
            status = Task.objects.filter(pk=self.instance.pk).values_list("status", flat=True).first()
            allowed = EDITABLE_FIELDS.get(status or "", frozenset())
            refused = [f for f in self.changed_data if f not in allowed]
            if refused:
                raise forms.ValidationError(f"The task is now {status}: {', '.join(refused)} can no longer change.")
        return data


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    form = TaskAdminForm
    list_display = (
        "id",
        "name",
        "status_col",
        "task_type",
        "priority",
        "unit_col",
        "attempt",
        "retries_col",
        "progress_col",
        "created_col",
        "duration_col",
    )
    list_display_links = ("id", "name")
    list_filter = ("status", TaskTypeFilter, "unit", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("unit",)
    list_per_page = 50
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts would be a grouped count per filter over the table
    sortable_by = ("id", "name", "status_col", "task_type", "priority", "created_col")
    search_fields = ("name",)
    search_help_text = "A task id (42 or #42) or part of its name."
    ordering = ("-id",)
    actions = ["retry_tasks", "cancel_tasks", "pause_tasks", "resume_tasks", "requeue_tasks"]
    fieldsets = (
        (None, {"fields": ("id", "name", "task_type", "status_col", "priority", "owner", "unit_col")}),
        (
            "Execution",
            {
                "fields": (
                    "attempt",
                    "retries_col",
                    "max_retries",
                    "failover_count",
                    "progress_col",
                    "timeout_seconds",
                    "pending_command",
                    "error",
                )
            },
        ),
        (
            "Times (UTC)",
            {
                "fields": (
                    "created_at",
                    "scheduled_at",
                    "available_at",
                    "next_retry_at",
                    "timeout_at",
                    "lease_expires_at",
                    "started_at",
                    "finished_at",
                    "duration_col",
                    "updated_at",
                )
            },
        ),
        ("Data", {"fields": ("config", "result_col", "idempotency_key"), "classes": ["collapse"]}),
    )
    change_form_template = "admin/tasks/task/change_form.html"

    class Media:
        css = {"all": ("console/admin.css",)}

    # --- permissions --------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks are created through the API

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # cancel is the operator's way out; deletes would drop the history

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE_TASKS)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        editable = EDITABLE_FIELDS.get(obj.status, frozenset()) if obj is not None else frozenset()
        model_fields = [f.name for f in Task._meta.concrete_fields if f.name not in editable]
        return [*model_fields, "status_col", "unit_col", "retries_col", "progress_col", "duration_col", "result_col"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        qs = super().get_queryset(request)
        match = request.resolver_match
        if match is not None and match.url_name == "tasks_task_changelist":
            # The list never shows these and they can be large.
            qs = qs.defer("config", "result", "error", "request_fingerprint")
        return qs

    # --- list columns -------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_col(self, obj: Task) -> SafeString:
        title = ""
        if obj.status == S.FAILED and obj.next_retry_at:
            title = f"automatic retry at {obj.next_retry_at:%H:%M:%S} UTC"
        elif obj.pending_command:
            title = f"{obj.pending_command} sent to unit {obj.unit_id}"
        elif obj.status == S.RUNNING and obj.lease_expires_at:
            title = f"no unit holds it: back to PENDING at {obj.lease_expires_at:%H:%M:%S} UTC unless reported on"
        return status_badge(obj.status, title)

    @admin.display(description="unit", ordering="unit_id")
    def unit_col(self, obj: Task) -> SafeString | str:
        if obj.unit_id is None:
            return "—"
        url = reverse("admin:units_executionunit_change", args=[quote(obj.unit_id)])
        name = obj.unit.unit_name if obj.unit is not None else "deregistered"
        return format_html('<a href="{}" title="{}">{}</a>', url, name, obj.unit_id)

    @admin.display(description="retries")
    def retries_col(self, obj: Task) -> SafeString:
        failovers = format_html(" · {} failover{}", obj.failover_count, "" if obj.failover_count == 1 else "s")
        return format_html(
            "{}/{}{}", obj.retry_count, obj.max_retries, failovers if obj.failover_count else SafeString("")
        )

    @admin.display(description="progress")
    def progress_col(self, obj: Task) -> SafeString:
        return format_html(
            '<span class="th-bar th-status-{}" title="{}%"><span style="width: {}%"></span></span>'
            '<span class="th-bar-label">{}%</span>',
            obj.status.lower(),
            obj.progress,
            obj.progress,
            obj.progress,
        )

    @admin.display(description="created (UTC)", ordering="created_at")
    def created_col(self, obj: Task) -> SafeString:
        full, short = f"{obj.created_at:%Y-%m-%d %H:%M:%S}", f"{obj.created_at:%m-%d %H:%M}"
        return format_html('<span title="{}">{}</span>', full, short)

    @admin.display(description="duration")
    def duration_col(self, obj: Task) -> str:
        return task_duration(obj, timezone.now())

    @admin.display(description="result")
    def result_col(self, obj: Task) -> SafeString | str:
        if obj.result is None:
            return "—"
        import json

        return format_html('<pre class="th-json">{}</pre>', json.dumps(obj.result, indent=2, ensure_ascii=False))

    # --- search -------------------------------------------------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Task], search_term: str
    ) -> tuple[QuerySet[Task], bool]:
        term = search_term.strip().lstrip("#")
        if term.isdigit():
            return queryset.filter(Q(pk=int(term)) | Q(name__icontains=term)), False
        return super().get_search_results(request, queryset, search_term)

    # --- editing: only what the task's state allows, through the service ------------------

    def save_model(self, request: HttpRequest, obj: Task, form: forms.ModelForm, change: bool) -> None:
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        if not changes:
            return
        try:
            task_update(obj.pk, changes, queryset=Task.objects.all())
        except DomainError as exc:
            messages.error(request, f"Not saved: {exc.message}")

    # --- actions --------------------------------------------------------------------------

    def _act(
        self,
        request: HttpRequest,
        queryset: QuerySet[Task],
        verb: str,
        apply: Callable[[int, Actor], Any],
        explain: Callable[[int, DomainError], str],
    ) -> HttpResponse | None:
        actor = Actor.operator(request.user.get_username())

        def one(pk: int) -> None:
            apply(pk, actor)
            return None

        outcome = run_each(selected_pks(queryset), Outcome(verb, "task", "tasks"), one, explain)
        outcome.report(request)
        return back_to_next(request)

    @admin.action(description="Retry (redrive) selected failed tasks", permissions=["operate"])
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        return self._act(
            request,
            queryset,
            "Retried",
            lambda pk, actor: transitions.retry_task(pk, actor=actor, reason=f"retried {ACTION_REASON}"),
            _explain("retried", only=S.FAILED),
        )

    @admin.action(description="Cancel selected tasks", permissions=["operate"])
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        return self._act(
            request,
            queryset,
            "Cancelled",
            lambda pk, actor: transitions.cancel_task(pk, actor=actor, reason=f"cancelled {ACTION_REASON}"),
            _explain("cancelled"),
        )

    @admin.action(description="Pause selected tasks", permissions=["operate"])
    def pause_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        return self._act(
            request,
            queryset,
            "Paused",
            lambda pk, actor: transitions.pause_task(pk, actor=actor, reason=f"paused {ACTION_REASON}"),
            _explain("paused"),
        )

    @admin.action(description="Resume selected paused tasks", permissions=["operate"])
    def resume_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        # reopen_task also retries FAILED tasks; limiting its lock to PAUSED rows keeps "resume"
        # from doing that, even if the task failed since the page was shown.
        paused = Task.objects.filter(status=S.PAUSED)
        return self._act(
            request,
            queryset,
            "Resumed",
            lambda pk, actor: transitions.reopen_task(
                pk, actor=actor, reason=f"resumed {ACTION_REASON}", queryset=paused
            ),
            _explain("resumed", only=S.PAUSED),
        )

    @admin.action(description="Requeue (take back from its unit)", permissions=["operate"])
    def requeue_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        # The same move as a client's PUT status PENDING, limited to RUNNING rows so that it never
        # resumes or retries a task that moved on since the page was shown.
        running = Task.objects.filter(status=S.RUNNING)
        return self._act(
            request,
            queryset,
            "Requeued",
            lambda pk, actor: transitions.reopen_task(
                pk, actor=actor, reason=f"requeued {ACTION_REASON}", queryset=running
            ),
            _explain_requeue,
        )

    # --- the task page: history, logs, per-attempt logs ---------------------------------------

    def get_urls(self) -> list[URLPattern]:  # type: ignore[override]
        own = [
            path(
                "<path:object_id>/attempt/<int:attempt>/log/",
                self.admin_site.admin_view(self.attempt_log_view),
                name="tasks_task_attempt_log",
            )
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
                "url": reverse("admin:tasks_task_attempt_log", args=[task.pk, n]),
            }
            for n in sorted(set(range(1, task.attempt + 1)) | set(per_attempt), reverse=True)
        ]
        return {
            "th_history": history[:HISTORY_SHOWN],
            "th_history_more": len(history) > HISTORY_SHOWN,
            "th_logs_page": logs_page,
            "th_attempts": attempts,
            "th_task_actions": self._task_actions(request, task),
            "th_changelist_url": reverse("admin:tasks_task_changelist"),
        }

    def _task_actions(self, request: HttpRequest, task: Task) -> list[tuple[str, str]]:
        """The actions that make sense for this task now, as (action name, button label)."""
        if not self.has_operate_permission(request):
            return []
        out = []
        if task.status == S.FAILED:
            out.append(("retry_tasks", "Retry"))
        if task.status in (S.PENDING, S.RUNNING):
            out.append(("pause_tasks", "Pause"))
        if task.status == S.PAUSED:
            out.append(("resume_tasks", "Resume"))
        if task.status == S.RUNNING and can_transition(
            task.status, S.PENDING, held=transitions.held_by_live_unit(task)
        ):
            out.append(("requeue_tasks", "Requeue"))
        if task.status not in TERMINAL:
            out.append(("cancel_tasks", "Cancel"))
        return out

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


def _explain_requeue(pk: int, exc: DomainError) -> str:
    if exc.details.get("unitId"):  # refused: a live unit holds it (see transitions.IllegalTransition)
        return "a live unit holds them: cancel or pause them, or deregister the unit"
    return _explain("requeued", only=S.RUNNING)(pk, exc)


def _explain(verb: str, *, only: str | None = None) -> Callable[[int, DomainError], str]:
    """Why a task was not changed, phrased so that tasks refused for one cause group together."""

    def explain(pk: int, exc: DomainError) -> str:
        current = exc.details.get("currentStatus")
        if isinstance(exc, NotFound):
            current = Task.objects.filter(pk=pk).values_list("status", flat=True).first()
            if current is None:
                return "deleted meanwhile"
        if only is not None:
            return f"only {only} tasks can be {verb}, these are {current}"
        if current in TERMINAL:
            return f"{current} is a final state"
        if current is not None and exc.details.get("requestedStatus") == current:
            return f"already {current}"
        return f"a {current} task cannot be {verb}" if current else exc.message

    return explain
