"""The task list's columns (and the read-only fields of the task page that show the same)."""

from __future__ import annotations

import json
from datetime import datetime

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from taskhub.console.formatting import format_duration, format_time, status_badge
from tasks.models import Task
from tasks.states import TaskStatus
from units.selectors import is_orphaned

S = TaskStatus
ERROR_SHOWN = 48  # characters of the error in the list (the annotation reads ERROR_READ)
ERROR_READ = 200


def task_duration(task: Task, now: datetime) -> str:
    """How long the last attempt ran (so far, while RUNNING)."""
    if task.started_at is None:
        return "—"
    if task.status == S.RUNNING:
        return format_duration(now - task.started_at)
    if task.status in (S.COMPLETED, S.FAILED, S.CANCELLED) and task.finished_at:
        return format_duration(task.finished_at - task.started_at)
    return "—"


class TaskColumns(admin.ModelAdmin):
    """Part of TaskAdmin (taskhub.console.admin.tasks)."""

    @admin.display(description="status", ordering="status")
    def status_col(self, obj: Task) -> SafeString:
        title, flag = "", SafeString("")
        if obj.status == S.FAILED and obj.next_retry_at:
            title = f"automatic retry at {format_time(obj.next_retry_at)} UTC"
            flag = format_html(' <span class="th-flag th-flag-retry" title="{}">waiting retry</span>', title)
        elif obj.status == S.FAILED:
            title = "no automatic retry left: only a retry by hand brings it back"
            flag = format_html(' <span class="th-flag th-flag-dead" title="{}">dead</span>', title)
        elif obj.pending_command:
            title = f"{obj.pending_command} sent to unit {obj.unit_id}"
        elif is_orphaned(obj):
            title = "no unit holds it"
            if obj.lease_expires_at:
                title += f": back to PENDING at {format_time(obj.lease_expires_at)} UTC unless reported on"
            flag = format_html(' <span class="th-flag th-flag-orphan" title="{}">orphaned</span>', title)
        return format_html("{}{}", status_badge(obj.status, title), flag)

    @admin.display(description="error")
    def error_col(self, obj: Task) -> SafeString | str:
        """The current attempt's error: only a FAILED task has one (a later attempt's success or
        retry leaves the old text in the row; it is history, not the task's state)."""
        text = obj.error_head if hasattr(obj, "error_head") else obj.error  # the list reads only the head
        if obj.status != S.FAILED or not text:
            return "—"
        short = text if len(text) <= ERROR_SHOWN else text[: ERROR_SHOWN - 1] + "…"
        return format_html('<span class="th-error-text" title="{}">{}</span>', text, short)

    @admin.display(description="task type", ordering="task_type")
    def type_col(self, obj: Task) -> SafeString:
        """The type, linked to its queue's page (taskhub/console/queue_pages.py)."""
        url = reverse("admin:console-queue", args=[obj.task_type])
        return format_html(
            '<a href="{}" class="th-queue-link" title="the {} queue">{}</a>', url, obj.task_type, obj.task_type
        )

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
        return format_html("<span>{}</span>", format_time(obj.created_at))

    @admin.display(description="duration")
    def duration_col(self, obj: Task) -> str:
        return task_duration(obj, timezone.now())

    @admin.display(description="result")
    def result_col(self, obj: Task) -> SafeString | str:
        if obj.result is None:
            return "—"
        return format_html('<pre class="th-json">{}</pre>', json.dumps(obj.result, indent=2, ensure_ascii=False))
