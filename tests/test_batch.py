"""Batch forms: `POST /tasks/batch` (create many, all or nothing, idempotent per item) and
`POST /tasks/reports` (a unit's results, progress and logs, each item fenced on its own)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import REGISTRY

from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
from tasks.transitions import core
from tests.conftest import JsonClient

pytestmark = pytest.mark.django_db
API = "/api/v1"
BATCH = f"{API}/tasks/batch"
REPORTS = f"{API}/tasks/reports"


def _item(n: int, **extra: Any) -> dict[str, Any]:
    return {"name": f"batch {n}", "taskType": "DATA_PROCESSING", "priority": n % 3, "config": {"n": n}, **extra}


def _rows() -> tuple[int, int, int]:
    return Task.objects.count(), TaskStatusHistory.objects.count(), TaskExecutionLog.objects.count()


def _fields(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "validation_error"
    return body["details"]["fields"]


def _chain(task_id: int) -> list[tuple[str | None, str]]:
    rows = list(
        TaskStatusHistory.objects.filter(task_id=task_id).order_by("id").values_list("from_status", "to_status")
    )
    assert rows[0][0] is None
    for (_, before), (after, _) in itertools.pairwise(rows):
        assert after == before, rows  # gap-free: each row starts where the previous one ended
    return rows


# --- POST /tasks/batch ---------------------------------------------------------------------------


def test_batch_creates_every_task_in_request_order_with_the_single_create_rules(client_a: JsonClient) -> None:
    later = (timezone.now() + timedelta(hours=1)).isoformat()
    body = {"tasks": [_item(0), _item(1, maxRetries=7, timeoutSeconds=60), _item(2, scheduledAt=later)]}
    response = client_a.post(BATCH, body)
    assert response.status_code == 201, response.content
    items = response.json()["items"]
    assert [i["name"] for i in items] == ["batch 0", "batch 1", "batch 2"]
    assert all(i["created"] and i["status"] == "PENDING" for i in items)
    tasks = {t.pk: t for t in Task.objects.all()}
    assert sorted(tasks) == sorted(i["id"] for i in items)
    first, second, third = (tasks[i["id"]] for i in items)
    assert first.max_retries == 3 and second.max_retries == 7 and second.timeout_seconds == 60  # the default
    assert third.available_at == third.scheduled_at and first.available_at == first.created_at
    assert first.owner is not None and first.owner.name == "client-a" and first.idempotency_key is None
    for task_id in tasks:
        assert _chain(task_id) == [(None, "PENDING")]
        assert TaskStatusHistory.objects.get(task_id=task_id).reason == "created"


def test_an_invalid_item_refuses_the_whole_batch_naming_the_field(client_a: JsonClient) -> None:
    before = _rows()
    fields = _fields(client_a.post(BATCH, {"tasks": [_item(0), _item(1), _item(2), _item(3, priority=5000)]}))
    assert list(fields) == ["tasks[3].priority"]
    assert "tasks[1].priority" in _fields(client_a.post(BATCH, {"tasks": [_item(0), _item(1, priority="high")]}))
    assert "tasks[0].taskType" in _fields(client_a.post(BATCH, {"tasks": [{"name": "x"}]}))
    assert "tasks" in _fields(client_a.post(BATCH, {"tasks": {"name": "x"}}))
    assert "tasks[0]" in _fields(client_a.post(BATCH, {"tasks": [None]}))
    assert _rows() == before


def test_batch_size_is_capped_by_the_setting(client_a: JsonClient, settings: Any) -> None:
    settings.TASK_BATCH_MAX = 2
    assert "tasks" in _fields(client_a.post(BATCH, {"tasks": [_item(n) for n in range(3)]}))
    assert Task.objects.count() == 0
    assert client_a.post(BATCH, {"tasks": [_item(n) for n in range(2)]}).status_code == 201


def test_a_retried_batch_returns_the_same_tasks_and_creates_nothing(client_a: JsonClient) -> None:
    body = {"tasks": [_item(0, idempotencyKey="k-0"), _item(1, idempotencyKey="k-1")]}
    first = client_a.post(BATCH, body)
    assert first.status_code == 201 and [i["created"] for i in first.json()["items"]] == [True, True]
    before = _rows()
    again = client_a.post(BATCH, body)
    assert again.status_code == 200, again.content  # every item a replay
    assert [i["id"] for i in again.json()["items"]] == [i["id"] for i in first.json()["items"]]
    assert [i["created"] for i in again.json()["items"]] == [False, False]
    assert _rows() == before
    # A partly new batch: the known key is answered, the new item created.
    mixed = client_a.post(BATCH, {"tasks": [_item(2, idempotencyKey="k-2"), body["tasks"][1]]})
    assert mixed.status_code == 201
    assert [i["created"] for i in mixed.json()["items"]] == [True, False]
    assert mixed.json()["items"][1]["id"] == first.json()["items"][1]["id"]
    # The same key semantics as the Idempotency-Key header of POST /tasks, in both directions.
    single = client_a.post(f"{API}/tasks", _item(0), HTTP_IDEMPOTENCY_KEY="k-0")
    assert single.status_code == 200 and single.json()["id"] == first.json()["items"][0]["id"]
    by_header = client_a.post(f"{API}/tasks", _item(9), HTTP_IDEMPOTENCY_KEY="k-9")
    replay = client_a.post(BATCH, {"tasks": [_item(9, idempotencyKey="k-9")]})
    assert replay.status_code == 200 and replay.json()["items"][0]["id"] == by_header.json()["id"]


def test_a_reused_key_with_another_body_refuses_the_whole_batch(client_a: JsonClient) -> None:
    client_a.post(BATCH, {"tasks": [_item(0, idempotencyKey="k-0")]})
    before = _rows()
    response = client_a.post(BATCH, {"tasks": [_item(5), _item(1, idempotencyKey="k-0")]})
    assert response.status_code == 409, response.content
    assert response.json()["details"]["field"] == "tasks[1].idempotencyKey"
    assert _rows() == before  # the new item without a key was not created either


def test_an_empty_batch_is_answered_with_no_items(client_a: JsonClient, leased: Callable[..., Any]) -> None:
    response = client_a.post(BATCH, {"tasks": []})
    assert (response.status_code, response.json()) == (200, {"items": []})
    unit, _ = leased(1)
    response = unit.post(REPORTS, {"reports": []})
    assert (response.status_code, response.json()) == (200, {"items": []})


def test_a_key_repeated_inside_one_batch_gets_the_task_of_its_first_item(client_a: JsonClient) -> None:
    # As if sent one by one: the repeat is a replay of the first (keys compare case-insensitively).
    body = {"tasks": [_item(0, idempotencyKey="dup"), _item(1), _item(0, idempotencyKey="DUP")]}
    response = client_a.post(BATCH, body)
    assert response.status_code == 201, response.content
    items = response.json()["items"]
    assert items[2]["id"] == items[0]["id"] and [i["created"] for i in items] == [True, True, False]
    assert Task.objects.count() == 2
    # With another body: 409 naming the item, nothing created.
    other = {"tasks": [_item(5, idempotencyKey="k"), _item(6, idempotencyKey="k")]}
    conflict = client_a.post(BATCH, other)
    assert conflict.status_code == 409 and conflict.json()["details"]["field"] == "tasks[1].idempotencyKey"
    assert "tasks[0].idempotencyKey" in _fields(client_a.post(BATCH, {"tasks": [_item(0, idempotencyKey="x" * 256)]}))
    assert Task.objects.count() == 2


def test_a_unique_key_repeated_inside_one_batch_gets_the_first_items_task_or_409(client_a: JsonClient) -> None:
    response = client_a.post(BATCH, {"tasks": [_item(0, uniqueKey="u"), _item(1, uniqueKey="u"), _item(2)]})
    assert response.status_code == 201, response.content
    items = response.json()["items"]
    assert items[1]["id"] == items[0]["id"] and items[1]["uniqueExisting"] and not items[1]["created"]
    assert Task.objects.count() == 2
    error = client_a.post(BATCH, {"tasks": [_item(3, uniqueKey="v"), _item(4, uniqueKey="v", onConflict="error")]})
    assert error.status_code == 409 and error.json()["details"]["field"] == "tasks[1].uniqueKey"
    assert Task.objects.count() == 2


def test_keys_are_per_client(client_a: JsonClient, client_b: JsonClient) -> None:
    a = client_a.post(BATCH, {"tasks": [_item(0, idempotencyKey="same")]}).json()["items"][0]
    b = client_b.post(BATCH, {"tasks": [_item(0, idempotencyKey="same")]})
    assert b.status_code == 201 and b.json()["items"][0]["id"] != a["id"]


def test_batch_create_runs_a_bounded_number_of_statements(client_a: JsonClient) -> None:
    def count(size: int, offset: int) -> int:
        body = {"tasks": [_item(n, idempotencyKey=f"q-{n}") for n in range(offset, offset + size)]}
        with CaptureQueriesContext(connection) as ctx:
            assert client_a.post(BATCH, body).status_code == 201
        return len(ctx.captured_queries)

    count(1, 1000)  # warm-up (first-use costs)
    small, large = count(2, 0), count(20, 100)  # (SQLite splits INSERTs past 999 parameters: ~35 a row)
    if connection.features.can_return_rows_from_bulk_insert:
        assert small == large  # one key lookup, one INSERT of tasks, one of history, whatever the size
    assert Task.objects.count() == 23 and TaskStatusHistory.objects.count() == 23


# --- POST /tasks/reports ---------------------------------------------------------------------------


def _stale() -> float:
    return REGISTRY.get_sample_value("taskhub_stale_reports_refused_total") or 0.0


def test_a_mixed_batch_applies_each_item_and_refuses_only_the_stale_one(leased: Callable[..., Any]) -> None:
    unit, tasks = leased(4, maxRetries=2)
    done, failed, progressing, stale = tasks
    stale_before = _stale()
    log = [{"level": "INFO", "message": "working"}, {"level": "WARN", "message": "slow"}]
    body = {
        "reports": [
            {"taskId": done["id"], "attempt": 1, "outcome": "complete", "result": {"rows": 3}, "logs": log},
            {"taskId": failed["id"], "attempt": 1, "outcome": "fail", "error": "boom", "logs": log[:1]},
            {"taskId": progressing["id"], "attempt": 1, "outcome": "progress", "progress": 40},
            {"taskId": stale["id"], "attempt": 2, "outcome": "complete", "logs": log},
            {"taskId": 999_999, "attempt": 1, "outcome": "complete"},
        ]
    }
    response = unit.post(REPORTS, body)
    assert response.status_code == 200, response.content
    items = response.json()["items"]
    assert [i["taskId"] for i in items] == [r["taskId"] for r in body["reports"]]
    assert [(i["status"], i["accepted"], i["error"]) for i in items[:3]] == [
        ("COMPLETED", True, None),
        ("FAILED", True, None),
        ("RUNNING", True, None),
    ]
    assert items[3]["accepted"] is False and items[3]["error"]["code"] == "stale_attempt"
    assert items[3]["error"]["details"]["liveAttempt"] == 1
    assert items[4]["error"]["code"] == "not_found"
    assert _stale() - stale_before == 1  # counted as the single endpoints count it

    rows = {t.pk: t for t in Task.objects.all()}
    assert rows[done["id"]].result == {"rows": 3} and rows[done["id"]].progress == 100
    assert rows[done["id"]].finished_at is not None
    assert rows[failed["id"]].error == "boom" and rows[failed["id"]].retry_count == 1
    assert rows[failed["id"]].next_retry_at is not None  # retryable by default, retries left
    assert rows[progressing["id"]].progress == 40 and rows[progressing["id"]].status == "RUNNING"
    assert rows[stale["id"]].status == "RUNNING" and rows[stale["id"]].progress == 0
    logs = TaskExecutionLog.objects.order_by("id")
    assert [(entry.task_id, entry.attempt, entry.unit_id) for entry in logs] == [
        (done["id"], 1, "worker-001"),
        (done["id"], 1, "worker-001"),
        (failed["id"], 1, "worker-001"),
    ]
    assert _chain(done["id"]) == [(None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]
    assert _chain(failed["id"])[-1] == ("RUNNING", "FAILED")
    assert "retry 1/2 scheduled" in TaskStatusHistory.objects.filter(task_id=failed["id"]).last().reason  # type: ignore[union-attr]
    assert _chain(stale["id"])[-1] == ("PENDING", "RUNNING")


def test_a_repeated_batch_is_answered_again_and_changes_nothing(leased: Callable[..., Any]) -> None:
    unit, (first, second) = leased(2)
    body = {
        "reports": [
            {"taskId": first["id"], "attempt": 1, "outcome": "complete", "logs": [{"message": "a"}]},
            {"taskId": second["id"], "attempt": 1, "outcome": "fail", "error": "x", "retryable": False},
        ]
    }
    assert [i["accepted"] for i in unit.post(REPORTS, body).json()["items"]] == [True, True]
    before = _rows()
    again = unit.post(REPORTS, body)
    assert again.status_code == 200
    assert [(i["status"], i["accepted"], i["error"]) for i in again.json()["items"]] == [
        ("COMPLETED", False, None),
        ("FAILED", False, None),
    ]
    assert _rows() == before
    # ... and the single endpoints agree: the same repeat there is accepted:false too.
    single = unit.post(f"{API}/tasks/{first['id']}/complete", {"attempt": 1})
    assert single.status_code == 200 and single.json()["accepted"] is False


def test_an_item_over_the_log_cap_is_refused_whole_and_the_others_pass(
    leased: Callable[..., Any], settings: Any
) -> None:
    settings.TASK_MAX_LOG_ENTRIES = 3
    unit, (first, second) = leased(2)
    assert unit.post(f"{API}/tasks/{first['id']}/logs", {"attempt": 1, "message": "one"}).status_code == 201
    lines = [{"message": f"line {n}"} for n in range(3)]
    body = {
        "reports": [
            {"taskId": first["id"], "attempt": 1, "outcome": "complete", "logs": lines},
            {"taskId": second["id"], "attempt": 1, "outcome": "complete", "logs": lines},
        ]
    }
    items = unit.post(REPORTS, body).json()["items"]
    assert items[0]["error"]["code"] == "conflict" and items[0]["error"]["details"] == {"stored": 1, "cap": 3}
    assert items[1]["accepted"] is True
    assert Task.objects.get(pk=first["id"]).status == "RUNNING"  # nothing of the refused item applied
    assert TaskExecutionLog.objects.filter(task_id=first["id"]).count() == 1
    assert TaskExecutionLog.objects.filter(task_id=second["id"]).count() == 3


def test_a_unit_cannot_report_another_units_task(leased: Callable[..., Any]) -> None:
    unit_a, [task_a] = leased(1, "unit-a", "TYPE_A")
    unit_b, _ = leased(1, "unit-b", "TYPE_B")
    before = _rows()
    body = {"reports": [{"taskId": task_a["id"], "attempt": 1, "outcome": "complete", "logs": [{"message": "x"}]}]}
    [item] = unit_b.post(REPORTS, body).json()["items"]
    assert item["accepted"] is False and item["status"] is None and item["error"]["code"] == "stale_attempt"
    assert "liveAttempt" not in item["error"]["details"]  # says nothing about a task it does not hold
    assert _rows() == before and Task.objects.get(pk=task_a["id"]).status == "RUNNING"
    assert unit_a.post(REPORTS, body).json()["items"][0]["accepted"] is True


def test_reports_are_for_unit_tokens_and_creation_for_keys(
    client_a: JsonClient, leased: Callable[..., Any], make_client: Callable[..., JsonClient]
) -> None:
    unit, [task] = leased(1)
    report = {"reports": [{"taskId": task["id"], "attempt": 1, "outcome": "complete"}]}
    assert client_a.post(REPORTS, report).status_code == 403
    assert unit.post(BATCH, {"tasks": [_item(0)]}).status_code == 403
    reader = make_client("reader", scopes=("tasks:read",))
    assert reader.post(BATCH, {"tasks": [_item(0)]}).status_code == 403
    assert Task.objects.get(pk=task["id"]).status == "RUNNING" and Task.objects.count() == 1


def test_report_validation_names_the_field_and_changes_nothing(leased: Callable[..., Any]) -> None:
    unit, (first, second) = leased(2)
    before = _rows()
    ok = {"taskId": first["id"], "attempt": 1, "outcome": "complete"}
    cases = {
        "reports[2].attempt": [ok, {**ok, "taskId": second["id"]}, {"taskId": 5, "outcome": "complete"}],
        "reports[0].error": [{**ok, "outcome": "fail"}],
        "reports[0].progress": [{**ok, "outcome": "progress"}],
        "reports[0].outcome": [{**ok, "outcome": "done"}],
        "reports[1].logs[0].level": [ok, {**ok, "taskId": second["id"], "logs": [{"level": "LOUD", "message": "x"}]}],
        "reports[0].attempt": [{**ok, "attempt": True}],
    }
    for field, reports in cases.items():
        assert field in _fields(unit.post(REPORTS, {"reports": reports})), field
    assert _rows() == before


def test_a_second_report_for_one_task_in_a_batch_is_refused_in_its_item(leased: Callable[..., Any]) -> None:
    unit, (task,) = leased(1)
    progress = {"taskId": task["id"], "attempt": 1, "outcome": "progress", "progress": 40}
    complete = {"taskId": task["id"], "attempt": 1, "outcome": "complete", "result": {"ok": True}}
    response = unit.post(REPORTS, {"reports": [progress, complete]})
    assert response.status_code == 200, response.content
    first, second = response.json()["items"]
    assert first["accepted"] and first["error"] is None
    assert not second["accepted"] and second["error"]["code"] == "repeated"
    stored = Task.objects.get(pk=task["id"])
    assert (stored.status, stored.progress) == ("RUNNING", 40)  # only the first report was applied


def test_report_batch_runs_a_bounded_number_of_statements(leased: Callable[..., Any]) -> None:
    unit, tasks = leased(30)

    def count(chunk: list[Any], outcomes: list[str]) -> int:
        reports = [
            {"taskId": t["id"], "attempt": 1, "outcome": o, "error": "e", "progress": 5, "logs": [{"message": "m"}]}
            for t, o in zip(chunk, itertools.cycle(outcomes), strict=False)
        ]
        with CaptureQueriesContext(connection) as ctx:
            items = unit.post(REPORTS, {"reports": reports}).json()["items"]
        assert all(i["accepted"] for i in items), items
        return len(ctx.captured_queries)

    count(tasks[:1], ["complete"])  # warm-up
    # lock, log counts, log INSERT, task UPDATE, history INSERT: the same for 3 results and 12.
    alike = count(tasks[1:4], ["complete"])
    assert count(tasks[4:16], ["complete"]) == alike
    # Rows with different values: one UPDATE per group of equal values, or one CASE UPDATE past the
    # limit (retry times differ row by row), never one per row.
    mixed = count(tasks[16:30], ["complete", "fail", "progress"])
    assert mixed <= alike + core.MAX_GROUPED_UPDATES - 1, (mixed, alike)
    assert TaskExecutionLog.objects.count() == 30
    assert Task.objects.filter(status="FAILED", next_retry_at__isnull=False).count() == 5
    assert Task.objects.filter(status="RUNNING", progress=5).count() == 4
