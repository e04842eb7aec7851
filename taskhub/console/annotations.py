"""Annotations the console's unit lists share (the units' page, a queue's page)."""

from __future__ import annotations

from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce

from tasks.models import Task
from tasks.states import TaskStatus


def running_subquery() -> Coalesce:
    running = (
        Task.objects.filter(unit_id=OuterRef("pk"), status=TaskStatus.RUNNING)
        .order_by()
        .values("unit_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(running, output_field=IntegerField()), Value(0))
