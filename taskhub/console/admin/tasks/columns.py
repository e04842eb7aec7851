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

from taskhub.console.formatting import format_duration, status_badge
from tasks.models import Task
from tasks.states import TaskStatus

S = TaskStatus


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
        return format_html('<pre class="th-json">{}</pre>', json.dumps(obj.result, indent=2, ensure_ascii=False))
