"""Execution units in the operator console.

Status and who drained it (the unit itself, shutting down, or an operator), type, load (tasks
RUNNING on the unit, as the server counts them, against its capacity), heartbeat age and metadata.
Actions drain (MAINTENANCE, an operator's drain: it lasts across the unit's restarts), resume and
deregister (its running tasks fail over) through units.services, and need the
`console.operate_units` permission.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from taskhub.base.actors import Actor
from taskhub.base.errors import DomainError
from taskhub.console.actions import Outcome, back_to_next, run_each, selected_pks
from taskhub.console.annotations import running_subquery
from taskhub.console.charts import unit_load_chart
from taskhub.console.formatting import format_duration
from taskhub.console.permissions import OPERATE_UNITS
from tasks.models import Task
from tasks.states import TaskStatus
from units.lifecycle import drained_by
from units.models import ExecutionUnit
from units.services import unit_delete, unit_update
from units.states import CLAIMING, Cause, DrainedBy, UnitStatus, can_move

EDITABLE = ("unit_name", "capacity", "endpoint")
UNIT_TASKS_SHOWN = 50


@admin.register(ExecutionUnit)
class ExecutionUnitAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "unit_name",
        "status_col",
        "drain_col",
        "unit_type",
        "load_col",
        "heartbeat_col",
        "owner",
        "metadata_col",
    )
    list_filter = ("status", "unit_type")
    list_select_related = ("owner",)
    search_fields = ("id", "unit_name", "unit_type")
    ordering = ("id",)
    actions = ["drain_units", "resume_units", "deregister_units"]
    fieldsets = (
        (None, {"fields": ("id", "unit_name", "unit_type", "status_col", "drain_col", "endpoint", "owner")}),
        ("Load", {"fields": ("capacity", "load_col", "current_load")}),
        (
            "Liveness",
            {
                "fields": (
                    "heartbeat_col",
                    "last_heartbeat_at",
                    "last_waited_at",
                    "registered_at",
                    "updated_at",
                    "instance_id",
                )
            },
        ),
        ("Metadata", {"fields": ("metadata_pretty",)}),
    )

    change_form_template = "admin/units/executionunit/change_form.html"

    class Media:
        css = {"all": ("console/admin.css",)}
        js = ("console/live_list.js",)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra = dict(extra_context or {})
        unit = self.get_object(request, object_id) if self.has_view_or_change_permission(request) else None
        if unit is not None:
            extra.update(self._unit_context(request, unit))
        return super().change_view(request, object_id, form_url, extra)

    def _unit_context(self, request: HttpRequest, unit: ExecutionUnit) -> dict[str, Any]:
        """Its tasks (those RUNNING on it, then the latest others it held) and the buttons its
        status allows (units.states.MOVES: drain from ONLINE/BUSY, resume from MAINTENANCE)."""
        fields = ("id", "name", "task_type", "status", "attempt", "started_at", "finished_at", "updated_at")
        running = list(
            Task.objects.filter(unit_id=unit.pk, status=TaskStatus.RUNNING)
            .order_by("started_at", "id")
            .only(*fields)[:UNIT_TASKS_SHOWN]
        )
        recent = list(
            Task.objects.filter(unit_id=unit.pk)
            .exclude(status=TaskStatus.RUNNING)
            .order_by("-id")
            .only(*fields)[:UNIT_TASKS_SHOWN]
        )
        buttons: list[tuple[str, str]] = []
        if request.user.has_perm(OPERATE_UNITS):
            if can_move(unit.status, UnitStatus.MAINTENANCE, Cause.DRAIN) and unit.status != UnitStatus.MAINTENANCE:
                buttons.append(("drain_units", "Put in MAINTENANCE (drain)"))
            if can_move(unit.status, UnitStatus.ONLINE, Cause.RESUME) and unit.status == UnitStatus.MAINTENANCE:
                buttons.append(("resume_units", "Resume (back to ONLINE)"))
        return {
            "th_running": running,
            "th_recent": recent,
            "th_unit_buttons": buttons,
            "th_drained": self.drain_col(unit),
            "th_task_list_url": reverse("admin:tasks_task_changelist") + f"?unit__id__exact={unit.pk}",
            "th_unit_changelist_url": reverse("admin:units_executionunit_changelist"),
            "th_load": unit_load_chart(unit.pk, timezone.now()),
        }

    def get_queryset(self, request: HttpRequest) -> QuerySet[ExecutionUnit]:
        return super().get_queryset(request).annotate(running=running_subquery())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # units register themselves through the API

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # "deregister" fails the unit's tasks over first; a plain delete would not

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE_UNITS)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = [f.name for f in ExecutionUnit._meta.concrete_fields if f.name not in EDITABLE]
        return [*fields, "status_col", "drain_col", "load_col", "heartbeat_col", "metadata_pretty"]

    # --- columns ---------------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_col(self, obj: ExecutionUnit) -> SafeString:
        return format_html('<span class="th-badge th-unit-{}">{}</span>', obj.status.lower(), obj.status)

    @admin.display(description="drained by", ordering="drained_by")
    def drain_col(self, obj: ExecutionUnit) -> str:
        by = drained_by(obj)
        if not by:
            return "—"
        who = "the unit itself (shutting down)" if by == DrainedBy.SELF else "operator"
        if by == DrainedBy.OPERATOR and obj.drained_by_actor:
            who = f"operator {obj.drained_by_actor}"
        if obj.drained_at is None:
            return who
        return f"{who}, {format_duration(timezone.now() - obj.drained_at)} ago"

    @admin.display(description="load (running / capacity)", ordering="running")
    def load_col(self, obj: ExecutionUnit) -> SafeString:
        running = getattr(obj, "running", None)
        if running is None:
            running = Task.objects.filter(unit_id=obj.pk, status=TaskStatus.RUNNING).count()
        pct = min(100, round(100 * running / obj.capacity)) if obj.capacity else 100
        return format_html(
            '<span class="th-bar th-unit-busy{}" title="reported load {}"><span style="width: {}%"></span></span>'
            '<span class="th-bar-label">{} / {}</span>',
            " th-full" if running >= obj.capacity else "",
            obj.current_load,
            pct,
            running,
            obj.capacity,
        )

    @admin.display(description="last seen", ordering="last_heartbeat_at")
    def heartbeat_col(self, obj: ExecutionUnit) -> SafeString:
        """When the unit was last heard: its heartbeat, or the stamp of its held long-poll claim."""
        heard = obj.last_heard_at
        age = timezone.now() - heard
        late = age.total_seconds() > settings.UNIT_HEARTBEAT_TIMEOUT and obj.status != UnitStatus.OFFLINE
        return format_html(
            '<span class="{}" title="{}">{} ago</span>',
            "th-stale" if late else "",
            f"{heard:%Y-%m-%d %H:%M:%S} UTC (last heartbeat {obj.last_heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)",
            format_duration(age),
        )

    @admin.display(description="metadata")
    def metadata_col(self, obj: ExecutionUnit) -> str:
        text = json.dumps(obj.metadata, ensure_ascii=False, sort_keys=True) if obj.metadata else "—"
        return text if len(text) <= 80 else text[:79] + "…"

    @admin.display(description="metadata")
    def metadata_pretty(self, obj: ExecutionUnit) -> SafeString:
        return format_html(
            '<pre class="th-json">{}</pre>', json.dumps(obj.metadata, indent=2, ensure_ascii=False, sort_keys=True)
        )

    # --- editing through the service --------------------------------------------------------

    def save_model(self, request: HttpRequest, obj: ExecutionUnit, form: forms.ModelForm, change: bool) -> None:
        changes = {name: form.cleaned_data[name] for name in form.changed_data if name in EDITABLE}
        if changes:
            unit_update(obj.pk, changes, queryset=ExecutionUnit.objects.all(), actor=_operator(request))

    # --- actions ---------------------------------------------------------------------------

    @staticmethod
    def _act(queryset: QuerySet[ExecutionUnit], verb: str, apply: Callable[[str], str | None]) -> Outcome:
        return run_each(selected_pks(queryset), Outcome(verb, "unit", "units"), apply, _explain)

    @admin.action(
        description="Put selected units in MAINTENANCE (drain: claim nothing, finish running tasks)",
        permissions=["operate"],
    )
    def drain_units(self, request: HttpRequest, queryset: QuerySet[ExecutionUnit]) -> HttpResponse | None:
        actor = _operator(request)

        def drain(pk: str) -> str | None:
            unit = ExecutionUnit.objects.filter(pk=pk).first()
            if unit is not None and drained_by(unit) == DrainedBy.OPERATOR:
                return f"already drained by {unit.drained_by_actor or 'an operator'}"
            # A unit draining itself (shutting down) becomes an operator's drain: kept when it restarts.
            unit_update(pk, {"status": UnitStatus.MAINTENANCE}, queryset=ExecutionUnit.objects.all(), actor=actor)
            return None

        self._act(queryset, "Drained", drain).report(request)
        return back_to_next(request)

    @admin.action(description="Resume selected units (back to claiming)", permissions=["operate"])
    def resume_units(self, request: HttpRequest, queryset: QuerySet[ExecutionUnit]) -> HttpResponse | None:
        actor = _operator(request)

        def resume(pk: str) -> str | None:
            before = ExecutionUnit.objects.filter(pk=pk).first()
            was_drained = before is not None and bool(drained_by(before))
            unit = unit_update(pk, {"status": UnitStatus.ONLINE}, queryset=ExecutionUnit.objects.all(), actor=actor)
            if unit.status == UnitStatus.OFFLINE and not was_drained:
                return "OFFLINE units come back by heartbeating or re-registering"
            return None  # an OFFLINE unit's drain is lifted: it claims once it is back

        already = selected_pks(queryset.filter(status__in=CLAIMING))
        outcome = self._act(queryset.exclude(pk__in=already), "Resumed", resume)
        for pk in already:
            outcome.skip(pk, "already online")
        outcome.report(request)
        return back_to_next(request)

    @admin.action(description="Deregister selected units (their running tasks fail over)", permissions=["operate"])
    def deregister_units(self, request: HttpRequest, queryset: QuerySet[ExecutionUnit]) -> HttpResponse | None:
        actor = _operator(request)
        moved = {"failedOver": 0, "poisoned": 0}

        def deregister(pk: str) -> None:
            counts = unit_delete(pk, queryset=ExecutionUnit.objects.all(), actor=actor)
            for key in moved:
                moved[key] += counts.get(key, 0)
            return None

        outcome = self._act(queryset, "Deregistered", deregister)
        outcome.notes.append(
            f"{moved['failedOver']} running task{'s' if moved['failedOver'] != 1 else ''} failed over"
            + (f", {moved['poisoned']} failed as poison" if moved["poisoned"] else "")
            + ". Their processes are evicted: a taskhub-unit that ran them stops (exit code 5) instead of "
            "registering again; start a new one to bring a unit back."
        )
        outcome.report(request)
        return back_to_next(request)


def _operator(request: HttpRequest) -> Actor:
    return Actor.operator(request.user.get_username())


def _explain(pk: str, exc: DomainError) -> str:
    return exc.message
