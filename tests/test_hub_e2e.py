"""End to end through `make run`'s processes: `manage.py runhub` (web + real Celery worker + beat
on the embedded filesystem broker). A unit that goes silent loses its task to the beat-driven
sweeper, and another unit claims it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(base: str, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "CELERY_"))}
    env |= {
        "VAR_DIR": str(tmp_path / "var"),
        "LOG_DIR": str(tmp_path / "logs"),
        "SQLITE_PATH": str(tmp_path / "hub.sqlite3"),
        "UNIT_HEARTBEAT_TIMEOUT": "2",
        "UNIT_HEARTBEAT_INTERVAL": "0.5",
        "SWEEP_INTERVAL": "1",
        "APP_ENV": "development",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    subprocess.run([*manage, "setup_beat"], cwd=ROOT, env=env, check=True, timeout=60, capture_output=True)
    key = subprocess.run(
        [*manage, "create_api_key", "e2e", "--scopes", "tasks:read,tasks:write,units:register"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    port = _free_port()
    log = open(tmp_path / "runhub.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*manage, "runhub", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        _wait_for(lambda: _call(base, "GET", "/health")[0] == 200 if _port_open(port) else False, 60, "the web server")
        yield base, key, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        print((tmp_path / "runhub.log").read_text()[-3000:])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_silent_units_task_is_failed_over_by_beat_and_claimed_by_another(hub):
    base, key, proc = hub
    status, task = _call(base, "POST", "/tasks", key, {"name": "e2e", "taskType": "E2E", "priority": 1, "config": {}})
    assert status == 201
    tokens = {}
    for unit_id in ("silent", "healthy"):
        status, body = _call(
            base,
            "POST",
            "/execution-units/register",
            key,
            {"id": unit_id, "unitType": "E2E", "unitName": unit_id, "capacity": 1},
        )
        assert status == 201
        tokens[unit_id] = body["token"]
    status, claimed = _call(base, "POST", "/execution-units/silent/claim", tokens["silent"], {"max": 1})
    assert status == 200 and [t["id"] for t in claimed["tasks"]] == [task["id"]]
    started = time.monotonic()

    def failed_over() -> bool:
        _call(base, "POST", "/execution-units/healthy/heartbeat", tokens["healthy"], {"currentLoad": 0, "tasks": []})
        return _call(base, "GET", f"/tasks/{task['id']}", key)[1]["status"] == "PENDING"

    _wait_for(failed_over, 30, "the beat-driven sweeper to fail the task over")
    elapsed = time.monotonic() - started
    history = _call(base, "GET", f"/tasks/{task['id']}/history", key)[1]["items"]
    last = history[-1]
    assert (last["fromStatus"], last["toStatus"], last["actor"], last["unitId"]) == (
        "RUNNING",
        "PENDING",
        "job:sweep_heartbeats",
        "silent",
    )
    # I5 with slack for process scheduling: timeout 2 s + sweep interval 1 s.
    assert elapsed < 2 + 1 + 5, elapsed
    status, again = _call(base, "POST", "/execution-units/healthy/claim", tokens["healthy"], {"max": 1})
    assert [t["id"] for t in again["tasks"]] == [task["id"]] and again["tasks"][0]["attempt"] == 2
    # The silent unit's late result is refused.
    status, body = _call(base, "POST", f"/tasks/{task['id']}/complete", tokens["silent"], {"attempt": 1, "result": {}})
    assert status in (401, 409)
    status, body = _call(base, "POST", f"/tasks/{task['id']}/complete", tokens["healthy"], {"attempt": 2, "result": {}})
    assert status == 200 and body["accepted"] is True
    assert proc.poll() is None  # the whole hub is still up


def test_one_ctrl_c_stops_web_worker_and_beat(hub):
    _, _, proc = hub
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 3
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    time.sleep(0.5)
    alive = [
        pid
        for pid in children
        if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    ]
    assert alive == []
