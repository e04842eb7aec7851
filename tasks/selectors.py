"""Which rows a caller may see: the one place the visibility rule lives."""

from __future__ import annotations

from django.db.models import QuerySet

from taskhub.api.principals import Principal
from tasks.models import Task
from tasks.states import TaskStatus


def visible_tasks(principal: Principal) -> QuerySet[Task]:
    """Operators see every task; an API key sees the tasks it created; a unit sees only the tasks
    currently leased to it (RUNNING with its id)."""
    qs = Task.objects.all()
    if principal.is_operator:
        return qs
    if principal.unit is not None:
        return qs.filter(unit_id=principal.unit.pk, status=TaskStatus.RUNNING)
    return qs.filter(owner=principal.api_key)
