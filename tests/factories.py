"""Test data, made through the same services the product uses.

A leased task (RUNNING on a unit at attempt 1) comes from the claim itself: `leased_task` and
`leased_tasks` here, through the claim function; the `leased` fixture (tests/conftest.py), through
POST /execution-units/{id}/claim for the API tests, which need the unit's token. Only the scale tests
write RUNNING rows directly (`running_in_bulk`): claiming 10,000 tasks would cost them more than
what they measure.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from taskhub.apikeys.models import ALL_SCOPES, ApiKey
from taskhub.apikeys.services import api_key_create
from taskhub.apikeys.tokens import digest, new_unit_token
from taskhub.base.actors import Actor
from tasks.models import Task, TaskStatusHistory
from tasks.states import TaskStatus
from tasks.transitions.creation import create_task
from units.claim import claim_tasks
from units.models import ExecutionUnit, UnitStatus

_seq = itertools.count(1)


def api_key(name: str | None = None, scopes: tuple[str, ...] | list[str] = ALL_SCOPES) -> tuple[ApiKey, str]:
    return api_key_create(name=name or f"key-{next(_seq)}", scopes=list(scopes))


def task(*, owner: ApiKey | None = None, now: datetime | None = None, **fields: Any) -> Task:
    fields.setdefault("name", f"task {next(_seq)}")
    fields.setdefault("task_type", "DATA_PROCESSING")
    fields.setdefault("priority", 0)
    fields.setdefault("config", {})
    return create_task(actor=Actor.system("test"), owner=owner, now=now, **fields)


def unit(
    unit_id: str | None = None,
    *,
    unit_type: str = "DATA_PROCESSING",
    capacity: int = 5,
    now: datetime | None = None,
    status: str = UnitStatus.ONLINE,
    owner: ApiKey | None = None,
) -> ExecutionUnit:
    now = now or timezone.now()
    return ExecutionUnit.objects.create(
        id=unit_id or f"unit-{next(_seq)}",
        unit_type=unit_type,
        unit_name="test unit",
        capacity=capacity,
        token_hash=digest(new_unit_token()),
        last_heartbeat_at=now,
        registered_at=now,
        status=status,
        owner=owner,
    )


def leased_tasks(
    unit_or_id: ExecutionUnit | str | None = None, n: int = 1, *, now: datetime | None = None, **fields: Any
) -> list[Task]:
    """`n` new tasks leased to a unit by the claim (attempt 1, RUNNING since `now`), by id. The unit:
    `unit_or_id`, or a new one made at `now` under that id (or any id), of the tasks' type and with
    room for them. The tasks rank above every other task of the tests (priority 1000), so they are
    the ones claimed; AssertionError if the claim took any other."""
    now = now or timezone.now()
    if not isinstance(unit_or_id, ExecutionUnit):
        unit_type = fields.pop("task_type", "DATA_PROCESSING")
        unit_or_id = unit(unit_or_id, unit_type=unit_type, capacity=max(n, 5), now=now)
    fields.setdefault("priority", 1000)
    made = [task(task_type=unit_or_id.unit_type, now=now, **fields) for _ in range(n)]
    claimed = claim_tasks(unit_or_id.pk, n, now=now)
    assert sorted(t.pk for t in claimed) == [t.pk for t in made], "another task of this type was claimable"
    return list(Task.objects.filter(pk__in=[t.pk for t in made]).order_by("id"))


def leased_task(unit_or_id: ExecutionUnit | str | None = None, *, now: datetime | None = None, **fields: Any) -> Task:
    """One task leased by the claim: see `leased_tasks`."""
    (leased,) = leased_tasks(unit_or_id, 1, now=now, **fields)
    return leased


def tasks_in_bulk(
    n: int, *, now: datetime, row: Callable[[int], dict[str, Any]] | None = None, batch_size: int = 2000, **fields: Any
) -> list[Task]:
    """`n` task rows in bulk inserts, for the tests that need thousands: created at `now`, with
    `fields` on every row and `row(i)` on the i-th. No history rows (see `lapsed_orphans`)."""
    every = {
        "task_type": "DATA_PROCESSING",
        "max_retries": 3,
        "available_at": now,
        "created_at": now,
        "updated_at": now,
    }
    rows = [{"name": f"t{i}", **every, **fields, **(row(i) if row else {})} for i in range(n)]
    return Task.objects.bulk_create([Task(**values) for values in rows], batch_size=batch_size)


def running_in_bulk(unit_ids: list[str], n: int, *, now: datetime) -> list[Task]:
    """`n` tasks RUNNING at attempt 1 on the given units in turn, since `now`: what the claim writes
    to a task row with no timeout, in bulk and without the claim's history rows (for the sweeper's
    scale tests)."""
    return tasks_in_bulk(
        n,
        now=now,
        status=TaskStatus.RUNNING,
        attempt=1,
        started_at=now,
        row=lambda i: {"unit_id": unit_ids[i % len(unit_ids)]},
    )


def lapsed_orphans(n: int, at: datetime, actor: str = "key:many") -> list[int]:
    """`n` RUNNING tasks that no unit holds, their lease run out at `at`, each with the history row
    of its start by `actor`: made in bulk, for the tests that need thousands."""
    tasks = tasks_in_bulk(
        n, now=at, status=TaskStatus.RUNNING, attempt=1, lease_expires_at=at, row=lambda i: {"name": f"orphan {i}"}
    )
    started = {"from_status": TaskStatus.PENDING, "to_status": TaskStatus.RUNNING, "attempt": 1, "created_at": at}
    history = [TaskStatusHistory(task_id=t.pk, actor_type="api_key", actor=actor, **started) for t in tasks]
    TaskStatusHistory.objects.bulk_create(history, batch_size=2000)
    return [t.pk for t in tasks]


def hub_listening(now: datetime) -> None:
    """The hub heard its units all along up to `now` (units.hearing): its last sweep ran just before
    and found no gap, so the next sweep judges silences by the timeout alone."""
    from units.models import HubHearing

    HubHearing.objects.update_or_create(
        pk=1, defaults={"listening_since": None, "deaf": False, "last_sweep_at": now - timedelta(seconds=1)}
    )
