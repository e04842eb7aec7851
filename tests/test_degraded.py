"""Degraded services.

- Redis down: the API keeps serving (cache and throttling degrade open), health says so.
- Database down: every API operation answers 503 in the standard error shape (with Retry-After)
  and works again as soon as the database does; a write that breaks at any query leaves nothing
  half-written (each task's status and history still agree).

The first part simulates the outages in-process (Redis on a port nothing listens on; every SQL
statement failing through a connection execute-wrapper) and always runs. The second part stops the
real MariaDB and Redis, and restores them in `finally`; it runs only when CI asks for the services
(TASKHUB_REQUIRE_SERVICES=1) or with TASKHUB_DEGRADED_REAL=1, since it disturbs anything else
using them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import OperationalError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from taskhub.api.throttling import PrincipalRateThrottle
from tasks.jobs import fail_timeouts, move_due_retries
from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
from testkit import services
from testkit.hub import create_api_key, gunicorn_argv, migrate, wait_healthy
from testkit.ports import free_port
from testkit.processes import Process
from testkit.waiting import wait_for
from tests.conftest import JsonClient
from units.models import ExecutionUnit
from units.sweeper import sweep_heartbeats

ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"
TASK = {"name": "t", "taskType": "DEGRADED", "priority": 1, "config": {}}
REAL_OUTAGES = os.environ.get("TASKHUB_REQUIRE_SERVICES") == "1" or os.environ.get("TASKHUB_DEGRADED_REAL") == "1"
real_outage = pytest.mark.skipif(
    not REAL_OUTAGES, reason="stops shared services: runs with TASKHUB_REQUIRE_SERVICES=1 or TASKHUB_DEGRADED_REAL=1"
)


def _assert_503(response: Any, what: str) -> None:
    assert response.status_code == 503, (what, response.status_code, response.content[:300])
    body = response.json()
    assert body["statusCode"] == 503 and body["code"] == "service_unavailable" and body["message"], body
    assert int(response["Retry-After"]) > 0


# --- Redis down (simulated) ------------------------------------------------------------------


@pytest.fixture
def redis_unreachable(settings: Any) -> None:
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once
    settings.REDIS_URL = dead
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": dead,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 1,
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }


@pytest.mark.django_db
def test_with_redis_down_the_api_serves_and_throttling_degrades_open(
    redis_unreachable: None, client_a: JsonClient, register_unit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PrincipalRateThrottle, "THROTTLE_RATES", {"client": "2/min", "unit": "2/min", "anon": "2/min"})
    created = [client_a.post(f"{API}/tasks", TASK) for _ in range(4)]
    assert [r.status_code for r in created] == [201] * 4  # no counter store: no 429 either
    assert client_a.get(f"{API}/tasks").json()["total"] == 4
    unit, _ = register_unit("u-redis-down", unit_type="DEGRADED")
    claimed = unit.post(f"{API}/execution-units/u-redis-down/claim", {"max": 1}).json()["items"]
    assert unit.post(f"{API}/tasks/{claimed[0]['id']}/complete", {"attempt": 1, "result": {}}).status_code == 200


@pytest.mark.django_db
def test_with_redis_down_health_says_so(redis_unreachable: None) -> None:
    from asgiref.sync import async_to_sync
    from django.test import RequestFactory

    from taskhub.api.health import app_health, database_health, redis_health

    def get(view: Any) -> tuple[int, Any]:
        # Built here: the URLconf built its views from the settings of its own start-up.
        response = async_to_sync(view)(RequestFactory().get("/api/v1/health"))
        return response.status_code, json.loads(response.content)

    status, body = get(redis_health())
    assert status == 503 and body["status"] == "error"
    status, body = get(app_health())
    assert status == 503
    checks = body["checks"]
    assert any("Database" in name and state == "ok" for name, state in checks.items()), checks
    assert any(state != "ok" for state in checks.values()), checks
    assert get(database_health())[0] == 200  # the database itself is fine


# --- database down (simulated) ---------------------------------------------------------------


class FailingDatabase:
    """An execute-wrapper: query number `at` (1-based) fails as a lost server would; None: all."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.seen = 0

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        self.seen += 1
        if self.at is None or self.seen == self.at:
            raise OperationalError(2006, "MySQL server has gone away (injected)")
        return execute(sql, params, many, context)


@pytest.fixture
def scene(client_a: JsonClient, register_unit: Any) -> dict[str, Any]:
    """A unit holding two tasks, a pending task, a failed task due for retry, a silent unit holding
    one, and a running task past its timeout."""
    unit, _ = register_unit("u1", unit_type="DEGRADED", capacity=4)
    ids = [client_a.post(f"{API}/tasks", TASK).json()["id"] for _ in range(3)]
    assert len(unit.post(f"{API}/execution-units/u1/claim", {"max": 3}).json()["items"]) == 3
    unit.post(f"{API}/tasks/{ids[2]}/fail", {"attempt": 1, "error": "boom", "retryable": True})
    Task.objects.filter(pk=ids[2]).update(next_retry_at=timezone.now() - timedelta(seconds=1))
    silent, _ = register_unit("u2", unit_type="DEGRADED", capacity=1)
    lost = client_a.post(f"{API}/tasks", TASK).json()["id"]
    assert [t["id"] for t in silent.post(f"{API}/execution-units/u2/claim", {"max": 1}).json()["items"]] == [lost]
    ExecutionUnit.objects.filter(pk="u2").update(last_heartbeat_at=timezone.now() - timedelta(hours=1))
    slow = client_a.post(f"{API}/tasks", TASK | {"timeoutSeconds": 5}).json()["id"]
    assert [t["id"] for t in unit.post(f"{API}/execution-units/u1/claim", {"max": 1}).json()["items"]] == [slow]
    Task.objects.filter(pk=slow).update(timeout_at=timezone.now() - timedelta(seconds=1))
    Task.objects.filter(status="RUNNING").update(started_at=timezone.now() - timedelta(minutes=1))
    pending = client_a.post(f"{API}/tasks", TASK).json()["id"]
    return {"client": client_a, "unit": unit, "run1": ids[0], "run2": ids[1], "failed": ids[2], "pending": pending}


def _snapshot() -> Any:
    return (
        list(Task.objects.order_by("id").values()),
        list(TaskStatusHistory.objects.order_by("id").values()),
        list(TaskExecutionLog.objects.order_by("id").values()),
        list(ExecutionUnit.objects.order_by("id").values()),
    )


def _assert_consistent() -> None:
    """Every task's history is a whole chain that ends at its status and its attempt."""
    rows: dict[int, list[Any]] = {}
    for row in TaskStatusHistory.objects.order_by("id"):
        rows.setdefault(row.task_id, []).append(row)
    for task in Task.objects.all():
        chain = rows.get(task.pk, [])
        assert chain and chain[0].from_status is None, f"task {task.pk}: no creation row"
        for prev, row in pairwise(chain):
            assert row.from_status == prev.to_status, f"task {task.pk}: gap {prev} -> {row}"
        last = chain[-1]
        assert (last.to_status, last.attempt) == (task.status, task.attempt), f"task {task.pk} half-written"
        if task.status == "RUNNING" and task.unit_id:
            assert last.unit_id == task.unit_id, f"task {task.pk} leased without its history"
    assert set(rows) <= set(Task.objects.values_list("id", flat=True)), "history of a task that is not there"


Action = Callable[[dict[str, Any]], Any]
# name -> (action, single transaction: a failure anywhere leaves everything as it was)
ACTIONS: dict[str, tuple[Action, bool]] = {
    "create": (lambda s: s["client"].post(f"{API}/tasks", TASK), True),
    "claim": (lambda s: s["unit"].post(f"{API}/execution-units/u1/claim", {"max": 3}), False),
    "complete": (lambda s: s["unit"].post(f"{API}/tasks/{s['run1']}/complete", {"attempt": 1, "result": {}}), True),
    "fail": (
        lambda s: s["unit"].post(f"{API}/tasks/{s['run1']}/fail", {"attempt": 1, "error": "x", "retryable": True}),
        True,
    ),
    "logs": (lambda s: s["unit"].post(f"{API}/tasks/{s['run1']}/logs", {"attempt": 1, "message": "m"}), True),
    "heartbeat-failover": (
        lambda s: s["unit"].post(
            f"{API}/execution-units/u1/heartbeat", {"currentLoad": 1, "tasks": [{"id": s["run1"], "attempt": 1}]}
        ),
        True,
    ),
    "pause-running": (
        lambda s: s["client"].put(f"{API}/tasks/{s['run1']}/status", {"status": "PAUSED", "reason": "r"}),
        True,
    ),
    "cancel": (lambda s: s["client"].put(f"{API}/tasks/{s['pending']}/status", {"status": "CANCELLED"}), True),
    "re-register": (
        lambda s: s["client"].post(
            f"{API}/execution-units/register", {"id": "u1", "unitType": "DEGRADED", "unitName": "u1", "capacity": 4}
        ),
        True,
    ),
    "deregister": (lambda s: s["client"].delete(f"{API}/execution-units/u1"), True),
    "redrive": (lambda s: s["client"].post(f"{API}/tasks/redrive", {}), False),
    "sweep": (lambda s: sweep_heartbeats(timezone.now()), True),
    "retry-mover": (lambda s: move_due_retries(timezone.now()), True),
    "timeouts": (lambda s: fail_timeouts(timezone.now()), True),
}


@contextmanager
def _rolled_back() -> Iterator[None]:
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_a_write_broken_at_any_query_leaves_nothing_half_written(
    scene: dict[str, Any], name: str, settings: Any
) -> None:
    settings.UNIT_HEARTBEAT_INTERVAL = 0.05  # no young-lease grace: the heartbeat fails u1's other task over
    action, atomic = ACTIONS[name]
    with _rolled_back(), CaptureQueriesContext(connection) as queries:
        response = action(scene)
        if hasattr(response, "status_code"):
            assert response.status_code < 300, response.content
    total = len(queries)
    assert total >= 2
    for at in range(1, total + 1):
        with _rolled_back():
            before = _snapshot()
            with connection.execute_wrapper(FailingDatabase(at)):
                try:
                    response = action(scene)
                except OperationalError:
                    response = None  # a job: the error reaches its runner, which retries next tick
            if response is not None:
                _assert_503(response, f"{name}, query {at} of {total}")
            _assert_consistent()
            if atomic:
                assert _snapshot() == before, f"{name}: failing query {at} of {total} left a partial write"


@pytest.mark.django_db
def test_with_the_database_down_every_operation_is_503_and_recovers_by_itself(scene: dict[str, Any]) -> None:
    client, unit = scene["client"], scene["unit"]
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("list", lambda: client.get(f"{API}/tasks")),
        ("create", lambda: client.post(f"{API}/tasks", TASK)),
        ("get", lambda: client.get(f"{API}/tasks/{scene['run1']}")),
        ("status", lambda: client.put(f"{API}/tasks/{scene['pending']}/status", {"status": "PAUSED"})),
        ("stats", lambda: client.get(f"{API}/tasks/stats")),
        ("units", lambda: client.get(f"{API}/execution-units")),
        ("heartbeat", lambda: unit.post(f"{API}/execution-units/u1/heartbeat", {"currentLoad": 0})),
        ("claim", lambda: unit.post(f"{API}/execution-units/u1/claim", {"max": 1})),
        ("progress", lambda: unit.post(f"{API}/tasks/{scene['run1']}/progress", {"attempt": 1, "progress": 3})),
    ]
    before = _snapshot()
    with connection.execute_wrapper(FailingDatabase()):
        for what, call in calls:
            _assert_503(call(), what)
    assert _snapshot() == before
    statuses = {what: call().status_code for what, call in calls}
    assert statuses == {
        "list": 200,
        "create": 201,
        "get": 200,
        "status": 200,
        "stats": 200,
        "units": 200,
        "heartbeat": 200,
        "claim": 200,
        "progress": 200,
    }


# --- real outages (CI, or TASKHUB_DEGRADED_REAL=1) ---------------------------------------------


def _redis_port() -> int:
    return int(django_settings.REDIS_PORT)


@real_outage
@pytest.mark.redis
@pytest.mark.django_db
def test_with_redis_really_stopped_the_api_serves_and_health_says_so(client_a: JsonClient, api: Any) -> None:
    assert services.redis_up(_redis_port())
    try:
        services.stop_redis(_redis_port())
        assert not services.redis_up(_redis_port())
        assert [client_a.post(f"{API}/tasks", TASK).status_code for _ in range(3)] == [201] * 3
        assert client_a.get(f"{API}/tasks").json()["total"] == 3
        assert api.get(f"{API}/health/redis").status_code == 503
        assert api.get(f"{API}/health").status_code == 503
        assert api.get(f"{API}/health/database").status_code == 200
    finally:
        services.start_redis(_redis_port())
    wait_for(lambda: api.get(f"{API}/health/redis").status_code == 200, 30, "health/redis to recover", interval=0.5)
    assert client_a.get(f"{API}/tasks").status_code == 200


def _hub_env(database: str) -> dict[str, str]:
    db = django_settings.DATABASES["default"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "CELERY_", "TASKHUB_"))}
    env |= {
        "DB_HOST": str(db["HOST"]),
        "DB_PORT": str(db["PORT"]),
        "DB_USERNAME": str(db["USER"]),
        "DB_PASSWORD": str(db["PASSWORD"]),
        "DB_DATABASE": database,
        "DB_CONNECT_TIMEOUT": "2",
        "REDIS_HOST": "",
        "APP_ENV": "development",
        "DEBUG": "false",
        "LOG_DIR": "/tmp/taskhub-degraded/logs",
        "VAR_DIR": "/tmp/taskhub-degraded/var",
    }
    return env


@pytest.fixture
def mariadb_hub(tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """gunicorn on its own MariaDB database (never the test database this process holds)."""
    database = "taskhub_degraded"
    env = _hub_env(database)
    server: dict[str, Any] = {
        "host": env["DB_HOST"],
        "port": int(env["DB_PORT"]),
        "user": env["DB_USERNAME"],
        "password": env["DB_PASSWORD"],
    }
    services.recreate_database(**server, name=database)
    migrate(env, beat=False)
    key = create_api_key(env, "degraded", "tasks:read,tasks:write,units:register")
    port = free_port()
    web = Process("gunicorn", gunicorn_argv(port), env=env, log_path=tmp_path / "gunicorn.log")
    base = f"http://127.0.0.1:{port}{API}"
    try:
        web.start()
        wait_healthy(f"{base}/health/database", web, timeout=60)
        yield base, key, env
    finally:
        services.start_mariadb()  # whatever happened, the database is up again when the test ends
        web.stop(grace=20)
        print(web.output()[-3000:])
        services.drop_database(**server, name=database)


@real_outage
@pytest.mark.mariadb
def test_with_mariadb_really_stopped_the_api_is_503_then_recovers_with_nothing_half_written(
    mariadb_hub: tuple[str, str, dict[str, str]],
) -> None:
    import requests

    base, key, env = mariadb_hub
    headers = {"Authorization": f"Bearer {key}"}
    stop = threading.Event()
    outcomes: list[tuple[str, int]] = []
    errors: list[str] = []

    def submit() -> None:
        n = 0
        session = requests.Session()
        while not stop.is_set():
            n += 1
            name = f"outage-{n}"
            try:
                r = session.post(f"{base}/tasks", json=TASK | {"name": name}, headers=headers, timeout=15)
                outcomes.append((name, r.status_code))
                if r.status_code >= 500 and r.status_code != 503:
                    errors.append(f"{name}: {r.status_code} {r.text[:200]}")
                if r.status_code == 503:
                    body = r.json()
                    if body.get("code") != "service_unavailable" or body.get("statusCode") != 503:
                        errors.append(f"{name}: 503 in the wrong shape: {body}")
            except requests.RequestException as exc:
                outcomes.append((name, 0))
                errors.append(f"{name}: no answer: {exc}")
            time.sleep(0.02)

    worker = threading.Thread(target=submit, daemon=True)
    worker.start()
    try:
        time.sleep(1.0)
        services.stop_mariadb()
        time.sleep(2.0)
        down = requests.get(f"{base}/tasks", headers=headers, timeout=15)
        _assert_503_requests(down)
        assert requests.get(f"{base}/health/database", timeout=15).status_code == 503
    finally:
        services.start_mariadb()
    recovered = lambda: requests.get(f"{base}/tasks", headers=headers, timeout=15).status_code == 200  # noqa: E731
    wait_for(recovered, 60, "the API to recover by itself", interval=0.5)
    time.sleep(1.0)
    stop.set()
    worker.join(timeout=30)
    connections.close_all()  # this process's own connections died with the server
    assert errors == [], errors[:5]
    codes = {code for _, code in outcomes}
    assert 201 in codes and 503 in codes, codes
    acked = {name for name, code in outcomes if code == 201}
    stored = _read_hub_tasks(env)
    assert acked <= set(stored), f"acknowledged tasks lost: {sorted(acked - set(stored))[:5]}"
    for name, history in stored.items():
        assert history == ["PENDING"], f"{name}: half-written ({history})"


def _assert_503_requests(response: Any) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    body = response.json()
    assert body["statusCode"] == 503 and body["code"] == "service_unavailable"
    assert int(response.headers["Retry-After"]) > 0


def _read_hub_tasks(env: dict[str, str]) -> dict[str, list[str]]:
    """Each stored task's history (to-statuses), read from the hub's database in a fresh process."""
    code = (
        "import json, django; django.setup(); from tasks.models import Task; "
        "print(json.dumps({t.name: list(t.history.order_by('id').values_list('to_status', flat=True)) "
        "for t in Task.objects.all()}))"
    )
    env = env | {"DJANGO_SETTINGS_MODULE": "taskhub.settings"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))
