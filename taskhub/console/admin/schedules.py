"""Recurring schedules in the operator console: edit (the same checks as the API), pause/resume,
the next fire times, the recent fires."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

from taskhub.base.errors import InvalidInput
from taskhub.schedules import services
from taskhub.schedules.models import Schedule, ScheduleFire

# The form's field for each name an InvalidInput may carry.
_FORM_FIELD = {"cron": "cron", "timezone": "timezone", "overlap": "overlap", "catchupSeconds": "catchup_seconds"}


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = ("name", "owner", "cron", "timezone", "template", "overlap", "catchup_seconds", "paused")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        checked = {name: data[name] for name in services.EDITABLE if name in data and data[name] is not None}
        try:
            data.update(services.clean(checked))
        except InvalidInput as exc:
            field = next(iter(exc.details["fields"]))
            self.add_error(_FORM_FIELD.get(field, "template" if field.startswith("template") else None), exc.message)
        return data


class FireInline(admin.TabularInline):
    model = ScheduleFire
    fields = ("fire_time", "outcome", "task_id", "created_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-fire_time",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ScheduleFire]:
        ids = list(super().get_queryset(request).order_by("-fire_time").values_list("id", flat=True)[:20])
        return super().get_queryset(request).filter(id__in=ids)


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ("name", "cron", "timezone", "overlap", "paused", "next_fire_at", "last_fire_at", "owner")
    list_filter = ("paused", "overlap")
    list_select_related = ("owner",)
    search_fields = ("name",)
    readonly_fields = ("next_fire_times", "last_fire_at", "last_task_id", "created_at", "updated_at")
    actions = ["pause", "resume"]
    inlines = [FireInline]

    @admin.display(description="next fire times (UTC)")
    def next_fire_times(self, obj: Schedule) -> SafeString:
        return format_html_join(", ", "<code>{}</code>", ((f"{at:%Y-%m-%d %H:%M}",) for at in services.upcoming(obj)))

    def save_model(self, request: HttpRequest, obj: Schedule, form: forms.ModelForm, change: bool) -> None:
        now = timezone.now()
        if not change:
            obj.created_at = now
        obj.updated_at = now
        if not change or {"cron", "timezone", "paused"} & set(form.changed_data):
            services.plan_next(obj, now)  # as the API's edit: from now, missed fires while paused not caught up
        obj.save()

    def _set_paused(self, request: HttpRequest, queryset: QuerySet[Schedule], paused: bool) -> None:
        changed = 0
        for pk in queryset.filter(paused=not paused).values_list("pk", flat=True):
            services.schedule_update(pk, {"paused": paused}, queryset=Schedule.objects.all())
            changed += 1
        verb = "paused" if paused else "resumed"
        self.message_user(request, f"{changed} schedule(s) {verb}", messages.SUCCESS)

    @admin.action(description="Pause the selected schedules")
    def pause(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_paused(request, queryset, True)

    @admin.action(description="Resume the selected schedules")
    def resume(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_paused(request, queryset, False)
