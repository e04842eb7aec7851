"""Test data, made through the same services the product uses."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from django.utils import timezone

from taskhub.apikeys.models import ALL_SCOPES, ApiKey
from taskhub.apikeys.services import api_key_create
from taskhub.apikeys.tokens import digest, new_unit_token
from taskhub.base.actors import Actor
from tasks.models import Task
from tasks.transitions.creation import create_task
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
