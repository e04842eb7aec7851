"""Issue 18's faults outside the security matrix: unusable unit ids and an agent that would
re-register in a hot loop, case- and accent-insensitive keys on MariaDB, unbounded log storage
and the per-task cap under concurrent appends, the development server's DEBUG pages and
database connections."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import JsonClient
from units.models import ExecutionUnit

ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"


# --- 11: unit ids URLs normalise away; an agent never re-registers in a hot loop ----------------


@pytest.mark.django_db
@pytest.mark.parametrize("unit_id", [".", "..", "...", "...."])
def test_unit_ids_made_of_dots_are_refused_naming_the_field(client_a: JsonClient, unit_id: str) -> None:
    body = {"id": unit_id, "unitType": "T", "unitName": "n", "capacity": 1}
    reply = client_a.post(f"{API}/execution-units/register", body)
    assert reply.status_code == 400, reply.content
    assert "id" in json.dumps(reply.json()["details"])
    assert "dots" in reply.content.decode()
    assert not ExecutionUnit.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("unit_id", ["a.b", ".hidden", "x..", "unit-1", "a:b_c"])
def test_unit_ids_with_some_dots_are_still_fine(client_a: JsonClient, unit_id: str) -> None:
    body = {"id": unit_id, "unitType": "T", "unitName": "n", "capacity": 1}
    assert client_a.post(f"{API}/execution-units/register", body).status_code == 201
    assert client_a.get(f"{API}/execution-units/{unit_id}").status_code == 200


class _RefusingHub(BaseHTTPRequestHandler):
    """Accepts every registration (201 with a token) and refuses everything else with 401: the
    agent can never be heard, as with an id the hub cannot route."""

    registrations: list[float] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.endswith("/execution-units/register"):
            type(self).registrations.append(time.monotonic())
            status, body = (
                201,
                {"id": "u", "status": "ONLINE", "token": "thu_" + "y" * 43, "heartbeatIntervalSeconds": 1},
            )
        else:
            status, body = 401, {"code": "not_authenticated", "message": "Invalid unit token", "details": {}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_agent_the_hub_never_hears_backs_off_between_registrations(tmp_path: Path) -> None:
    """A real `taskhub-unit` process against a hub that registers it but refuses its token: it
    registers again with growing waits (before: 34 registrations in 8 s)."""
    _RefusingHub.registrations = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKHUB_", "DB_", "REDIS_"))}
    env["TASKHUB_ENROLL_KEY"] = "thk_" + "z" * 43
    url = f"http://127.0.0.1:{server.server_address[1]}"
    cmd = [sys.executable, "-m", "taskhub_unit", "--server", url, "--id", "refused", "--type", "T", "--handler", "echo"]
    cmd += ["--poll-interval", "0.05", "--retry-max", "30"]
    with open(tmp_path / "agent.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(6)
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()[-2000:]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.shutdown()
    times = _RefusingHub.registrations
    text = (tmp_path / "agent.log").read_text()
    assert 2 <= len(times) <= 6, (len(times), text[-2000:])
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(later >= earlier * 0.9 for earlier, later in itertools.pairwise(gaps[1:])), gaps
    assert "heard nothing from it since the last registration" in text


# --- 7: DEBUG's technical pages never reach the network, secrets never printed -----------------

SECRET_ENV: dict[str, Any] = {"REDIS_PASSWORD": "redis-pw-7c1d", "DB_PASSWORD": "db-pw-7c1d"}


@pytest.fixture
def debug_with_secrets(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.DEBUG = True
    settings.REDIS_URL = "redis://:redis-pw-7c1d@redis.internal:6379/0"
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)


def _no_secret(response: Any) -> None:
    text = response.content.decode(errors="replace")
    for value in SECRET_ENV.values():
        assert value not in text
    assert "redis.internal" not in text and "DJANGO_SETTINGS_MODULE" not in text


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/tasks", "/admin/", "/nowhere"])
def test_a_foreign_host_header_gets_json_not_the_technical_400(debug_with_secrets: None, path: str) -> None:
    from django.test import Client

    reply = Client(REMOTE_ADDR="203.0.113.9", **SECRET_ENV).get(path, HTTP_HOST="evil.example")
    assert reply.status_code == 400
    assert reply["Content-Type"].startswith("application/json")
    assert reply.json()["code"] == "bad_request"
    _no_secret(reply)


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/nowhere", "/admin/nowhere/at/all", "/static/none.css", "/api/v1/nope"])
def test_unknown_paths_list_no_url_patterns_to_the_network(debug_with_secrets: None, path: str) -> None:
    from django.test import Client

    reply = Client(REMOTE_ADDR="203.0.113.9").get(path)
    assert reply.status_code in (302, 404), reply.status_code  # the admin may send to its login first
    text = reply.content.decode()
    assert "URLconf" not in text and "api/v1/" not in text.replace(path, "")
    if reply.status_code == 404:
        assert reply["Content-Type"].startswith("application/json")


@pytest.mark.django_db
def test_the_technical_page_for_a_local_caller_hides_every_secret(debug_with_secrets: None) -> None:
    from django.test import Client

    reply = Client(REMOTE_ADDR="127.0.0.1", **SECRET_ENV).get("/api/v1/tasks", HTTP_HOST="evil.example")
    assert reply.status_code == 400
    assert "DisallowedHost" in reply.content.decode()  # the developer on this machine still sees it
    _no_secret_values(reply.content.decode())


def _no_secret_values(text: str) -> None:
    for value in SECRET_ENV.values():
        assert value not in text


def test_settings_as_django_prints_them_carry_no_secret(debug_with_secrets: None) -> None:
    from django.views.debug import get_default_exception_reporter_filter

    shown = repr(get_default_exception_reporter_filter().get_safe_settings())
    _no_secret_values(shown)
    assert "redis.internal" not in shown  # URLs and cache locations are hidden whole


# --- 8: the development server's database connections are bounded ------------------------------


def test_runserver_and_asgi_servers_never_keep_connections(tmp_path: Path) -> None:
    code = (
        "import django; django.setup(); from django.conf import settings as s; print(s.SERVER_KIND, s.DB_CONN_MAX_AGE)"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_"))}
    base |= {"DJANGO_SETTINGS_MODULE": "taskhub.settings", "VAR_DIR": str(tmp_path), "DB_CONN_MAX_AGE": "60"}
    cases = {
        "runserver": [sys.executable, "-c", f"import sys; sys.argv = ['manage.py', 'runserver']; {code}"],
        "asgi": [
            sys.executable,
            "-c",
            f"import sys, types; sys.modules['uvicorn'] = types.ModuleType('uvicorn'); {code}",
        ],
        "bounded": [sys.executable, "-c", code],
    }
    for kind, cmd in cases.items():
        out = subprocess.run(cmd, cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == [kind, "60" if kind == "bounded" else "0"], (kind, out.stderr[-2000:])


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_runserver_on_mariadb_holds_no_connection_per_request(make_client: Any, tmp_path: Path) -> None:
    """`make run`'s runserver (a thread per HTTP connection) with 8 clients x 30 requests: the
    connections it holds afterwards stay a handful (before: one per request, 145 of 151)."""
    import requests
    from django.db import connection

    from testkit.ports import free_port
    from testkit.waiting import wait_for

    assert connection.vendor == "mysql"
    client = make_client("conn-bound")
    db = connection.settings_dict
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env |= {"DB_DATABASE": db["NAME"], "DB_CONN_MAX_AGE": "60", "DEBUG": "1", "APP_ENV": "development"}
    env |= {"VAR_DIR": str(tmp_path / "var"), "LOG_DIR": str(tmp_path / "logs")}
    cmd = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    with open(tmp_path / "runserver.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def held() -> int:
        with connection.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", [db["NAME"]])
            return int(cur.fetchone()[0]) - 1  # this test's own connection

    try:
        url = f"http://127.0.0.1:{port}/api/v1/tasks"
        headers = {"Authorization": f"Bearer {client.secret}"}

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "runserver.log").read_text()[-2000:]
            try:
                return requests.get(url, headers=headers, timeout=5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, 60, "runserver to answer", interval=0.2)
        statuses: list[int] = []

        def burst() -> None:
            for _ in range(30):
                statuses.append(requests.get(url, headers=headers, timeout=30).status_code)

        threads = [threading.Thread(target=burst) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 240
        time.sleep(0.5)
        assert held() <= 2, held()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- 10: keys compare byte-exact on every database ---------------------------------------------

LOOK_ALIKES = ["Order-Ab1", "order-ab1", "ördér-ab1", "ORDER-AB1 "]


@pytest.mark.django_db
def test_idempotency_keys_differing_in_case_or_accents_are_different_keys(client_a: JsonClient) -> None:
    from tasks.models import Task

    ids = set()
    for key in LOOK_ALIKES:
        reply = client_a.post(f"{API}/tasks", {"name": "n", "taskType": "T"}, HTTP_IDEMPOTENCY_KEY=key)
        assert reply.status_code == 201, (key, reply.content)
        ids.add(reply.json()["id"])
    assert len(ids) == len(LOOK_ALIKES) == Task.objects.count()
    again = client_a.post(f"{API}/tasks", {"name": "n", "taskType": "T"}, HTTP_IDEMPOTENCY_KEY="order-ab1")
    assert again.status_code == 200  # the exact repeat still returns the first


@pytest.mark.django_db
def test_unit_ids_and_types_differing_in_case_are_different(client_a: JsonClient) -> None:
    from tasks.models import Task

    tokens = {}
    for unit_id, unit_type in (("Unit-K", "TYPE_K"), ("unit-k", "type_k")):
        body = {"id": unit_id, "unitType": unit_type, "unitName": unit_id, "capacity": 2}
        reply = client_a.post(f"{API}/execution-units/register", body)
        assert reply.status_code == 201, (unit_id, reply.content)
        tokens[unit_id] = JsonClient(reply.json()["token"])
    assert ExecutionUnit.objects.count() == 2
    upper = client_a.post(f"{API}/tasks", {"name": "n", "taskType": "TYPE_K"}).json()["id"]
    claimed = tokens["unit-k"].post(f"{API}/execution-units/unit-k/claim", {"max": 2}).json()["items"]
    assert claimed == []  # "type_k" is not "TYPE_K"
    claimed = tokens["Unit-K"].post(f"{API}/execution-units/Unit-K/claim", {"max": 2}).json()["items"]
    assert [t["id"] for t in claimed] == [upper]
    assert Task.objects.get(pk=upper).unit_id == "Unit-K"


def _key_columns() -> list[tuple[str, str]]:
    from django.apps import apps

    from taskhub.base.fields import KeyField

    out = []
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            target = getattr(field, "target_field", None) if field.is_relation else field
            if isinstance(target, KeyField):
                out.append((model._meta.db_table, field.column))
    return out


def test_every_key_column_is_a_key_field() -> None:
    """The columns compared for identity (ids, keys, digests, prefixes, types, pools) are all
    byte-exact; a new one must be a KeyField too."""
    columns = set(_key_columns())
    for expected in [
        ("api_keys", "name"),
        ("api_keys", "prefix"),
        ("api_keys", "key_hash"),
        ("api_keys", "pool"),
        ("execution_units", "id"),
        ("execution_units", "unit_type"),
        ("execution_units", "token_hash"),
        ("execution_units", "instance_id"),
        ("execution_units", "pool"),
        ("unit_evictions", "unit_id"),
        ("unit_evictions", "instance_id"),
        ("tasks", "task_type"),
        ("tasks", "idempotency_key"),
        ("tasks", "request_fingerprint"),
        ("tasks", "pool"),
        ("tasks", "unit_id"),  # the foreign key follows the unit id
        ("task_status_history", "unit_id"),
        ("task_execution_logs", "unit_id"),
    ]:
        assert expected in columns, expected


@pytest.mark.mariadb
@pytest.mark.django_db
def test_every_key_column_has_the_binary_collation_on_mariadb() -> None:
    from django.db import connection

    assert connection.vendor == "mysql"
    with connection.cursor() as cur:
        cur.execute(
            "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE()"
        )
        collations = {(t, c): coll for t, c, coll in cur.fetchall()}
    wrong = {col: collations.get(col) for col in _key_columns() if collations.get(col) != "utf8mb4_bin"}
    assert wrong == {}


# --- 9: log storage bound per key; the per-task cap exact under concurrent appends ----------------


@pytest.mark.django_db
def test_a_keys_log_lines_stop_at_its_quota_with_a_clear_409(
    make_client: Any, settings: Any, client_a: JsonClient
) -> None:
    from taskhub.apikeys.models import ApiKey
    from tasks.models import TaskExecutionLog

    settings.TASK_LOG_QUOTA_PER_KEY = 5
    hog = make_client("log-hog")
    ids = [hog.post(f"{API}/tasks", {"name": f"t{i}", "taskType": "T"}).json()["id"] for i in range(3)]
    line = {"level": "INFO", "message": "x" * 100}
    assert hog.post(f"{API}/tasks/{ids[0]}/logs", {"entries": [line] * 3}).status_code == 201
    assert hog.post(f"{API}/tasks/{ids[1]}/logs", {"entries": [line] * 2}).status_code == 201
    refused = hog.post(f"{API}/tasks/{ids[2]}/logs", {"entries": [line]})
    assert refused.status_code == 409, refused.content
    assert refused.json()["code"] == "log_quota_exceeded"
    assert refused.json()["details"]["quota"] == 5
    assert TaskExecutionLog.objects.count() == 5  # refused: nothing stored
    # Another key has its own quota.
    other = client_a.post(f"{API}/tasks", {"name": "o", "taskType": "T"}).json()["id"]
    assert client_a.post(f"{API}/tasks/{other}/logs", {"entries": [line] * 5}).status_code == 201
    # Deleting a task gives its lines back.
    assert hog.delete(f"{API}/tasks/{ids[0]}").status_code == 204
    assert ApiKey.objects.get(name="log-hog").log_entries == 2
    assert hog.post(f"{API}/tasks/{ids[2]}/logs", {"entries": [line] * 3}).status_code == 201


@pytest.mark.django_db
def test_a_unit_reporting_logs_counts_against_the_task_owners_quota(make_client: Any, settings: Any) -> None:
    settings.TASK_LOG_QUOTA_PER_KEY = 2
    owner = make_client("quota-owner")
    task_id = owner.post(f"{API}/tasks", {"name": "t", "taskType": "QT"}).json()["id"]
    body = {"id": "quota-unit", "unitType": "QT", "unitName": "u", "capacity": 1}
    unit = JsonClient(owner.post(f"{API}/execution-units/register", body).json()["token"])
    assert unit.post(f"{API}/execution-units/quota-unit/claim", {"max": 1}).json()["items"][0]["id"] == task_id
    assert (
        unit.post(f"{API}/tasks/{task_id}/logs", {"attempt": 1, "entries": [{"message": "a"}] * 2}).status_code == 201
    )
    refused = unit.post(f"{API}/tasks/{task_id}/logs", {"attempt": 1, "message": "b"})
    assert refused.status_code == 409 and refused.json()["code"] == "log_quota_exceeded"
    batch = unit.post(
        f"{API}/tasks/reports",
        {
            "reports": [
                {"taskId": task_id, "attempt": 1, "outcome": "progress", "progress": 5, "logs": [{"message": "c"}]}
            ]
        },
    )
    assert batch.status_code == 200, batch.content
    assert batch.json()["items"][0]["error"]["code"] == "log_quota_exceeded"


def _append_many(task_ids: list[int], rounds: int, out: Any) -> None:
    from django.db import connections

    from taskhub.base.actors import Actor
    from taskhub.base.errors import Conflict
    from tasks.models import Task
    from tasks.services import task_append_logs

    stored, refused, errors = 0, 0, []
    try:
        for i in range(rounds):
            task_id = task_ids[i % len(task_ids)]
            try:
                stored += task_append_logs(
                    task_id,
                    [{"level": "INFO", "message": f"line {i}"}],
                    actor=Actor.api_key("k"),
                    queryset=Task.objects.all(),
                )
            except Conflict:
                refused += 1
    except Exception as exc:  # any other error fails the test
        errors.append(repr(exc))
    finally:
        connections.close_all()
    out.put((stored, refused, errors))


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_on_mariadb_stop_exactly_at_the_cap_and_the_quota(settings: Any) -> None:
    """8 processes append one line at a time: a task capped at 100 stores exactly 100 (before:
    110-120), and a key with a quota of 150 over two tasks stores exactly 150."""
    import multiprocessing

    from django.db import connection, connections

    from taskhub.apikeys.models import ApiKey
    from tasks.models import TaskExecutionLog
    from tests import factories

    assert connection.vendor == "mysql"
    settings.TASK_MAX_LOG_ENTRIES = 100
    settings.TASK_LOG_QUOTA_PER_KEY = 150
    key_x, _ = factories.api_key(name="cap-x")
    key_y, _ = factories.api_key(name="quota-y")
    x1 = factories.task(owner=key_x).pk
    y1, y2 = factories.task(owner=key_y).pk, factories.task(owner=key_y).pk
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_append_many, args=([x1, y1, y2], 60, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [e for _, _, errs in results for e in errs] == []
    counts = {t: TaskExecutionLog.objects.filter(task_id=t).count() for t in (x1, y1, y2)}
    assert counts[x1] == 100, counts
    assert counts[y1] + counts[y2] == 150, counts
    assert sum(s for s, _, _ in results) == 250
    assert ApiKey.objects.get(pk=key_y.pk).log_entries == 150


def test_diffsettings_prints_no_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_"))}
    env |= {"REDIS_HOST": "redis.internal", "REDIS_PASSWORD": "redis-pw-7c1d", "DB_HOST": "db.internal"}
    env |= {"DB_PASSWORD": "db-pw-7c1d", "VAR_DIR": str(tmp_path), "SECRET_KEY": "sk-7c1d-" + "x" * 50}
    secrets = ["redis-pw-7c1d", "db-pw-7c1d", "sk-7c1d-"]
    if importlib.util.find_spec("MySQLdb") is None:
        # The embedded install has no MySQL driver (issue 12): MySQL settings cannot load there, so
        # this pass checks the Redis password and the secret key (the MariaDB pass checks all three).
        env.pop("DB_HOST"), env.pop("DB_PASSWORD")
        secrets.remove("db-pw-7c1d")
    out = subprocess.run(
        [sys.executable, "manage.py", "diffsettings", "--all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CACHES" in out.stdout and "DATABASES" in out.stdout
    for secret in secrets:
        assert secret not in out.stdout
