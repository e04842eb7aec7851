"""Helpers for the operator-console tests (admin, dashboard, browser): users in roles, task states."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import Group, User
from django.contrib.messages import get_messages

from taskhub.base.actors import Actor
from taskhub.console.roles import OPERATORS, VIEWERS, sync_roles
from tasks.models import Task
from tasks.services import task_append_logs
from tasks.transitions import reports
from tests import factories
from units.models import ExecutionUnit

PASSWORD = "console-pass-123"


def staff(username: str, role: str | None = None, *, superuser: bool = False) -> User:
    """A staff user in `role` (operators/viewers) or in none. Roles are re-synced first: tests on
    a flushed database (live_server) have lost the groups the migration made."""
    sync_roles()
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True, is_superuser=superuser)
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    return user


def operator(username: str = "op") -> User:
    return staff(username, OPERATORS)


def viewer(username: str = "viewer") -> User:
    return staff(username, VIEWERS)


def failed_task(unit: ExecutionUnit, *, error: str = "boom", now: datetime | None = None, **fields: Any) -> Task:
    task = factories.leased_task(unit, now=now, **fields)
    reports.fail_attempt(task.pk, unit_id=unit.pk, attempt=task.attempt, error=error, retryable=False, now=now)
    return Task.objects.get(pk=task.pk)


def completed_task(unit: ExecutionUnit, *, now: datetime | None = None, **fields: Any) -> Task:
    task = factories.leased_task(unit, now=now, **fields)
    reports.complete_attempt(task.pk, unit_id=unit.pk, attempt=task.attempt, result={"ok": True}, now=now)
    return Task.objects.get(pk=task.pk)


def log_lines(task: Task, *levels_and_messages: tuple[str, str], now: datetime | None = None) -> None:
    """Append lines as the unit holding the task's live attempt."""
    assert task.unit_id is not None
    task_append_logs(
        task.pk,
        [{"level": level, "message": message} for level, message in levels_and_messages],
        actor=Actor.unit(task.unit_id),
        queryset=Task.objects.all(),
        attempt=task.attempt,
        now=now,
    )


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]
