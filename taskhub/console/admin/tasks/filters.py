"""Filtering and searching the task list: choices from small tables, and the search the API uses."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tasks.models import Task
from tasks.selectors import FAILED_KINDS, search_tasks
from units.models import ExecutionUnit
from units.selectors import orphaned_running


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


class TaskSearch(admin.ModelAdmin):
    """Part of TaskAdmin (taskhub.console.admin.tasks)."""

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Task], search_term: str
    ) -> tuple[QuerySet[Task], bool]:
        """The API's search (tasks.selectors.search_tasks): an id (42 or #42) by the primary key, a
        name among the newest API_SEARCH_WINDOW tasks the filters leave (the page says so)."""
        term = search_term.strip().lstrip("#")
        if not term:
            return queryset, False
        found, windowed = search_tasks(queryset, term, window=settings.API_SEARCH_WINDOW)
        if windowed:
            messages.info(
                request,
                f"Searched the names of the newest {settings.API_SEARCH_WINDOW} tasks that match the filters; "
                "narrow them (status, type, unit, date) to search older ones.",
            )
        return found, False


class FailedKindFilter(admin.SimpleListFilter):
    """FAILED split as the stats API splits it: dead (only an operator's retry brings it back) and
    waiting for an automatic retry (tasks.selectors.FAILED_KINDS)."""

    title = "failed"
    parameter_name = "failed"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in FAILED_KINDS.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        kind = FAILED_KINDS.get(str(self.value()))
        return queryset.filter(kind[1]) if kind else queryset


class OrphanFilter(admin.SimpleListFilter):
    """RUNNING tasks no live unit holds (units.selectors.ORPHANED)."""

    title = "needs attention"
    parameter_name = "flag"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("orphaned", "RUNNING, no live unit holds it")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return orphaned_running(queryset) if self.value() == "orphaned" else queryset
