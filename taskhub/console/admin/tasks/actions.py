"""The operator's actions on tasks: the console's verbs of `tasks.states.VERBS`, as the list's bulk
actions and the task page's buttons. Each calls the verb's one implementation for one task and many
(`tasks.transitions.verbs.act`), with the operator as the history rows' actor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from taskhub.base.actors import Actor
from taskhub.base.errors import DomainError, NotFound
from taskhub.console.actions import Outcome, back_to_next, run_all, selected_pks
from taskhub.console.formatting import plural
from tasks.bulk_actions import bulk_act
from tasks.models import Task
from tasks.states import TERMINAL, VERBS, Verb, can_move
from tasks.transitions import verbs
from tasks.transitions.core import held_by_live_unit
from units.selectors import is_alive

ACTION_REASON = "from the operator console"
# The console's words for its verbs, in the order the task page shows its buttons.
LABELS: dict[str, tuple[str, str]] = {  # verb: (button, bulk action)
    "retry": ("Retry", "Retry (redrive) selected failed tasks"),
    "pause": ("Pause", "Pause selected tasks"),
    "resume": ("Resume", "Resume selected paused tasks"),
    "requeue": ("Requeue", "Requeue (take back from its unit)"),
    "cancel": ("Cancel", "Cancel selected tasks"),
}
# Verbs that ask for a confirmation first (a final state: nothing brings the task back).
CONFIRM = frozenset(verb.name for verb in VERBS.values() if verb.console and verb.target in TERMINAL)
CONFIRM_SHOWN = 50
CONSOLE_VERBS = [verb for verb in VERBS.values() if verb.console]
assert set(LABELS) == {verb.name for verb in CONSOLE_VERBS}, "a console verb without words, or words without one"


def action_name(verb: Verb) -> str:
    return f"{verb.name}_tasks"


def _bulk_action(verb: Verb) -> Callable[..., HttpResponse | None]:
    def action(modeladmin: TaskActions, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        return modeladmin.act(request, queryset, verb)

    action.__name__ = action_name(verb)
    return admin.action(description=LABELS[verb.name][1], permissions=["operate"])(action)


class TaskActions(admin.ModelAdmin):
    """Part of TaskAdmin (taskhub.console.admin.tasks)."""

    actions = [_bulk_action(verb) for verb in CONSOLE_VERBS]

    def act(self, request: HttpRequest, queryset: QuerySet[Task], verb: Verb) -> HttpResponse | None:
        if verb.name in CONFIRM and request.POST.get("post") != "yes":
            return self.confirm(request, queryset, verb)
        actor = Actor.operator(request.user.get_username())
        if request.POST.get("select_across") == "1":
            return _act_on_all_matching(request, queryset, verb, actor)

        def apply(pks: list[Any]) -> tuple[list[Any], dict[Any, DomainError]]:
            moved, refused = verbs.act(
                pks, verb, actor=actor, reason=f"{verb.past} {ACTION_REASON}", live_unit=is_alive
            )
            return [task.pk for task in moved], refused

        outcome = run_all(
            selected_pks(queryset), Outcome(verb.past.capitalize(), "task", "tasks"), apply, explain(verb)
        )
        outcome.report(request)
        return back_to_next(request)

    def confirm(self, request: HttpRequest, queryset: QuerySet[Task], verb: Verb) -> HttpResponse:
        """A final verb (cancel) asks first: the page lists what it would change and posts the
        same action again with `post=yes` (the admin's own confirmation convention)."""
        across = request.POST.get("select_across") == "1"  # "all N matching this filter"
        pks = [] if across else selected_pks(queryset)
        count = min(queryset.count(), BULK_LIMIT) if across else len(pks)
        ordered = (
            queryset.select_related(None) if across else Task.objects.filter(pk__in=pks[:CONFIRM_SHOWN])
        ).order_by("pk")
        shown = list(ordered.only("id", "name", "status")[:CONFIRM_SHOWN])
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{LABELS[verb.name][0]} {plural(count, 'task')}?",
            "verb": verb,
            "label": LABELS[verb.name][0],
            "action": action_name(verb),
            "pks": pks,
            "count": count,
            "across": across,
            # the list's filter is in the query string: "all matching" posts back to the same list
            "action_url": request.get_full_path() if across else "",
            "tasks": shown,
            "more": max(count - len(shown), 0),
            "next": request.POST.get("next", ""),
            "final": verb.target in TERMINAL,
        }
        return TemplateResponse(request, "admin/tasks/task/confirm_action.html", context)


BULK_LIMIT = 100_000  # "all N matching this filter": at most this many per run (chunked transactions)


def _act_on_all_matching(
    request: HttpRequest, queryset: QuerySet[Task], verb: Verb, actor: Actor
) -> HttpResponse | None:
    """ "Select all N" of the list's filter: every matching task (not only the first
    MAX_ROWS_PER_ACTION), through the service of POST /tasks/bulk, in chunks."""
    ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: BULK_LIMIT + 1])
    result = bulk_act(
        ids[:BULK_LIMIT],
        verb.name,
        queryset=Task.objects.all(),
        actor=actor,
        reason=f"{verb.past} {ACTION_REASON} (all matching)",
        live_unit=is_alive,
    )
    text = f"{verb.past.capitalize()} {result['changed']} of {result['matched']} matching tasks"
    text += f" in {result['chunks']} chunk(s)."
    if result["skipped"]:
        text += " Not changed: " + ", ".join(f"{n} {why}" for why, n in result["skipped"].items()) + "."
    messages.add_message(request, messages.SUCCESS if result["changed"] else messages.WARNING, text)
    if len(ids) > BULK_LIMIT:
        messages.warning(request, f"Only the first {BULK_LIMIT} matching were processed; run the action again.")
    return back_to_next(request)


def buttons(task: Task) -> list[tuple[str, str]]:
    """The console's verbs that make sense for this task now, as (action name, button label):
    those the tables allow from its status (asking the units whether a live one holds it)."""
    held = held_by_live_unit(task, is_alive)
    shown = [VERBS[name] for name in LABELS]
    return [
        (action_name(verb), LABELS[verb.name][0])
        for verb in shown
        if task.status in verb.sources and can_move(task.status, verb.target, held=held)
    ]


def explain(verb: Verb) -> Callable[[int, DomainError], str]:
    """Why a task was not changed, phrased so that tasks refused for one cause group together."""
    only = next(iter(verb.sources)) if len(verb.sources) == 1 else None

    def why(pk: int, exc: DomainError) -> str:
        if exc.details.get("unitId"):  # refused: a live unit holds it (see transitions.core.IllegalTransition)
            return "a live unit holds them: cancel or pause them, or deregister the unit"
        current = exc.details.get("currentStatus")
        if isinstance(exc, NotFound):
            current = Task.objects.filter(pk=pk).values_list("status", flat=True).first()
            if current is None:
                return "deleted meanwhile"
        if only is not None:
            return f"only {only} tasks can be {verb.past}, these are {current}"
        if current in TERMINAL:
            return f"{current} is a final state"
        if current is not None and current == exc.details.get("requestedStatus", getattr(exc, "requested", None)):
            return f"already {current}"
        return f"a {current} task cannot be {verb.past}" if current else exc.message

    return why
