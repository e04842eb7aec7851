"""Filtering and searching the task list: choices from small tables, and the search the API uses."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from tasks.models import Task
from units.models import ExecutionUnit


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
        term = search_term.strip().lstrip("#")
        if term.isdigit():
            return queryset.filter(Q(pk=int(term)) | Q(name__icontains=term)), False
        return super().get_search_results(request, queryset, search_term)
