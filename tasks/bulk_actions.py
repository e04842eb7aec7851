"""Bulk actions by filter (`POST /tasks/bulk`, the console's "all N matching this filter"): the
tasks a list filter matches, acted on in chunks, each its own transaction, with counts per outcome.

The verbs go through their one implementation (`tasks.transitions.verbs.act`: each row checked
against the transition table, refusals counted, never raised); reprioritize is the PATCH of
`priority` for the states whose editable fields include it (tasks.states.EDITABLE_FIELDS).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from taskhub.base.actors import Actor
from tasks.models import Task
from tasks.selectors import TaskFilters, filter_tasks
from tasks.states import EDITABLE_FIELDS, VERBS
from tasks.transitions.core import LiveUnit, assume_live
from tasks.transitions.verbs import VerbRefused, act

CHUNK = 500
VERB_ACTIONS = ("cancel", "retry", "pause", "resume")
REPRIORITIZABLE = sorted(status for status, fields in EDITABLE_FIELDS.items() if "priority" in fields)


def matching_ids(
    queryset: QuerySet[Task], filters: TaskFilters, *, limit: int, search_window: int
) -> tuple[list[int], bool]:
    """The ids a list filter matches in `queryset` (oldest first, up to `limit`) and whether more did."""
    qs, _ = filter_tasks(queryset, filters, search_window=search_window)
    ids = list(qs.order_by("id").values_list("id", flat=True)[: limit + 1])
    return ids[:limit], len(ids) > limit


def _why(exc: Exception) -> str:
    if isinstance(exc, VerbRefused):
        return "wrongStatus"
    return {"NotFound": "notFound", "IllegalTransition": "wrongStatus"}.get(
        type(exc).__name__, getattr(exc, "code", "refused")
    )


def bulk_act(
    ids: list[int],
    action: str,
    *,
    queryset: QuerySet[Task],
    actor: Actor,
    reason: str = "",
    priority: int | None = None,
    live_unit: LiveUnit = assume_live,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Apply `action` to the tasks `ids` (of `queryset`), CHUNK at a time. Returns the counts:
    {action, matched, changed, skipped: {why: n}, chunks}."""
    now = now or timezone.now()
    skipped: Counter[str] = Counter()
    changed = chunks = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        chunks += 1
        if action == "reprioritize":
            assert priority is not None
            with transaction.atomic():
                rows = dict(queryset.filter(pk__in=chunk).select_for_update().values_list("id", "status"))
                editable = [i for i, status in rows.items() if status in REPRIORITIZABLE]
                already = set(Task.objects.filter(pk__in=editable, priority=priority).values_list("id", flat=True))
                todo = [i for i in editable if i not in already]
                Task.objects.filter(pk__in=todo).update(priority=priority, updated_at=now)
            changed += len(todo)
            skipped["unchanged"] += len(already)
            skipped["wrongStatus"] += len(rows) - len(editable)
            skipped["notFound"] += len(chunk) - len(rows)
            continue
        verb = VERBS[action]
        moved, refused = act(
            chunk,
            verb,
            actor=actor,
            reason=reason or f"bulk {action}",
            now=now,
            queryset=queryset,
            live_unit=live_unit,
        )
        changed += len(moved)
        for exc in refused.values():
            skipped[_why(exc)] += 1
    return {
        "action": action,
        "matched": len(ids),
        "changed": changed,
        "skipped": {k: v for k, v in sorted(skipped.items()) if v},
        "chunks": chunks,
    }
