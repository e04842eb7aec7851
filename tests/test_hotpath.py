"""The lean paths of the heartbeat and the claim give what the serializers and the ORM give."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework import serializers

from taskhub.api.serializers.heartbeat import (
    HeartbeatReplySerializer,
    HeartbeatSerializer,
    heartbeat_reply,
    plain_heartbeat,
)
from taskhub.api.serializers.units import ClaimedTaskSerializer, claimed_tasks
from taskhub.api.throttling import COUNTER_VERSION, PrincipalRateThrottle
from taskhub.api.validation import validated
from taskhub.base.rowload import fetch_models
from tasks.models import Task
from tasks.sql import claimable
from tests import factories
from units.claim import claim_tasks
from units.models import ExecutionUnit
from units.services import unit_heartbeat

pytestmark = pytest.mark.django_db

VALID: list[dict[str, Any]] = [
    {},
    {"currentLoad": 3},
    {"currentLoad": 1_000_000, "metadata": {}, "tasks": []},
    {"metadata": {"a": [1, {"b": None}], "c": "x"}, "unknown": 1},
    {"tasks": [{"id": 1, "attempt": 1}, {"id": 2, "attempt": 7, "progress": 100, "extra": "ignored"}]},
    {"currentLoad": 0, "tasks": [{"id": 9_223_372_036_854_775_807, "attempt": 1, "progress": 0}]},
    {"instanceId": "3f2a9c1d0e4b5a67", "stopping": False},
    {"instanceId": "a" * 64, "tasks": [], "stopping": True},
]
# Valid too, but left to the serializer (5.0 is an integer to DRF and to JSON Schema; DRF trims).
SLOW_VALID: list[dict[str, Any]] = [
    {"currentLoad": 5.0},
    {"tasks": [{"id": 1.0, "attempt": 1}]},
    {"instanceId": " padded "},
    {"instanceId": "tail\n"},
]
INVALID: list[Any] = [
    [],
    {"currentLoad": -1},
    {"currentLoad": 1_000_001},
    {"currentLoad": True},
    {"currentLoad": "1"},
    {"currentLoad": None},
    {"metadata": None},
    {"metadata": [1]},
    {"metadata": {"pad": "x" * 20_000}},
    {"tasks": None},
    {"tasks": {}},
    {"tasks": [None]},
    {"tasks": ["x"]},
    {"tasks": [{"id": "1", "attempt": 1}]},
    {"tasks": [{"id": 0, "attempt": 1}]},
    {"tasks": [{"id": 10**30, "attempt": 1}]},
    {"tasks": [{"id": 1}]},
    {"tasks": [{"id": 1, "attempt": 0}]},
    {"tasks": [{"id": 1, "attempt": 1, "progress": 101}]},
    {"tasks": [{"id": 1, "attempt": 1, "progress": None}]},
    {"tasks": [{"id": 5, "attempt": 1}, {"id": 5, "attempt": 2}]},
    {"tasks": [{"id": n, "attempt": 1} for n in range(1, 1002)]},
    {"instanceId": ""},
    {"instanceId": "a" * 65},
    {"instanceId": "two words"},
    {"instanceId": 7},
    {"instanceId": None},
    {"stopping": "true"},
    {"stopping": 1},
    {"stopping": None},
]


@pytest.mark.parametrize("body", VALID)
def test_plain_heartbeat_validation_equals_the_serializer(body: dict[str, Any]) -> None:
    fast = plain_heartbeat(body)
    assert fast is not None
    assert fast == validated(HeartbeatSerializer, body)


@pytest.mark.parametrize("body", SLOW_VALID + INVALID)
def test_anything_not_plainly_valid_goes_to_the_serializer(body: Any) -> None:
    assert plain_heartbeat(body) is None
    if body in SLOW_VALID:
        validated(HeartbeatSerializer, body)
    else:
        with pytest.raises(serializers.ValidationError):
            validated(HeartbeatSerializer, body)


def test_heartbeat_reply_equals_the_serializer() -> None:
    now = timezone.now()
    reply = {
        "unitId": "u1",
        "status": "BUSY",
        "heartbeatIntervalSeconds": 10,
        "heartbeatTimeoutSeconds": 30.5,
        "runningTasks": 2,
        "freeCapacity": 0,
        "commands": [
            {"taskId": 4, "attempt": 2, "command": "abort", "reason": "attempt is no longer live"},
            {"taskId": 5, "attempt": 1, "command": "cancel", "reason": "task was cancelled"},
        ],
        "failedOver": [7, 8],
        "serverTime": now,
        "drainedBy": None,
        "drainedByActor": None,
        "drainedAt": None,
    }
    assert heartbeat_reply(reply) == dict(HeartbeatReplySerializer(reply).data)
    assert heartbeat_reply(reply | {"commands": [], "failedOver": []}) == dict(
        HeartbeatReplySerializer(reply | {"commands": [], "failedOver": []}).data
    )
    drained = reply | {"status": "MAINTENANCE", "drainedBy": "operator", "drainedByActor": "user:al", "drainedAt": now}
    assert heartbeat_reply(drained) == dict(HeartbeatReplySerializer(drained).data)


def test_claimed_tasks_equal_the_serializer() -> None:
    unit = factories.unit(capacity=5)
    factories.task(config={"k": [1, "x"]}, priority=3, timeout_seconds=60)
    factories.task(config={}, priority=1)
    tasks = claim_tasks(unit.pk, 5, now=timezone.now() + timedelta(seconds=1))
    assert len(tasks) == 2
    expected = [dict(row) for row in ClaimedTaskSerializer(tasks, many=True).data]
    assert claimed_tasks(tasks) == expected
    assert {t["timeoutSeconds"] for t in expected} == {60, None}


def test_claimed_rows_are_what_the_orm_reads_back() -> None:
    unit = factories.unit(capacity=5)
    made = [factories.task(config={"n": n}, timeout_seconds=n or None) for n in range(3)]
    claimed = claim_tasks(unit.pk, 5, now=timezone.now() + timedelta(seconds=1))
    assert sorted(t.pk for t in claimed) == sorted(t.pk for t in made)
    for task in claimed:
        stored = Task.objects.get(pk=task.pk)
        for field in Task._meta.concrete_fields:
            assert getattr(task, field.attname) == getattr(stored, field.attname), field.name
        assert task.history.latest("id").reason == "claimed"


def test_fetch_models_equals_the_orm_and_defers_what_it_does_not_select() -> None:
    task = factories.task(config={"a": 1}, scheduled_at=timezone.now())
    table = Task._meta.db_table
    (row,) = fetch_models(Task, f"SELECT * FROM {table} WHERE id = %s", [task.pk])
    orm = Task.objects.get(pk=task.pk)
    assert [getattr(row, f.attname) for f in Task._meta.concrete_fields] == [
        getattr(orm, f.attname) for f in Task._meta.concrete_fields
    ]
    (part,) = fetch_models(Task, f"SELECT id, config, created_at FROM {table} WHERE id = %s", [task.pk])
    assert part.get_deferred_fields() == {f.attname for f in Task._meta.concrete_fields} - {
        "id",
        "config",
        "created_at",
    }
    assert (part.config, part.created_at) == (orm.config, orm.created_at)


def test_claim_runs_exactly_the_statement_the_orm_compiles_for_claimable() -> None:
    """The whole SELECT, parameters included: the plain-SQL claim is the ORM's query, compiled once."""
    unit = factories.unit(capacity=5)
    factories.task()
    now = timezone.now() + timedelta(seconds=1)
    orm = claimable(unit.unit_type, now).select_for_update(skip_locked=True)[:5]
    with transaction.atomic(), CaptureQueriesContext(connection) as compiled:
        assert len(list(orm)) == 1
    (expected,) = [q["sql"] for q in compiled.captured_queries if q["sql"].startswith("SELECT")]
    with CaptureQueriesContext(connection) as queries:
        assert len(claim_tasks(unit.pk, 5, now=now)) == 1
    assert expected in [q["sql"] for q in queries.captured_queries]
    assert expected.startswith("SELECT") and "LIMIT 5" in expected and unit.unit_type in expected


def test_heartbeat_writes_metadata_only_when_it_changed() -> None:
    unit = factories.unit()
    with CaptureQueriesContext(connection) as first:
        unit_heartbeat(unit.pk, current_load=1, metadata={"a": 1}, tasks=[])
    with CaptureQueriesContext(connection) as again:
        unit_heartbeat(unit.pk, current_load=2, metadata={"a": 1}, tasks=[])
    updates = [q["sql"] for q in (*first, *again) if q["sql"].startswith("UPDATE")]
    assert len(updates) == 2 and "metadata" in updates[0] and "metadata" not in updates[1]
    stored = ExecutionUnit.objects.get(pk=unit.pk)
    assert (stored.metadata, stored.current_load) == ({"a": 1}, 2)
    unit_heartbeat(unit.pk, current_load=2, metadata={"a": 2}, tasks=None)
    assert ExecutionUnit.objects.get(pk=unit.pk).metadata == {"a": 2}


def test_young_unlisted_lease_survives_and_old_one_fails_over() -> None:
    unit = factories.unit(capacity=5)
    factories.task()
    factories.task()
    t0 = timezone.now() + timedelta(seconds=1)
    old, young = claim_tasks(unit.pk, 1, now=t0)[0], claim_tasks(unit.pk, 1, now=t0 + timedelta(seconds=60))[0]
    with transaction.atomic():
        reply = unit_heartbeat(unit.pk, current_load=0, metadata=None, tasks=[], now=t0 + timedelta(seconds=61))
    assert reply["failedOver"] == [old.pk] and reply["runningTasks"] == 1
    assert Task.objects.get(pk=young.pk).status == "RUNNING"


# --- the throttle: a window counter -----------------------------------------------------------


@pytest.fixture
def tight_unit_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PrincipalRateThrottle, "THROTTLE_RATES", {"client": "3/min", "unit": "3/min", "anon": "3/min"})
    cache.clear()


def test_throttle_counts_in_one_constant_size_key_and_reopens_after_the_window(
    register_unit: Any, tight_unit_rate: None
) -> None:
    unit, body = register_unit("thr-1")
    url = f"/api/v1/execution-units/{body['id']}/claim"  # heartbeats have their own bucket
    cache.set(f"throttle:unit:unit:{body['id']}", [1.0] * 50, 60)  # a list left by the old throttle
    assert [unit.post(url, {"max": 1}).status_code for _ in range(3)] == [200] * 3
    refused = unit.post(url, {"max": 1})
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 60
    key = f"throttle:unit:unit:{body['id']}"
    assert cache.get(key, version=COUNTER_VERSION) == 4  # one integer, whatever the rate
    cache.delete(key, version=COUNTER_VERSION)  # the window expires
    assert unit.post(url, {"max": 1}).status_code == 200
    assert cache.get(key, version=COUNTER_VERSION) == 1
