"""Queues in the operator console: their settings (pause, limits, defaults for new tasks), changed
only through units.queues (audited: who, when, what), with pause/resume actions. Viewing needs what
viewing tasks needs; changing, the operators' `console.operate_tasks`."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from taskhub.base.actors import Actor
from taskhub.base.errors import DomainError
from taskhub.base.viewer import OPERATOR
from taskhub.console.actions import Outcome, back_to_next, run_each, selected_pks
from taskhub.console.permissions import OPERATE_TASKS
from tasks.models import QueueSettings
from tasks.queues import SETTINGS_FIELDS, recent_changes
from units.queues import set_paused, update_queue_settings

EDITABLE = tuple(SETTINGS_FIELDS)


def _operator(request: HttpRequest) -> Actor:
    return Actor.operator(request.user.get_username())


@admin.register(QueueSettings)
class QueueSettingsAdmin(admin.ModelAdmin):
    list_display = (
        "task_type",
        "page_col",
        "paused",
        "max_running",
        "per_key_concurrency",
        "rate_limit",
        "rate_period",
        "key_rate_limit",
        "key_rate_period",
        "default_priority",
        "retention_seconds",
        "updated_at",
    )
    list_filter = ("paused",)
    search_fields = ("task_type",)
    actions = ["pause_queues", "resume_queues"]
    fields = ("task_type", *EDITABLE, "paused_at", "paused_by", "owner", "changes_col")
    readonly_fields = ("paused_at", "paused_by", "owner", "changes_col")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("tasks.view_task")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE_TASKS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_operate_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_operate_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a queue without limits is the same as none; the audit stays

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "task_type") if obj is not None else self.readonly_fields

    @admin.display(description="queue page")
    def page_col(self, obj: QueueSettings) -> SafeString:
        url = reverse("admin:console-queue", args=[obj.task_type])
        return format_html('<a href="{}" class="th-queue-link">depth, charts, units</a>', url)

    @admin.display(description="Recent changes")
    def changes_col(self, obj: QueueSettings) -> SafeString | str:
        rows = recent_changes(obj.task_type) if obj.pk else []
        if not rows:
            return "-"
        return format_html_join(
            "",
            "<div>{} {}: {}</div>",
            ((c.created_at.strftime("%Y-%m-%d %H:%M:%S"), c.actor, c.changes) for c in rows),
        )

    def save_model(self, request: HttpRequest, obj: QueueSettings, form: Any, change: bool) -> None:
        """Through the one writer (audited, locking as claims need), never a plain save."""
        changes = {name: form.cleaned_data[name] for name in EDITABLE if name in form.cleaned_data}
        if change:
            changes = {name: value for name, value in changes.items() if name in form.changed_data}
        saved = update_queue_settings(obj.task_type, changes, viewer=OPERATOR, actor=_operator(request), owner_id=None)
        obj.__dict__.update(saved.__dict__)

    def _set_paused(self, request: HttpRequest, queryset: QuerySet[QueueSettings], paused: bool) -> HttpResponse | None:
        actor = _operator(request)

        def apply(pk: str) -> str | None:
            set_paused(pk, paused, viewer=OPERATOR, actor=actor)
            return None

        def explain(pk: str, exc: DomainError) -> str:
            return exc.message

        word = "Paused" if paused else "Resumed"
        run_each(selected_pks(queryset), Outcome(word, "queue", "queues"), apply, explain).report(request)
        return back_to_next(request)

    @admin.action(description="Pause selected queues (their PENDING tasks are not claimed)", permissions=["operate"])
    def pause_queues(self, request: HttpRequest, queryset: QuerySet[QueueSettings]) -> HttpResponse | None:
        return self._set_paused(request, queryset, True)

    @admin.action(description="Resume selected queues", permissions=["operate"])
    def resume_queues(self, request: HttpRequest, queryset: QuerySet[QueueSettings]) -> HttpResponse | None:
        return self._set_paused(request, queryset, False)
