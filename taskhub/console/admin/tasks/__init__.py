"""Tasks in the operator console.

The list is built for big tables: one query for the page (unit joined in), a capped count, no
full count, filters whose choices come from small tables. A task's page is read-only for its
state; its history and logs are shown read-only below it. Actions (retry/redrive, cancel, pause,
resume, requeue) call the same transition functions as the API, with the operator as the history
row's actor, and need the `console.operate_tasks` permission.

One module per role: the list's columns, its filters and search, editing, the actions, the task page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.db.models.functions import Substr
from django.http import HttpRequest

from taskhub.console.admin.tasks.actions import TaskActions
from taskhub.console.admin.tasks.columns import ERROR_READ, TaskColumns
from taskhub.console.admin.tasks.editing import TaskAdminForm, TaskEditing
from taskhub.console.admin.tasks.filters import FailedKindFilter, OrphanFilter, TaskSearch, TaskTypeFilter
from taskhub.console.admin.tasks.page import TaskPage
from taskhub.console.paging import CappedCountPaginator
from taskhub.console.permissions import OPERATE_TASKS
from tasks.models import Task
from tasks.states import EDITABLE_FIELDS


@admin.register(Task)
class TaskAdmin(TaskColumns, TaskSearch, TaskEditing, TaskActions, TaskPage, admin.ModelAdmin):
    form = TaskAdminForm
    list_display = (
        "id",
        "name",
        "status_col",
        "error_col",
        "type_col",
        "priority",
        "unit_col",
        "attempt",
        "retries_col",
        "progress_col",
        "created_col",
        "duration_col",
    )
    list_display_links = ("id", "name")
    list_filter = (
        "status",
        FailedKindFilter,
        OrphanFilter,
        TaskTypeFilter,
        "unit",
        ("created_at", admin.DateFieldListFilter),
    )
    list_select_related = ("unit",)
    list_per_page = 50
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts would be a grouped count per filter over the table
    sortable_by = ("id", "name", "status_col", "type_col", "priority", "created_col")
    search_fields = ("name",)
    search_help_text = "A task id (42 or #42) or part of its name."
    ordering = ("-id",)
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
                    "error_col",
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
        js = ("console/live_list.js",)

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
        return [
            *model_fields,
            "status_col",
            "error_col",
            "type_col",
            "unit_col",
            "retries_col",
            "progress_col",
            "duration_col",
            "result_col",
        ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        qs = super().get_queryset(request)
        match = request.resolver_match
        if match is not None and match.url_name == "tasks_task_changelist":
            # The list never shows these and they can be large.
            qs = qs.defer("config", "result", "error", "request_fingerprint").annotate(
                error_head=Substr("error", 1, ERROR_READ)
            )
        return qs
