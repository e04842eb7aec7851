"""Bulk admin actions that go through the services and say what they did.

A refusal of one row never undoes the others: `run_each` gives each row its own call (and
transaction); `run_all` hands all rows to a service that refuses row by row (the task verbs). The
message says how many changed and, grouped by cause, why the rest did not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponseRedirect
from django.utils.http import url_has_allowed_host_and_scheme

from taskhub.base.errors import DomainError

# "Select all N" across pages can name millions of rows; an action touches at most this many.
MAX_ROWS_PER_ACTION = 1000
SHOWN_IDS = 8


class Outcome:
    def __init__(self, verb: str, noun: str, plural: str) -> None:
        self.verb, self.noun, self.plural = verb, noun, plural
        self.changed: list[Any] = []
        self.skipped: dict[str, list[Any]] = defaultdict(list)
        self.truncated = False
        self.notes: list[str] = []

    def skip(self, pk: Any, why: str) -> None:
        self.skipped[why].append(pk)

    def _n(self, count: int) -> str:
        return f"{count} {self.noun if count == 1 else self.plural}"

    def report(self, request: HttpRequest) -> None:
        total = len(self.changed) + sum(len(v) for v in self.skipped.values())
        text = f"{self.verb} {self._n(len(self.changed))}"
        if self.skipped:
            text += f" of {total} selected"
        text += "."
        if self.notes:
            text += " " + " ".join(self.notes)
        level = messages.SUCCESS if self.changed else messages.WARNING
        messages.add_message(request, level, text)
        for why, pks in sorted(self.skipped.items(), key=lambda item: -len(item[1])):
            shown = ", ".join(f"#{pk}" for pk in pks[:SHOWN_IDS]) + (" …" if len(pks) > SHOWN_IDS else "")
            messages.warning(request, f"Not changed: {self._n(len(pks))} ({shown}): {why}.")
        if self.truncated:
            messages.warning(
                request, f"Only the first {MAX_ROWS_PER_ACTION} selected were processed; run the action again."
            )


def _bounded(pks: Iterable[Any], outcome: Outcome) -> list[Any]:
    pks = list(pks)
    if len(pks) > MAX_ROWS_PER_ACTION:
        pks, outcome.truncated = pks[:MAX_ROWS_PER_ACTION], True
    return pks


def run_each(
    pks: Iterable[Any],
    outcome: Outcome,
    apply: Callable[[Any], str | None],
    explain: Callable[[Any, DomainError], str],
) -> Outcome:
    """`apply(pk)` changes one row and returns None, or a reason it did nothing; a DomainError it
    raises (a refused transition) becomes a skip explained by `explain(pk, exc)`."""
    for pk in _bounded(pks, outcome):
        try:
            why = apply(pk)
        except DomainError as exc:
            outcome.skip(pk, explain(pk, exc))
            continue
        if why is None:
            outcome.changed.append(pk)
        else:
            outcome.skip(pk, why)
    return outcome


def run_all(
    pks: Iterable[Any],
    outcome: Outcome,
    apply: Callable[[list[Any]], tuple[list[Any], dict[Any, DomainError]]],
    explain: Callable[[Any, DomainError], str],
) -> Outcome:
    """`apply(pks)` changes the rows it can in one call (one implementation for one row and many)
    and returns those it changed and, for the others, the DomainError that refused each."""
    changed, refused = apply(_bounded(pks, outcome))
    outcome.changed += changed
    for pk, exc in refused.items():
        outcome.skip(pk, explain(pk, exc))
    return outcome


def selected_pks(queryset: Any) -> list[Any]:
    return list(queryset.order_by("pk").values_list("pk", flat=True)[: MAX_ROWS_PER_ACTION + 1])


def back_to_next(request: HttpRequest) -> HttpResponseRedirect | None:
    """Actions run from an object's page return there (a `next` field in the form)."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return HttpResponseRedirect(target)
    return None
