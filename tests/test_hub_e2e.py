"""End to end through `make run`'s processes: `manage.py runhub` (web + real Celery worker + beat
on the embedded filesystem broker). A unit that goes silent loses its task to the beat-driven
sweeper, and another unit claims it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.hub import ROOT, Hub, call, embedded_env, running_hub
from testkit.ports import free_port, port_open
from testkit.processes import alive, descendants
from testkit.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    with running_hub(tmp_path) as hub:
        yield hub


def test_silent_units_task_is_failed_over_by_beat_and_claimed_by_another(hub):
    base, key, proc = hub.base, hub.key, hub.proc
    status, task = call(base, "POST", "/tasks", key, {"name": "e2e", "taskType": "E2E", "priority": 1, "config": {}})
    assert status == 201
    tokens = {}
    for unit_id in ("silent", "healthy"):
        status, body = call(
            base,
            "POST",
            "/execution-units/register",
            key,
            {"id": unit_id, "unitType": "E2E", "unitName": unit_id, "capacity": 1},
        )
        assert status == 201
        tokens[unit_id] = body["token"]
    status, claimed = call(base, "POST", "/execution-units/silent/claim", tokens["silent"], {"max": 1})
    assert status == 200 and [t["id"] for t in claimed["items"]] == [task["id"]]
    started = time.monotonic()

    def failed_over() -> bool:
        call(base, "POST", "/execution-units/healthy/heartbeat", tokens["healthy"], {"currentLoad": 0, "tasks": []})
        return call(base, "GET", f"/tasks/{task['id']}", key)[1]["status"] == "PENDING"

    wait_for(failed_over, 30, "the beat-driven sweeper to fail the task over")
    elapsed = time.monotonic() - started
    history = call(base, "GET", f"/tasks/{task['id']}/history", key)[1]["items"]
    last = history[-1]
    assert (last["fromStatus"], last["toStatus"], last["actor"], last["unitId"]) == (
        "RUNNING",
        "PENDING",
        "job:sweep_heartbeats",
        "silent",
    )
    # I5 with slack for process scheduling: timeout 2 s + sweep interval 1 s.
    assert elapsed < 2 + 1 + 5, elapsed
    status, again = call(base, "POST", "/execution-units/healthy/claim", tokens["healthy"], {"max": 1})
    assert [t["id"] for t in again["items"]] == [task["id"]] and again["items"][0]["attempt"] == 2
    # The silent unit's late result is refused.
    status, body = call(base, "POST", f"/tasks/{task['id']}/complete", tokens["silent"], {"attempt": 1, "result": {}})
    assert status in (401, 409)
    status, body = call(base, "POST", f"/tasks/{task['id']}/complete", tokens["healthy"], {"attempt": 2, "result": {}})
    assert status == 200 and body["accepted"] is True
    assert proc.poll() is None  # the whole hub is still up


def test_one_ctrl_c_stops_web_worker_and_beat(hub):
    proc = hub.proc
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 3
    tree = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert alive(tree) == []


def _job_runs(hub: Hub, job: str) -> int:
    """How many times the worker has run job, from /metrics (the job duration histogram's count)."""
    with urllib.request.urlopen(hub.base.removesuffix("/api/v1") + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf'^taskhub_job_duration_seconds_count{{job="{job}"}} (\S+)$', text, re.MULTILINE)
    return int(float(found[1])) if found else 0


def test_make_run_terminal_ready_banner_quiet_jobs_one_line_per_4xx_and_a_clean_stop(hub):
    lines = hub.lines()
    ready = hub.wait_for_line("taskhub is ready")
    assert call(hub.base, "GET", "/health")[0] == 200
    lines = hub.lines()
    starting = next(i for i, line in enumerate(lines) if "taskhub is starting" in line)
    assert starting < ready
    banner = "\n".join(lines[ready:])
    assert f"http://127.0.0.1:{hub.port}/api/v1" in banner
    assert "--scopes tasks:read,tasks:write,units:read,units:write,units:register" in banner

    # Idle: beat sends a job every second (SWEEP_INTERVAL=1) and the worker runs it; nothing to say.
    before, seen = len(hub.lines()), _job_runs(hub, "fail_timeouts")
    wait_for(lambda: _job_runs(hub, "fail_timeouts") >= seen + 3, 30, "three runs of fail_timeouts")
    assert hub.lines()[before:] == []

    # A job that changed something says so, at INFO, once.
    unit = {"id": "quiet", "unitType": "E2E", "unitName": "q", "capacity": 1}
    assert call(hub.base, "POST", "/execution-units/register", hub.key, unit)[0] == 201
    changed = hub.wait_for_line("job sweep_heartbeats", timeout=30)
    assert "unitsOffline" in hub.lines()[changed]

    # One line per 4xx.
    before = len(hub.lines())
    assert call(hub.base, "GET", "/tasks?limit=2")[0] == 401
    wait_for(lambda: len(hub.lines()) > before, 10, "the 401's log line")
    time.sleep(1)  # a second or third copy would be written at once, by the same request
    new = hub.lines()[before:]
    assert len(new) == 1 and "/api/v1/tasks" in new[0], new

    # Ctrl-C: a "stopped" line, exit 0, nothing at ERROR and no traceback.
    hub.proc.send_signal(signal.SIGINT)
    assert hub.proc.wait(timeout=30) == 0
    output = hub.output()
    assert output.rstrip().splitlines()[-1] == "taskhub stopped"
    assert not re.search(r"ERROR|Traceback", output), output


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGKILL], ids=["SIGHUP", "SIGKILL"])
def test_whatever_ends_runhub_ends_its_whole_process_tree_and_frees_the_port(hub, how):
    hub.wait_for_line("taskhub is ready")
    tree = descendants(hub.proc.pid)
    assert len(tree) >= 5, tree  # web, worker and beat, and the worker's pool processes
    hub.proc.send_signal(how)
    hub.proc.wait(timeout=30)
    # SIGKILL: the kernel sends each child SIGTERM (PR_SET_PDEATHSIG); the Celery worker's warm
    # shutdown takes a few seconds.
    try:
        wait_for(lambda: not alive(tree), 30, f"every process of the tree to end after {how.name}")
    finally:
        for pid in alive(tree):  # orphans would outlive the test run
            os.kill(pid, signal.SIGKILL)
    assert not port_open(hub.port)


def test_a_busy_port_is_refused_at_once_naming_it_and_how_to_choose_another(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "manage.py", "runhub", "--port", str(port)],
            cwd=ROOT,
            env=embedded_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert f"port {port}" in message and "already in use" in message and "PORT=" in message, done.stderr
    assert "starting" not in done.stdout  # refused before any child was started
