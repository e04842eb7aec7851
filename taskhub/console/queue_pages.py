"""The console's queue pages (a queue is a task type): every queue, and one queue's page with its
state, limits, units and last hour (taskhub/console/queues.py). Pause/resume and the limits are
changed only through the one writer, units.queues.update_queue_settings (audited: who, when, what).
Seeing them needs what seeing tasks needs; changing them, the operators' `console.operate_tasks`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from taskhub.base.actors import Actor
from taskhub.base.errors import DomainError
from taskhub.base.viewer import OPERATOR
from taskhub.console.annotations import running_subquery
from taskhub.console.formatting import format_time
from taskhub.console.permissions import OPERATE_TASKS
from taskhub.console.queues import queue_charts, queue_list, queue_page, queue_units
from tasks.queues import LIMIT_MAX, SETTINGS_FIELDS, queue_settings_for, settings_reply
from units.queues import set_paused, update_queue_settings

VIEW_TASKS = "tasks.view_task"
MAX_TYPE_LENGTH = 64
LIMIT_LABELS = {
    "max_running": "Max running",
    "per_key_concurrency": "Max running per concurrency key",
    "rate_limit": "Rate limit (starts)",
    "rate_period": "... per this many seconds",
    "key_rate_limit": "Rate limit per key (starts)",
    "key_rate_period": "... per this many seconds",
}


class LimitsForm(forms.Form):
    """The queue's limits; blank: no limit. Bounds as the API takes them (tasks.queues.LIMIT_MAX)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, maximum in LIMIT_MAX.items():
            self.fields[name] = forms.IntegerField(
                label=LIMIT_LABELS[name], required=False, min_value=1, max_value=maximum
            )


def queue_url(task_type: str) -> str:
    return reverse("admin:console-queue", args=[task_type])


def _check_view(request: HttpRequest) -> None:
    if not request.user.has_perm(VIEW_TASKS):
        raise PermissionDenied


def queues_view(site: admin.AdminSite, request: HttpRequest) -> HttpResponse:
    _check_view(request)
    now = timezone.now()
    rows = queue_list(now)
    for row in rows:
        row["url"] = queue_url(row["taskType"])
        row["limits"] = {k: v for k, v in row["settings"].items() if k in _API_LIMITS and v is not None}
    context = {**site.each_context(request), "title": "Queues", "queues": rows, "generated_at": format_time(now)}
    return TemplateResponse(request, "console/queues.html", context)


_API_LIMITS = {SETTINGS_FIELDS[name] for name in LIMIT_MAX}


def queue_view(site: admin.AdminSite, request: HttpRequest, task_type: str) -> HttpResponse:
    _check_view(request)
    if len(task_type) > MAX_TYPE_LENGTH:
        raise Http404("No such queue")
    can_operate = request.user.has_perm(OPERATE_TASKS)
    if request.method == "POST":
        if not can_operate:
            raise PermissionDenied
        _change(request, task_type)
        return HttpResponseRedirect(queue_url(task_type))
    now = timezone.now()
    queue = queue_page(task_type, now)
    current = {name: queue["settings"][SETTINGS_FIELDS[name]] for name in LIMIT_MAX}
    for change in queue["changes"]:
        change["when"] = format_time(datetime.fromisoformat(change["at"]))
    context = {
        **site.each_context(request),
        "title": f"Queue {task_type}",
        "queue": queue,
        "task_type": task_type,
        "paused_at": format_time(datetime.fromisoformat(queue["settings"]["pausedAt"]))
        if queue["settings"]["pausedAt"]
        else "",
        "limits_form": LimitsForm(initial=current) if can_operate else None,
        "limits": [(LIMIT_LABELS[name], value) for name, value in current.items()],
        "can_operate": can_operate,
        "units": queue_units(task_type, running_subquery()),
        "charts": queue_charts(task_type, now),
        "task_list_url": reverse("admin:tasks_task_changelist") + f"?task_type={task_type}",
        "settings_url": reverse("admin:tasks_queuesettings_change", args=[task_type]) if queue["hasSettings"] else "",
        "generated_at": format_time(now),
    }
    return TemplateResponse(request, "console/queue.html", context)


def _change(request: HttpRequest, task_type: str) -> None:
    """One POST of the page: pause, resume or new limits, through the one audited writer."""
    actor = Actor.operator(request.user.get_username())
    op = request.POST.get("op", "")
    try:
        if op in ("pause", "resume"):
            set_paused(task_type, op == "pause", viewer=OPERATOR, actor=actor)
            messages.success(
                request,
                f"Paused queue {task_type}: its PENDING tasks are not claimed until it is resumed."
                if op == "pause"
                else f"Resumed queue {task_type}: its PENDING tasks are claimed again.",
            )
            return
        if op != "limits":
            messages.error(request, f"Unknown change {op!r}: pause, resume or limits.")
            return
        form = LimitsForm(request.POST)
        if not form.is_valid():
            for name, errors in form.errors.items():
                messages.error(
                    request, f"{LIMIT_LABELS.get(name, name)}: {' '.join(str(e) for e in errors)} Nothing was changed."
                )
            return
        current = settings_reply(queue_settings_for(task_type))
        changes = {name: value for name, value in form.cleaned_data.items() if current[SETTINGS_FIELDS[name]] != value}
        if not changes:
            messages.info(request, "The limits are as they were: nothing changed.")
            return
        update_queue_settings(task_type, changes, viewer=OPERATOR, actor=actor, owner_id=None)
    except DomainError as exc:
        messages.error(request, f"Queue {task_type} not changed: {exc.message}")
        return
    said = ", ".join(f"{SETTINGS_FIELDS[n]} {current[SETTINGS_FIELDS[n]]} → {v}" for n, v in changes.items())
    messages.success(request, f"Limits of queue {task_type} changed: {said}.")
