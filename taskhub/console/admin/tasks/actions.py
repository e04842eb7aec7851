"""The operator's actions on tasks (the list's bulk actions and the task page's buttons)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from taskhub.base.actors import Actor
from taskhub.base.errors import DomainError, NotFound
from taskhub.console.actions import Outcome, back_to_next, run_each, selected_pks
from tasks import transitions
from tasks.models import Task
from tasks.states import TERMINAL, TaskStatus
from units.selectors import is_live

S = TaskStatus
ACTION_REASON = "from the operator console"


class TaskActions(admin.ModelAdmin):
    """Part of TaskAdmin (taskhub.console.admin.tasks)."""

    def _act(
        self,
        request: HttpRequest,
        queryset: QuerySet[Task],
        verb: str,
        apply: Callable[[int, Actor], Any],
        explain: Callable[[int, DomainError], str],
    ) -> HttpResponse | None:
        actor = Actor.operator(request.user.get_username())

        def one(pk: int) -> None:
            apply(pk, actor)
            return None

        outcome = run_each(selected_pks(queryset), Outcome(verb, "task", "tasks"), one, explain)
        outcome.report(request)
        return back_to_next(request)

    @admin.action(description="Retry (redrive) selected failed tasks", permissions=["operate"])
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        return self._act(
            request,
            queryset,
            "Retried",
            lambda pk, actor: transitions.retry_task(pk, actor=actor, reason=f"retried {ACTION_REASON}"),
            _explain("retried", only=S.FAILED),
        )

    @admin.action(description="Cancel selected tasks", permissions=["operate"])
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        return self._act(
            request,
            queryset,
            "Cancelled",
            lambda pk, actor: transitions.cancel_task(
                pk, actor=actor, reason=f"cancelled {ACTION_REASON}", live_unit=is_live
            ),
            _explain("cancelled"),
        )

    @admin.action(description="Pause selected tasks", permissions=["operate"])
    def pause_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        return self._act(
            request,
            queryset,
            "Paused",
            lambda pk, actor: transitions.pause_task(
                pk, actor=actor, reason=f"paused {ACTION_REASON}", live_unit=is_live
            ),
            _explain("paused"),
        )

    @admin.action(description="Resume selected paused tasks", permissions=["operate"])
    def resume_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        # reopen_task also retries FAILED tasks; limiting its lock to PAUSED rows keeps "resume"
        # from doing that, even if the task failed since the page was shown.
        paused = Task.objects.filter(status=S.PAUSED)
        return self._act(
            request,
            queryset,
            "Resumed",
            lambda pk, actor: transitions.reopen_task(
                pk, actor=actor, reason=f"resumed {ACTION_REASON}", queryset=paused, live_unit=is_live
            ),
            _explain("resumed", only=S.PAUSED),
        )

    @admin.action(description="Requeue (take back from its unit)", permissions=["operate"])
    def requeue_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        # The same move as a client's PUT status PENDING, limited to RUNNING rows so that it never
        # resumes or retries a task that moved on since the page was shown.
        running = Task.objects.filter(status=S.RUNNING)
        return self._act(
            request,
            queryset,
            "Requeued",
            lambda pk, actor: transitions.reopen_task(
                pk, actor=actor, reason=f"requeued {ACTION_REASON}", queryset=running, live_unit=is_live
            ),
            _explain_requeue,
        )


def _explain_requeue(pk: int, exc: DomainError) -> str:
    if exc.details.get("unitId"):  # refused: a live unit holds it (see transitions.IllegalTransition)
        return "a live unit holds them: cancel or pause them, or deregister the unit"
    return _explain("requeued", only=S.RUNNING)(pk, exc)


def _explain(verb: str, *, only: str | None = None) -> Callable[[int, DomainError], str]:
    """Why a task was not changed, phrased so that tasks refused for one cause group together."""

    def explain(pk: int, exc: DomainError) -> str:
        current = exc.details.get("currentStatus")
        if isinstance(exc, NotFound):
            current = Task.objects.filter(pk=pk).values_list("status", flat=True).first()
            if current is None:
                return "deleted meanwhile"
        if only is not None:
            return f"only {only} tasks can be {verb}, these are {current}"
        if current in TERMINAL:
            return f"{current} is a final state"
        if current is not None and exc.details.get("requestedStatus") == current:
            return f"already {current}"
        return f"a {current} task cannot be {verb}" if current else exc.message

    return explain
