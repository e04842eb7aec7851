"""What entering a state sets is declared once (tasks.entry): its two forms, on a row in memory and
as the values of a set-based UPDATE, store the same thing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.entry import AVAILABLE_AT, ENTRY, enter, entry_values
from tasks.models import Task
from tasks.states import TaskStatus
from tests import factories

pytestmark = pytest.mark.django_db
S = TaskStatus
NOW = datetime(2030, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC)
SET_BASED = [S.PENDING, S.FAILED, S.COMPLETED, S.CANCELLED, S.PAUSED]  # all but RUNNING (only the claim)


@settings(max_examples=30, deadline=None)
@given(
    target=st.sampled_from(SET_BASED),
    schedule=st.one_of(st.none(), st.integers(min_value=-86_400, max_value=86_400)),
    stale=st.booleans(),
    unique=st.sampled_from([None, "active", "period"]),
)
def test_the_set_based_form_stores_what_the_row_form_sets(
    target: str, schedule: int | None, stale: bool, unique: str | None
) -> None:
    scheduled_at = None if schedule is None else NOW + timedelta(seconds=schedule, microseconds=schedule % 7)
    a, b = (factories.task(scheduled_at=scheduled_at, now=NOW - timedelta(days=2)) for _ in range(2))
    if stale:  # values a state leaves behind, which the entry must clear or keep as it says
        Task.objects.filter(pk__in=[a.pk, b.pk]).update(
            next_retry_at=NOW, timeout_at=NOW, finished_at=NOW - timedelta(hours=1), lease_expires_at=NOW
        )
    if unique:  # a uniqueKey slot: a terminal state releases it, unless a period (uniqueFor) holds it
        until = NOW + timedelta(hours=1) if unique == "period" else None
        for task in (a, b):
            Task.objects.filter(pk=task.pk).update(unique_key="k", unique_slot=f"slot-{task.pk}", unique_until=until)
    in_memory = Task.objects.get(pk=a.pk)
    fields = enter(in_memory, target, NOW)
    in_memory.save(update_fields=sorted(fields))
    Task.objects.filter(pk=b.pk).update(**entry_values(target, NOW))
    row, set_based = Task.objects.get(pk=a.pk), Task.objects.get(pk=b.pk)
    assert set(entry_values(target, NOW)) == fields
    for name in fields - {"unique_slot"}:
        assert getattr(row, name) == getattr(set_based, name), name
    assert (row.unique_slot is None) == (set_based.unique_slot is None)
    released = unique == "active" and target in (S.COMPLETED, S.CANCELLED)
    assert (row.unique_slot is None) == (released or not unique)


def test_a_pending_task_is_claimable_from_its_schedule_or_now_whichever_is_later() -> None:
    task = Task(scheduled_at=NOW + timedelta(hours=1))
    AVAILABLE_AT.apply(task, NOW)
    assert task.available_at == NOW + timedelta(hours=1)
    task = Task(scheduled_at=NOW - timedelta(hours=1))
    AVAILABLE_AT.apply(task, NOW)
    assert task.available_at == NOW
    task = Task(scheduled_at=None)
    AVAILABLE_AT.apply(task, NOW)
    assert task.available_at == NOW


def test_running_is_entered_only_with_the_row_in_memory() -> None:
    with pytest.raises(ValueError, match="only the claim"):
        entry_values(S.RUNNING, NOW)
    assert {effect.field for effect in ENTRY[S.RUNNING]} >= {"attempt", "started_at", "timeout_at"}
