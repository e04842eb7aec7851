"""Editing a task in the console: only the fields its state allows, through the service."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from taskhub.base.errors import DomainError
from tasks.models import Task
from tasks.services import task_update
from tasks.states import EDITABLE_FIELDS


class TaskAdminForm(forms.ModelForm):
    class Meta:
        model = Task
        # The admin narrows this to what the task's state allows (see get_readonly_fields).
        fields = ("name", "priority", "config", "max_retries", "timeout_seconds", "scheduled_at")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk and self.changed_data:
            # The state may have moved since the page was shown: check against the current one.
            status = Task.objects.filter(pk=self.instance.pk).values_list("status", flat=True).first()
            allowed = EDITABLE_FIELDS.get(status or "", frozenset())
            refused = [f for f in self.changed_data if f not in allowed]
            if refused:
                raise forms.ValidationError(f"The task is now {status}: {', '.join(refused)} can no longer change.")
        return data


class TaskEditing(admin.ModelAdmin):
    """Part of TaskAdmin (taskhub.console.admin.tasks)."""

    def save_model(self, request: HttpRequest, obj: Task, form: forms.ModelForm, change: bool) -> None:
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        if not changes:
            return
        try:
            task_update(obj.pk, changes, queryset=Task.objects.all())
        except DomainError as exc:
            messages.error(request, f"Not saved: {exc.message}")
