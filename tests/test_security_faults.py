"""Issue 18's faults outside the security matrix: unusable unit ids and an agent that would
re-register in a hot loop, case- and accent-insensitive keys on MariaDB, unbounded log storage
and the per-task cap under concurrent appends, the development server's DEBUG pages and
database connections."""

from __future__ import annotations

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

SECRET_ENV = {"REDIS_PASSWORD": "redis-pw-7c1d", "DB_PASSWORD": "db-pw-7c1d"}


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

    reply = Client(REMOTE_ADDR="203.0.113.9").get(path, HTTP_HOST="evil.example", **dict(SECRET_ENV))
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

    reply = Client(REMOTE_ADDR="127.0.0.1").get("/api/v1/tasks", HTTP_HOST="evil.example", **dict(SECRET_ENV))
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
