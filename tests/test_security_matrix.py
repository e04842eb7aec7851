"""Security matrix: every API operation called by client A, client B, unit A, unit B, no key, a
revoked key and a made-up key, on A's objects and on B's. Each call gets the right 401/403/404/409,
a refused call changes nothing, no response carries the other side's data (lists and stats
included), and nothing a caller does touches the other side's rows.

Also here: execution pools (a unit claims only its tenant's tasks), revoked keys ending their
units' tokens, deregistration evicting the unit's process, scopes, secrets stored only as digests,
throttling (429 + Retry-After) per client and per unit (heartbeats in a bucket of their own), the
body limit (413) on every operation of the schema, caps on log volume and page size, the admin
behind its login with production cookie settings, and the unit agent never logging its token."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.core.cache import cache
from django.db import models
from django.utils import timezone

from taskhub.api.throttling import PrincipalRateThrottle
from taskhub.apikeys.models import ALL_SCOPES, ApiKey
from taskhub.apikeys.services import api_key_revoke
from taskhub.apikeys.tokens import digest
from taskhub.schedules.models import Schedule
from taskhub.webhooks.models import WebhookSubscription
from tasks.models import QueueChange, QueueSettings, Task, TaskExecutionLog, TaskStatusHistory
from testkit.waiting import wait_for
from tests.conftest import JsonClient
from units.models import ExecutionUnit

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"


# --- the world: two clients, each with a unit and tasks in every interesting state -----------


@dataclass
class Side:
    name: str  # "A" | "B"
    client: JsonClient
    key: str
    unit: JsonClient
    unit_id: str
    unit_token: str
    tasks: dict[str, int]  # "running" (leased to the side's unit), "pending", "failed"
    schedule: int = 0  # a recurring schedule of the side's
    webhook: int = 0  # a webhook the side's key registered

    @property
    def task_type(self) -> str:
        # Both sides' keys are in the default execution pool, whose units claim any of its clients'
        # tasks of their type (a shared pool: see the pool tests at the end); each side has its own
        # type here so that a unit's claim reply holds only its own client's tasks.
        return f"SEC_{self.name}"

    @property
    def marker(self) -> str:
        """Appears in every piece of data the side owns: names, config, results, logs, units."""
        return f"MARK-{self.name}-7f3e"

    @property
    def queue(self) -> str:
        """A queue the side's key configured (it owns its settings)."""
        return f"Q_{self.marker}"


@dataclass
class World:
    a: Side
    b: Side
    nobody: dict[str, JsonClient]

    def side(self, name: str) -> Side:
        return self.a if name == "A" else self.b

    def other(self, name: str) -> Side:
        return self.b if name == "A" else self.a


def _ok(response: Any, *statuses: int) -> Any:
    assert response.status_code in statuses, (response.status_code, response.content[:500])
    return response.json() if response.content else None


def _build_side(make_client: Callable[..., JsonClient], name: str) -> Side:
    client = make_client(f"client-{name.lower()}")
    marker = f"MARK-{name}-7f3e"
    unit_id = f"unit-{name.lower()}"
    reg = _ok(
        client.post(
            f"{API}/execution-units/register",
            {
                "id": unit_id,
                "unitType": f"SEC_{name}",
                "unitName": f"unit name {marker}",
                "capacity": 2,
                "endpoint": f"http://{marker.lower()}.example:8080",
                "metadata": {"secret": marker},
            },
        ),
        201,
    )
    unit = JsonClient(reg["token"])

    def create(label: str) -> int:
        body = {"name": f"{label} {marker}", "taskType": f"SEC_{name}", "priority": 1, "config": {"m": marker}}
        return int(_ok(client.post(f"{API}/tasks", body), 201)["id"])

    tasks = {"failed": create("failed")}
    claimed = _ok(unit.post(f"{API}/execution-units/{unit_id}/claim", {"max": 1}), 200)["items"]
    assert [t["id"] for t in claimed] == [tasks["failed"]]
    _ok(
        unit.post(f"{API}/tasks/{tasks['failed']}/fail", {"attempt": 1, "error": f"boom {marker}", "retryable": False}),
        200,
    )
    tasks["running"] = create("running")
    claimed = _ok(unit.post(f"{API}/execution-units/{unit_id}/claim", {"max": 1}), 200)["items"]
    assert [t["id"] for t in claimed] == [tasks["running"]]
    _ok(unit.post(f"{API}/tasks/{tasks['running']}/logs", {"attempt": 1, "message": f"log {marker}"}), 201)
    tasks["pending"] = create("pending")
    _ok(client.patch(f"{API}/queues/Q_{marker}", {"maxRunning": 3}), 200)
    schedule = _ok(
        client.post(
            f"{API}/schedules",
            {
                "name": f"schedule {marker}",
                "cron": "0 3 * * *",
                "template": {"name": marker, "taskType": f"SEC_{name}"},
            },
        ),
        201,
    )["id"]
    side = Side(name, client, client.secret, unit, unit_id, reg["token"], tasks, schedule)  # type: ignore[attr-defined]
    # A public address literal: the SSRF check needs no DNS for it, and nothing is ever sent here.
    hook = _ok(client.post(f"{API}/webhooks", {"url": f"https://93.184.216.34/{marker}"}), 201)
    side.webhook = hook["id"]
    return side


@pytest.fixture(autouse=True)
def _short_event_streams(settings: Any) -> None:
    """GET /events ends quickly here, so its whole body can be read and searched for leaks."""
    settings.EVENTS_STREAM_MAX_SECONDS = 0.2
    settings.RESULTS_POLL_INTERVAL = 0.05
    settings.EVENTS_GAP_GRACE_SECONDS = 0.0


@pytest.fixture
def world(make_client: Callable[..., JsonClient]) -> World:
    a = _build_side(make_client, "A")
    b = _build_side(make_client, "B")
    revoked = make_client("client-revoked")
    api_key_revoke(ApiKey.objects.get(name="client-revoked"))
    nobody = {"no-key": JsonClient(None), "revoked-key": revoked, "made-up-key": JsonClient("thk_" + "x" * 43)}
    return World(a, b, nobody)


def _rows_of(side: str | None) -> dict[str, list[Any]]:
    """Every row a side owns (None: all rows), as plain values."""
    owner = {"owner__name": f"client-{side.lower()}"} if side else {}
    via_task = {"task__owner__name": f"client-{side.lower()}"} if side else {}
    return {
        "tasks": list(Task.objects.filter(**owner).order_by("id").values()),
        "history": list(TaskStatusHistory.objects.filter(**via_task).order_by("id").values()),
        "logs": list(TaskExecutionLog.objects.filter(**via_task).order_by("id").values()),
        "units": list(ExecutionUnit.objects.filter(**owner).order_by("id").values()),
        "queues": list(QueueSettings.objects.filter(**owner).order_by("task_type").values()),
        "queueChanges": list(
            QueueChange.objects.filter(**({"task_type__contains": f"MARK-{side}-"} if side else {})).values()
        ),
        "schedules": list(Schedule.objects.filter(**owner).order_by("id").values()),
        "webhooks": list(WebhookSubscription.objects.filter(**owner).order_by("id").values()),
    }


# --- the operations --------------------------------------------------------------------------

Body = Callable[[Side], Any]


@dataclass(frozen=True)
class Op:
    name: str
    method: str
    path: str  # {task} / {unit} filled from the target side
    scope: str | None  # None: only a unit's own token may call it
    ok: int  # the owner's success status
    target: str | None = None  # which object of a side: a task label, "unit", or None (a collection)
    body: Body | None = None
    unit_may: bool = False

    def url(self, side: Side) -> str:
        task_id = side.tasks.get(self.target or "", 0)
        return API + self.path.format(
            task=task_id, unit=side.unit_id, queue=side.queue, schedule=side.schedule, webhook=side.webhook
        )


def _report(extra: dict[str, Any]) -> Body:
    return lambda side: {"attempt": 1, **extra}


OPS = [
    Op("list-tasks", "get", "/tasks", "tasks:read", 200),
    Op("create-task", "post", "/tasks", "tasks:write", 201, body=lambda s: {"name": "n", "taskType": s.task_type}),
    Op(
        "create-batch",
        "post",
        "/tasks/batch",
        "tasks:write",
        201,
        body=lambda s: {"tasks": [{"name": "n", "taskType": s.task_type}, {"name": "m", "taskType": s.task_type}]},
    ),
    Op("task-stats", "get", "/tasks/stats", "tasks:read", 200),
    Op("redrive", "post", "/tasks/redrive", "tasks:write", 200, body=lambda s: {}),
    Op("get-task", "get", "/tasks/{task}", "tasks:read", 200, "running", unit_may=True),
    Op("wait-task", "get", "/tasks/{task}?waitFor=terminal&waitSeconds=0", "tasks:read", 200, "running", unit_may=True),
    Op("events", "get", "/events?lastEventId=0", "tasks:read", 200),
    Op("list-webhooks", "get", "/webhooks", "tasks:read", 200),
    Op(
        "create-webhook",
        "post",
        "/webhooks",
        "tasks:write",
        201,
        body=lambda s: {"url": "https://93.184.216.34/new", "events": ["COMPLETED"]},
    ),
    Op("get-webhook", "get", "/webhooks/{webhook}", "tasks:read", 200, "webhook"),
    Op("webhook-deliveries", "get", "/webhooks/{webhook}/deliveries", "tasks:read", 200, "webhook"),
    Op("delete-webhook", "delete", "/webhooks/{webhook}", "tasks:write", 204, "webhook"),
    Op("patch-task", "patch", "/tasks/{task}", "tasks:write", 200, "pending", body=lambda s: {"name": "renamed"}),
    Op("delete-task", "delete", "/tasks/{task}", "tasks:write", 204, "pending"),
    Op(
        "set-status",
        "put",
        "/tasks/{task}/status",
        "tasks:write",
        200,
        "pending",
        body=lambda s: {"status": "CANCELLED", "reason": "x"},
    ),
    Op("retry", "post", "/tasks/{task}/retry", "tasks:write", 200, "failed"),
    Op("history", "get", "/tasks/{task}/history", "tasks:read", 200, "running"),
    Op("read-logs", "get", "/tasks/{task}/logs", "tasks:read", 200, "running"),
    Op(
        "write-logs",
        "post",
        "/tasks/{task}/logs",
        "tasks:write",
        201,
        "running",
        body=_report({"message": "more"}),
        unit_may=True,
    ),
    Op("progress", "post", "/tasks/{task}/progress", None, 200, "running", _report({"progress": 5}), True),
    Op("complete", "post", "/tasks/{task}/complete", None, 200, "running", _report({"result": {"ok": 1}}), True),
    Op("fail", "post", "/tasks/{task}/fail", None, 200, "running", _report({"error": "e", "retryable": False}), True),
    Op(
        "report-batch",
        "post",
        "/tasks/reports",
        None,
        200,
        "running",  # the body names the target side's task
        body=lambda s: {
            "reports": [{"taskId": s.tasks["running"], "attempt": 1, "outcome": "complete", "logs": [{"message": "x"}]}]
        },
        unit_may=True,
    ),
    Op(
        "register",
        "post",
        "/execution-units/register",
        "units:register",
        200,
        "unit",
        body=lambda s: {"id": s.unit_id, "unitType": s.task_type, "unitName": "again", "capacity": 1},
    ),
    Op("list-units", "get", "/execution-units", "units:read", 200),
    Op("unit-stats", "get", "/execution-units/stats", "units:read", 200),
    Op("get-unit", "get", "/execution-units/{unit}", "units:read", 200, "unit", unit_may=True),
    Op(
        "patch-unit",
        "patch",
        "/execution-units/{unit}",
        "units:write",
        200,
        "unit",
        body=lambda s: {"status": "MAINTENANCE"},
        unit_may=True,  # a unit may drain itself (and do nothing else with PATCH)
    ),
    Op("delete-unit", "delete", "/execution-units/{unit}", "units:write", 204, "unit"),
    Op(
        "heartbeat",
        "post",
        "/execution-units/{unit}/heartbeat",
        None,
        200,
        "unit",
        body=lambda s: {"currentLoad": 1, "tasks": [{"id": s.tasks["running"], "attempt": 1}]},
        unit_may=True,
    ),
    Op("claim", "post", "/execution-units/{unit}/claim", None, 200, "unit", body=lambda s: {"max": 1}, unit_may=True),
    Op(
        "bulk",
        "post",
        "/tasks/bulk",
        "tasks:write",
        200,
        body=lambda s: {"filter": {}, "action": "reprioritize", "priority": 9},
    ),
    Op("list-queues", "get", "/queues", "queues:read", 200),
    Op("get-queue", "get", "/queues/{queue}", "queues:read", 200, "queue"),
    Op("patch-queue", "patch", "/queues/{queue}", "queues:write", 200, "queue", body=lambda s: {"maxRunning": 2}),
    Op("list-schedules", "get", "/schedules", "tasks:read", 200),
    Op(
        "create-schedule",
        "post",
        "/schedules",
        "tasks:write",
        201,
        body=lambda s: {"name": "n", "cron": "*/5 * * * *", "template": {"name": "n", "taskType": s.task_type}},
    ),
    Op("get-schedule", "get", "/schedules/{schedule}", "tasks:read", 200, "schedule"),
    Op("patch-schedule", "patch", "/schedules/{schedule}", "tasks:write", 200, "schedule", lambda s: {"paused": True}),
    Op("delete-schedule", "delete", "/schedules/{schedule}", "tasks:write", 204, "schedule"),
]
OPS_BY_NAME = {op.name: op for op in OPS}
REPORTS = {"write-logs", "progress", "complete", "fail"}
BATCH_REPORTS = {"report-batch"}
PRINCIPALS = ["client-A", "client-B", "unit-A", "unit-B", "no-key", "revoked-key", "made-up-key"]


def expected_status(principal: str, op: Op, target: str) -> int:
    """What `principal` must get for `op` on the objects of side `target`."""
    kind, _, side = principal.partition("-")
    if kind not in ("client", "unit"):
        return 401
    own = target == side
    if kind == "client":
        if op.scope is None:
            return 403  # only a unit's own token
        if op.target is None or own:
            return op.ok
        return 403 if op.name == "register" else 404  # another client's rows do not exist for it
    if not op.unit_may:
        return 403
    if op.name in ("heartbeat", "claim"):
        return op.ok if own else 403  # a unit acts only for itself
    if op.name in ("get-unit", "get-task", "wait-task", "patch-unit"):
        return op.ok if own else 404  # it sees only itself and the tasks leased to it
    if op.name in BATCH_REPORTS:
        return op.ok  # the batch answers 200; each item for a task it does not hold is fenced (409 inside)
    return op.ok if own else 409  # a report for a task it does not hold is fenced


def _caller(world: World, principal: str) -> JsonClient:
    kind, _, side = principal.partition("-")
    if kind == "client":
        return world.side(side).client
    if kind == "unit":
        return world.side(side).unit
    return world.nobody[principal]


def _call(caller: JsonClient, op: Op, target: Side) -> Any:
    url = op.url(target)
    if op.body is None:
        return getattr(caller, op.method)(url)
    return getattr(caller, op.method)(url, op.body(target))


def _assert_no_leak(response: Any, forbidden: list[str], what: str) -> None:
    # An event stream (GET /events) is read to its end: it ends after EVENTS_STREAM_MAX_SECONDS here.
    raw = b"".join(response.streaming_content) if response.streaming else response.content
    text = raw.decode("utf-8", "replace")
    for secret in forbidden:
        assert secret not in text, f"{what}: response carries {secret!r}: {text[:400]}"


def _assert_error_shape(response: Any, status: int) -> None:
    body = response.json()
    assert body["statusCode"] == status and body["code"] and body["message"], body
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("op_name", [op.name for op in OPS])
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_every_principal_gets_the_right_answer_for_every_operation(world: World, principal: str, op_name: str) -> None:
    op = OPS_BY_NAME[op_name]
    kind, _, side_name = principal.partition("-")
    caller = _caller(world, principal)
    if kind in ("client", "unit"):
        mine, theirs = world.side(side_name), world.other(side_name)
        targets = [theirs, mine] if op.target is not None else [mine]
        forbidden = [theirs.marker, theirs.key, theirs.unit_token, f"client-{theirs.name.lower()}"]
    else:
        mine, theirs = world.a, world.b
        targets = [world.b, world.a] if op.target is not None else [world.a]
        forbidden = [world.a.marker, world.b.marker, world.a.key, world.b.key, "client-a", "client-b"]
    for target in targets:
        before_all = _rows_of(None)
        before_theirs = _rows_of(theirs.name) if kind in ("client", "unit") else None
        response = _call(caller, op, target)
        want = expected_status(principal, op, target.name)
        what = f"{principal} {op.method.upper()} {op.url(target)} (objects of {target.name})"
        assert response.status_code == want, f"{what}: {response.status_code} {response.content[:300]!r}"
        _assert_no_leak(response, forbidden, what)
        if want >= 400:
            _assert_error_shape(response, want)
            assert _rows_of(None) == before_all, f"{what}: a refused call changed something"
        elif op.name in BATCH_REPORTS and kind == "unit" and target is not mine:
            [item] = response.json()["items"]
            assert item["accepted"] is False and item["status"] is None, f"{what}: {item}"
            assert item["error"]["code"] == "stale_attempt", f"{what}: {item}"
            assert _rows_of(None) == before_all, f"{what}: a refused item changed something"
        elif before_theirs is not None:
            assert _rows_of(theirs.name) == before_theirs, f"{what}: changed the other side's rows"


@pytest.mark.parametrize("side_name", ["A", "B"])
def test_lists_and_stats_show_only_the_callers_own_rows(world: World, side_name: str) -> None:
    me, them = world.side(side_name), world.other(side_name)
    tasks = _ok(me.client.get(f"{API}/tasks?limit=100"), 200)
    assert sorted(t["id"] for t in tasks["items"]) == sorted(me.tasks.values()) and tasks["total"] == 3
    cursor = _ok(me.client.get(f"{API}/tasks?cursor="), 200)
    assert sorted(t["id"] for t in cursor["items"]) == sorted(me.tasks.values())
    for term in (str(them.tasks["pending"]), them.marker, "pending"):
        found = _ok(me.client.get(f"{API}/tasks?search={term}"), 200)["items"]
        assert all(t["id"] in me.tasks.values() for t in found), term
    by_unit = _ok(me.client.get(f"{API}/tasks?unitId={them.unit_id}"), 200)
    assert by_unit["items"] == [] and by_unit["total"] == 0
    stats = _ok(me.client.get(f"{API}/tasks/stats"), 200)
    assert stats["total"] == 3 and stats["byStatus"]["RUNNING"] == 1 and stats["dead"] == 1
    units = _ok(me.client.get(f"{API}/execution-units"), 200)
    assert [u["id"] for u in units["items"]] == [me.unit_id]
    unit_stats = _ok(me.client.get(f"{API}/execution-units/stats"), 200)
    assert unit_stats["total"] == 1 and unit_stats["runningTasks"] == 1
    redrive = _ok(me.client.post(f"{API}/tasks/redrive", {"ids": [them.tasks["failed"], me.tasks["failed"]]}), 200)
    assert redrive["retried"] == [me.tasks["failed"]]
    assert Task.objects.get(pk=them.tasks["failed"]).status == "FAILED"
    # A unit's own view: its own row, the task leased to it, nothing else.
    assert _ok(me.unit.get(f"{API}/execution-units/{me.unit_id}"), 200)["id"] == me.unit_id
    assert me.unit.get(f"{API}/tasks/{me.tasks['pending']}").status_code == 404
    assert me.unit.patch(f"{API}/execution-units/{me.unit_id}", {"unitName": "x"}).status_code == 403
    assert me.unit.patch(f"{API}/execution-units/{me.unit_id}", {"status": "ONLINE"}).status_code == 403


@pytest.mark.parametrize("scope", ALL_SCOPES)
def test_a_key_can_do_exactly_what_its_scope_allows(world: World, make_client: Callable[..., JsonClient], scope: str):
    scoped = make_client(f"only-{scope.replace(':', '-')}", scopes=(scope,))
    for op in OPS:
        before = _rows_of(None)
        response = _call(scoped, op, world.a)
        if op.scope != scope:
            assert response.status_code == 403, (scope, op.name, response.status_code)
            assert response.json()["code"] == "forbidden"
            assert _rows_of(None) == before, (scope, op.name)
        else:
            # Allowed; world A's rows are not this key's, so they do not exist for it (and A's unit
            # id is taken: registering it is refused).
            allowed = (op.ok, 404, 403) if op.name == "register" else (op.ok, 404)
            assert response.status_code in allowed, (scope, op.name, response.status_code, response.content)
            if response.status_code == 403:
                assert "another API key" in response.json()["message"]
            _assert_no_leak(response, [world.a.marker, world.b.marker], f"{scope} {op.name}")


def test_keys_and_unit_tokens_are_stored_only_as_digests(world: World) -> None:
    secrets = [world.a.key, world.b.key, world.a.unit_token, world.b.unit_token]
    secrets += [s[4:] for s in secrets]  # without the thk_/thu_ prefix too
    for model in apps.get_models():
        text_fields = [
            f.attname
            for f in model._meta.concrete_fields
            if isinstance(f, models.CharField | models.TextField | models.JSONField)
        ]
        for row in model._default_manager.values_list(*text_fields) if text_fields else []:
            blob = json.dumps(row, default=str)
            for secret in secrets:
                assert secret not in blob, f"{model.__name__} stores a secret in clear"
    key = ApiKey.objects.get(name="client-a")
    assert re.fullmatch(r"[0-9a-f]{64}", key.key_hash) and world.a.key.startswith(key.prefix)
    assert re.fullmatch(r"[0-9a-f]{64}", ExecutionUnit.objects.get(pk="unit-a").token_hash)


def test_secrets_never_reach_the_server_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    access = logging.getLogger("taskhub.access")  # does not propagate to the root logger
    access.addHandler(caplog.handler)
    try:
        for op in OPS:
            for principal in PRINCIPALS:
                _call(_caller(world, principal), op, world.a)
    finally:
        access.removeHandler(caplog.handler)
    assert "GET /api/v1/tasks" in caplog.text
    for secret in (world.a.key, world.b.key, world.a.unit_token, world.b.unit_token):
        assert secret not in caplog.text


# --- throttling ------------------------------------------------------------------------------


@pytest.fixture
def tight_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    # SimpleRateThrottle reads its rates into a class attribute at import time.
    monkeypatch.setattr(
        PrincipalRateThrottle,
        "THROTTLE_RATES",
        {"client": "5/min", "unit": "4/min", "anon": "3/min", "heartbeat": "3/5s"},
    )
    cache.clear()  # the world's set-up requests counted too


def _throttled(response: Any) -> None:
    assert response.status_code == 429, response.content
    assert response.json()["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60


def test_clients_are_throttled_per_key_with_retry_after(world: World, tight_rates: None) -> None:
    statuses = [world.a.client.get(f"{API}/tasks").status_code for _ in range(5)]
    assert statuses == [200] * 5
    _throttled(world.a.client.get(f"{API}/tasks"))
    _throttled(world.a.client.post(f"{API}/tasks", {"name": "n", "taskType": "SEC_A"}))
    assert Task.objects.filter(owner__name="client-a").count() == 3  # a throttled request changes nothing
    assert world.b.client.get(f"{API}/tasks").status_code == 200  # B has its own bucket


def test_units_are_throttled_per_unit_with_retry_after(world: World, tight_rates: None) -> None:
    claim = {"max": 1}
    assert [world.a.unit.post(f"{API}/execution-units/unit-a/claim", claim).status_code for _ in range(4)] == [200] * 4
    _throttled(world.a.unit.post(f"{API}/execution-units/unit-a/claim", claim))
    assert world.b.unit.post(f"{API}/execution-units/unit-b/claim", claim).status_code == 200
    assert world.a.client.get(f"{API}/tasks").status_code == 200  # the unit's key is another bucket


def test_a_throttled_unit_still_heartbeats_and_keeps_its_task(
    world: World, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """API_THROTTLE_UNIT=60/min: a unit that used up its bucket on claims is still heard, so it is
    never failed over for being throttled (heartbeats have a bucket of their own)."""
    from units.sweeper import sweep_heartbeats

    rates = {**PrincipalRateThrottle.THROTTLE_RATES, "unit": "60/min", "heartbeat": settings.API_THROTTLE_HEARTBEAT}
    monkeypatch.setattr(PrincipalRateThrottle, "THROTTLE_RATES", rates)
    cache.clear()
    claim = [world.a.unit.post(f"{API}/execution-units/unit-a/claim", {"max": 1}).status_code for _ in range(61)]
    assert claim[:60] == [200] * 60 and claim[60] == 429
    running = world.a.tasks["running"]
    beat = {"currentLoad": 1, "tasks": [{"id": running, "attempt": 1}]}
    for _ in range(20):
        reply = world.a.unit.post(f"{API}/execution-units/unit-a/heartbeat", beat)
        assert reply.status_code == 200, reply.content
    sweep_heartbeats(now=timezone.now())
    assert ExecutionUnit.objects.get(pk="unit-a").status != "OFFLINE"
    assert Task.objects.get(pk=running).status == "RUNNING"


def test_the_heartbeat_bucket_window_is_shorter_than_the_timeout(
    world: World, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from taskhub.env import parse_rate

    count, window = parse_rate(settings.API_THROTTLE_HEARTBEAT)
    assert count is not None and window is not None
    assert window < settings.UNIT_HEARTBEAT_TIMEOUT
    assert count >= window / settings.UNIT_HEARTBEAT_INTERVAL + 1
    monkeypatch.setattr(
        PrincipalRateThrottle,
        "THROTTLE_RATES",
        {"client": "5/min", "unit": "2/min", "anon": "3/min", "heartbeat": "3/5s"},
    )
    cache.clear()
    beat = {"currentLoad": 0}
    statuses = [world.a.unit.post(f"{API}/execution-units/unit-a/heartbeat", beat) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert 0 < int(statuses[3]["Retry-After"]) <= 5  # heard again well before the timeout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"API_THROTTLE_HEARTBEAT": "100/min", "UNIT_HEARTBEAT_TIMEOUT": "30"}, "shorter than UNIT_HEARTBEAT_TIMEOUT"),
        ({"API_THROTTLE_HEARTBEAT": "1/10s", "UNIT_HEARTBEAT_TIMEOUT": "30"}, "fewer than a unit"),
        ({"API_THROTTLE_UNIT": "lots"}, "API_THROTTLE_UNIT"),
    ],
)
def test_a_heartbeat_rate_that_could_fail_units_over_stops_startup(env: dict[str, str], message: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "TASK_", "UNIT_", "API_"))}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=base | {"DJANGO_SETTINGS_MODULE": "taskhub.settings", "VAR_DIR": "/tmp/taskhub-i18-var"} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


@pytest.mark.redis
def test_throttle_counters_live_in_redis_when_it_is_configured(world: World, tight_rates: None) -> None:
    from django_redis import get_redis_connection

    world.a.client.get(f"{API}/tasks")
    world.a.unit.post(f"{API}/execution-units/unit-a/heartbeat", {"currentLoad": 0})
    world.a.unit.post(f"{API}/execution-units/unit-a/claim", {"max": 1})
    keys = {k.decode() for k in get_redis_connection("default").keys("*throttle:*")}
    key_id = ApiKey.objects.get(name="client-a").pk
    assert any(k.endswith(f"throttle:client:key:{key_id}") for k in keys), keys
    assert any(k.endswith("throttle:unit:unit:unit-a") for k in keys), keys
    assert any(k.endswith("throttle:heartbeat:unit:unit-a") for k in keys), keys


# --- limits ----------------------------------------------------------------------------------


def _schema_operations(api: Any) -> list[tuple[str, str]]:
    schema = json.loads(api.get(f"{API}/schema?format=json").content)
    return [
        (method, path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("post", "put", "patch")
    ]


def test_body_limit_is_413_on_every_operation_for_every_caller(world: World, api: Any, settings: Any) -> None:
    operations = _schema_operations(api)
    assert len(operations) >= 13
    settings.API_MAX_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    oversized = json.dumps({"name": "n", "taskType": "SEC_A", "config": {"pad": "x" * 8192}})
    for method, path in operations:
        url = path.replace("{id}", str(world.a.tasks["running"]) if "/tasks/" in path else world.a.unit_id)
        for caller in (world.a.client, world.a.unit, world.nobody["no-key"]):
            before = _rows_of(None)
            response = getattr(caller.client, method)(url, data=oversized, content_type="application/json")
            assert response.status_code == 413, (method, url, response.status_code)
            assert response.json()["code"] == "payload_too_large"
            assert _rows_of(None) == before


def test_log_volume_per_task_is_capped(world: World, settings: Any) -> None:
    settings.TASK_MAX_LOG_ENTRIES = 5  # the running task holds one line already
    url = f"{API}/tasks/{world.a.tasks['running']}/logs"
    entries = [{"message": f"line {i}"} for i in range(3)]
    assert world.a.unit.post(url, {"attempt": 1, "entries": entries}).status_code == 201
    refused = world.a.unit.post(url, {"attempt": 1, "entries": entries})
    assert refused.status_code == 409 and refused.json()["details"]["cap"] == 5
    assert world.a.client.post(url, {"message": "one more"}).status_code == 201
    assert world.a.client.post(url, {"message": "over"}).status_code == 409
    assert TaskExecutionLog.objects.filter(task_id=world.a.tasks["running"]).count() == 5
    too_many = world.a.unit.post(url, {"attempt": 1, "entries": [{"message": "x"}] * 501})
    assert too_many.status_code == 400 and "entries" in too_many.json()["details"]["fields"]
    too_long = world.a.unit.post(url, {"attempt": 1, "message": "x" * 10_001})
    assert too_long.status_code == 400


def test_page_sizes_are_capped(world: World, settings: Any) -> None:
    settings.API_PAGE_SIZE_MAX = 2
    page = _ok(world.a.client.get(f"{API}/tasks?limit=1000000"), 200)
    assert page["limit"] == 2 and len(page["items"]) == 2 and page["totalPages"] == 2
    assert _ok(world.a.client.get(f"{API}/tasks?cursor=&limit=999"), 200)["limit"] == 2
    assert _ok(world.a.client.get(f"{API}/execution-units?limit=999"), 200)["limit"] == 2
    url = f"{API}/tasks/{world.a.tasks['running']}/logs"
    world.a.client.post(url, {"entries": [{"message": "x"}] * 500})
    world.a.client.post(url, {"entries": [{"message": "x"}] * 500})
    assert len(_ok(world.a.client.get(f"{url}?limit=999999"), 200)["items"]) == 1000
    for bad in ("limit=0", "limit=-1", "page=0", "limit=abc"):
        assert world.a.client.get(f"{API}/tasks?{bad}").status_code == 400, bad


# --- the admin and production cookies ---------------------------------------------------------


def test_admin_is_behind_its_login(api: Any, django_user_model: Any) -> None:
    for path in ("/admin/", "/admin/tasks/task/", "/admin/units/executionunit/", "/admin/apikeys/apikey/"):
        response = api.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), path
    django_user_model.objects.create_user("joe", password="pw-joe-123456")  # not staff
    response = api.post("/admin/login/", {"username": "joe", "password": "pw-joe-123456"})
    assert response.status_code == 200 and "_auth_user_id" not in api.session
    assert api.get("/admin/").status_code == 302
    assert api.get(f"{API}/tasks").status_code == 401  # a non-staff session is no API credential


def test_admin_login_sets_secure_httponly_cookies_under_production_settings(
    api: Any, django_user_model: Any, settings: Any
) -> None:
    production = _production_cookie_settings()
    assert production == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SECURE_HSTS_SECONDS": 31536000,
        "X_FRAME_OPTIONS": "DENY",
        "DEBUG": False,
    }
    for name, value in production.items():
        setattr(settings, name, value)
    django_user_model.objects.create_user("op", password="pw-op-123456", is_staff=True, is_superuser=True)
    response = api.post("/admin/login/?next=/admin/", {"username": "op", "password": "pw-op-123456"}, secure=True)
    assert response.status_code == 302
    cookie = response.cookies["sessionid"]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"
    assert api.get("/admin/", secure=True).status_code == 200
    assert api.get("/admin/", secure=True)["X-Frame-Options"] == "DENY"


def _production_cookie_settings() -> dict[str, Any]:
    """The values taskhub.settings gives under APP_ENV=production (read in a fresh process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "DJANGO_"))}
    env |= {
        "APP_ENV": "production",
        "SECRET_KEY": "x" * 60,
        "ALLOWED_HOSTS": "hub.example",
        "DJANGO_SETTINGS_MODULE": "taskhub.settings",
        "VAR_DIR": "/tmp/taskhub-security-test/var",
        "LOG_DIR": "/tmp/taskhub-security-test/logs",
    }
    names = list(
        (
            "SESSION_COOKIE_SECURE",
            "CSRF_COOKIE_SECURE",
            "SESSION_COOKIE_HTTPONLY",
            "SESSION_COOKIE_SAMESITE",
            "SECURE_HSTS_SECONDS",
            "X_FRAME_OPTIONS",
            "DEBUG",
        )
    )
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        f"print(json.dumps({{n: getattr(s, n) for n in {names!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# --- the unit agent never logs its token -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_unit_agent_never_logs_its_token_or_enroll_key(
    live_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `taskhub-unit` process, at debug level, registers, claims, runs and reports a task
    against a live server; neither its enroll key nor the token the hub gave it appears in
    anything it wrote."""
    import secrets as random_secrets

    from taskhub.apikeys.services import api_key_create
    from units import services as unit_services

    token = "thu_" + random_secrets.token_urlsafe(32)
    monkeypatch.setattr(unit_services, "new_unit_token", lambda: token)  # the live server runs in-process
    key, enroll = api_key_create(name="agent-enroll", scopes=["units:register", "tasks:write", "tasks:read"])
    client = JsonClient(enroll)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKHUB_", "DB_", "REDIS_"))}
    env["TASKHUB_ENROLL_KEY"] = enroll
    cmd = [sys.executable, "-m", "taskhub_unit", "--server", live_server.url, "--id", "agent-secrets"]
    cmd += ["--type", "SEC_AGENT", "--capacity", "1", "--handler", "echo", "--poll-interval", "0.2"]
    cmd += ["--log-level", "debug", "--data-dir", str(tmp_path / "data")]
    (tmp_path / "data").mkdir()
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        task = _ok(client.post(f"{API}/tasks", {"name": "echo", "taskType": "SEC_AGENT", "config": {"x": 1}}), 201)

        def completed() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            return Task.objects.get(pk=task["id"]).status == "COMPLETED"

        wait_for(completed, 60, "the agent to complete the task", interval=0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    written = log_path.read_text() + "".join(
        p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*") if p.is_file()
    )
    assert "agent-secrets" in written and "DEBUG" in written.upper()  # it did log, verbosely
    assert ExecutionUnit.objects.get(pk="agent-secrets").token_hash == digest(token)
    for secret in (token, enroll):
        assert secret not in written and secret[4:] not in written and secret[4:24] not in written
    assert key.pk


# --- hostile input the fuzzer found -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": 5}, "name"),
        ({"taskType": 0}, "taskType"),
        ({"priority": "5"}, "priority"),
        ({"priority": True}, "priority"),
        ({"maxRetries": "1"}, "maxRetries"),
        ({"config": "x"}, "config"),
        ({"scheduledAt": 1700000000}, "scheduledAt"),
    ],
)
def test_json_values_of_another_type_than_the_schema_says_are_400(world: World, body: dict[str, Any], field: str):
    base = {"name": "n", "taskType": "SEC_A", "priority": 1, "config": {}}
    before = _rows_of(None)
    response = world.a.client.post(f"{API}/tasks", base | body)
    assert response.status_code == 400, response.content
    assert field in response.json()["details"]["fields"]
    assert _rows_of(None) == before
    assert world.a.client.post(f"{API}/tasks", base | {"priority": 5.0}).status_code == 201  # 5.0 is an integer


def test_heartbeat_with_null_or_mistyped_task_entries_is_400_not_500(world: World) -> None:
    url = f"{API}/execution-units/unit-a/heartbeat"
    for tasks, field in (([None], "tasks[0]"), ([{"id": "1", "attempt": 1}], "tasks[0].id"), (["x"], "tasks[0]")):
        response = world.a.unit.post(url, {"currentLoad": 0, "tasks": tasks})
        assert response.status_code == 400, (tasks, response.content)
        assert field in response.json()["details"]["fields"], response.json()
    fail = world.a.unit.post(
        f"{API}/tasks/{world.a.tasks['running']}/fail", {"attempt": 1, "error": "e", "retryable": "yes"}
    )
    assert fail.status_code == 400 and "retryable" in fail.json()["details"]["fields"]


def test_unknown_api_paths_and_methods_answer_json_even_without_a_csrf_token(world: World) -> None:
    from rest_framework.test import APIClient

    browser = APIClient(enforce_csrf_checks=True)  # what a real client meets: CSRF is checked
    browser.credentials(HTTP_AUTHORIZATION=f"Bearer {world.a.key}")
    for method in ("post", "put", "patch", "delete"):
        response = getattr(browser, method)(f"{API}/no-such-thing", {}, format="json")
        assert response.status_code == 404 and response.json()["code"] == "not_found", (method, response.content)
        response = getattr(browser, method)(f"{API}/tasks/%C2%84", {}, format="json")
        assert response.status_code == 404 and response["Content-Type"] == "application/json", method
    health = browser.post(f"{API}/health", {}, format="json")
    assert health.status_code == 405 and health.json()["code"] == "method_not_allowed"
    assert "GET" in health["Allow"]


# --- revocation and deregistration end a unit's access (issue 18 #4) ----------------------------


def test_revoking_a_key_ends_the_unit_tokens_it_issued(world: World) -> None:
    running = world.a.tasks["running"]
    before = _rows_of("A")
    api_key_revoke(ApiKey.objects.get(name="client-a"))
    beat = {"currentLoad": 1, "tasks": [{"id": running, "attempt": 1}]}
    for path, body in (("heartbeat", beat), ("claim", {"max": 1})):
        reply = world.a.unit.post(f"{API}/execution-units/unit-a/{path}", body)
        assert reply.status_code == 401, (path, reply.content)
        assert "revoked" in reply.json()["message"]
    reply = world.a.unit.post(f"{API}/tasks/{running}/complete", {"attempt": 1, "result": {}})
    assert reply.status_code == 401
    assert _rows_of("A") == before  # refused: nothing changed
    # B's key and unit are untouched.
    assert world.b.unit.post(f"{API}/execution-units/unit-b/heartbeat", {"currentLoad": 0}).status_code == 200


def test_a_deregistered_process_is_evicted_and_a_new_one_may_register(world: World) -> None:
    body = {"id": "unit-e", "unitType": "SEC_A", "unitName": "e", "capacity": 1, "instanceId": "proc-1"}
    reg = _ok(world.a.client.post(f"{API}/execution-units/register", body), 201)
    assert world.a.client.delete(f"{API}/execution-units/unit-e").status_code == 204
    assert (
        JsonClient(reg["token"]).post(f"{API}/execution-units/unit-e/heartbeat", {"currentLoad": 0}).status_code == 401
    )
    again = world.a.client.post(f"{API}/execution-units/register", body)
    assert again.status_code == 409, again.content
    assert again.json()["code"] == "unit_evicted"
    assert again.json()["details"]["evictedBy"].startswith("key:")
    assert not ExecutionUnit.objects.filter(pk="unit-e").exists()  # refused: nothing changed
    fresh = world.a.client.post(f"{API}/execution-units/register", {**body, "instanceId": "proc-2"})
    assert fresh.status_code == 201, fresh.content


@pytest.mark.django_db(transaction=True)
def test_a_running_agent_whose_unit_is_deregistered_stops_with_exit_code_5(
    live_server: Any, tmp_path: Path, make_client: Callable[..., JsonClient]
) -> None:
    """A real `taskhub-unit` process running a task: "Deregister" fails the task over, and the agent
    stops (exit code 5, a clear line) instead of registering again and taking the task back."""
    client = make_client("agent-evict")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKHUB_", "DB_", "REDIS_"))}
    env["TASKHUB_ENROLL_KEY"] = client.secret  # type: ignore[attr-defined]
    cmd = [sys.executable, "-m", "taskhub_unit", "--server", live_server.url, "--id", "agent-evict"]
    cmd += ["--type", "SEC_EVICT", "--capacity", "1", "--handler", "sleep", "--poll-interval", "0.2"]
    task = _ok(client.post(f"{API}/tasks", {"name": "s", "taskType": "SEC_EVICT", "config": {"seconds": 60}}), 201)
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: Task.objects.get(pk=task["id"]).status == "RUNNING", 60, "the agent to claim", interval=0.2)
        assert client.delete(f"{API}/execution-units/agent-evict").status_code == 204
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert code == 5, text[-3000:]
    assert "was deregistered by key:agent-evict" in text
    assert not ExecutionUnit.objects.filter(pk="agent-evict").exists()
    task_row = Task.objects.get(pk=task["id"])
    assert task_row.status == "PENDING" and task_row.attempt == 1  # failed over once, never claimed again


# --- execution pools: a unit claims only its own tenant's tasks (issue 18 #13) -------------------


def _register(client: JsonClient, unit_id: str, unit_type: str) -> JsonClient:
    body = {"id": unit_id, "unitType": unit_type, "unitName": unit_id, "capacity": 5}
    return JsonClient(_ok(client.post(f"{API}/execution-units/register", body), 201)["token"])


def _task(client: JsonClient, task_type: str, marker: str) -> int:
    body = {"name": marker, "taskType": task_type, "config": {"password": marker}}
    return int(_ok(client.post(f"{API}/tasks", body), 201)["id"])


def test_a_unit_of_another_pool_never_claims_a_tenants_tasks() -> None:
    from taskhub.apikeys.services import api_key_create

    _, key_a = api_key_create(name="tenant-a", scopes=ALL_SCOPES, pool="tenant-a")
    _, key_b = api_key_create(name="tenant-b", scopes=ALL_SCOPES, pool="tenant-b")
    _, key_a2 = api_key_create(name="tenant-a-workers", scopes=["units:register"], pool="tenant-a")
    a, b = JsonClient(key_a), JsonClient(key_b)
    secret = _task(a, "SHARED", "A-password-9d2")
    unit_b = _register(b, "unit-pool-b", "SHARED")
    reply = _ok(unit_b.post(f"{API}/execution-units/unit-pool-b/claim", {"max": 5}), 200)
    assert reply["items"] == [] and "A-password-9d2" not in json.dumps(reply)
    assert Task.objects.get(pk=secret).status == "PENDING" and Task.objects.get(pk=secret).attempt == 0
    # B's own task of the same type: B's unit claims it.
    own = _task(b, "SHARED", "B-task")
    assert [
        t["id"] for t in _ok(unit_b.post(f"{API}/execution-units/unit-pool-b/claim", {"max": 5}), 200)["items"]
    ] == [own]
    # A unit registered by another key of A's pool claims A's task.
    unit_a = _register(JsonClient(key_a2), "unit-pool-a", "SHARED")
    claimed = _ok(unit_a.post(f"{API}/execution-units/unit-pool-a/claim", {"max": 5}), 200)["items"]
    assert [t["id"] for t in claimed] == [secret] and claimed[0]["config"] == {"password": "A-password-9d2"}


def test_one_pool_by_default_is_a_shared_worker_pool(world: World) -> None:
    """Keys made without a pool share the default one: any unit claims any client's tasks of its
    type (today's single-tenant behaviour)."""
    assert set(ApiKey.objects.values_list("pool", flat=True)) == {"default"}
    body = {"name": "B-in-A-type", "taskType": "SEC_A", "priority": 9, "config": {}}
    shared = int(_ok(world.b.client.post(f"{API}/tasks", body), 201)["id"])
    claimed = _ok(world.a.unit.post(f"{API}/execution-units/unit-a/claim", {"max": 1}), 200)["items"]
    assert [t["id"] for t in claimed] == [shared]
    assert Task.objects.get(pk=shared).pool == "default"
    assert ExecutionUnit.objects.get(pk="unit-a").pool == "default"


def test_operators_tasks_are_in_the_default_pool_and_pools_are_validated() -> None:
    from taskhub.apikeys.services import api_key_create
    from taskhub.base.errors import InvalidInput
    from tests import factories

    assert factories.task(task_type="OPS").pool == "default"
    with pytest.raises(InvalidInput) as bad:
        api_key_create(name="bad-pool", scopes=["tasks:read"], pool="no spaces")
    assert "pool" in bad.value.details["fields"]


def test_create_api_key_takes_a_pool() -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_api_key", "cli-tenant", "--scopes", "units:register", "--pool", "tenant-cli", stdout=out)
    assert "in pool 'tenant-cli'" in out.getvalue()
    key = ApiKey.objects.get(name="cli-tenant")
    assert key.pool == "tenant-cli" and key.key_hash == digest(out.getvalue().strip().splitlines()[-1])
