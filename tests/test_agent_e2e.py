"""End to end with real processes: the hub as users run it (`manage.py runhub`: gunicorn + Celery
worker + beat on a throwaway SQLite file and filesystem broker) and `taskhub-unit` processes,
killed, frozen and stopped the ways machines die. History is read back through the API.

Each test uses its own task type, so the tests share one hub without seeing each other's work.
"""

from __future__ import annotations

import itertools
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import testkit.hub
from testkit.hub import call, embedded_env, unit_argv, unit_env
from testkit.processes import Process
from testkit.waiting import wait_for

pytestmark = pytest.mark.slow

HEARTBEAT_TIMEOUT = 3.0
SWEEP_INTERVAL = 1.0


def hub_env(tmp: Path) -> dict[str, str]:
    return embedded_env(
        tmp,
        DEBUG="false",  # runhub serves with gunicorn, as in production
        UNIT_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
        SWEEP_INTERVAL=str(SWEEP_INTERVAL),
        TASK_RETRY_BACKOFF_BASE="1",
        WEB_CONCURRENCY="2",
        ALLOWED_HOSTS="127.0.0.1,localhost",
    )


class Hub(testkit.hub.Hub):
    def __init__(self, tmp: Path) -> None:
        super().__init__(
            tmp, env=hub_env(tmp), scopes="tasks:read,tasks:write,units:read,units:register", log_name="hub.log"
        )
        self.tmp = tmp
        self.units: list[Unit] = []

    def stop(self, grace: float = 5) -> None:
        for unit in self.units:
            unit.kill()
        super().stop(grace)

    def log(self) -> str:
        return self.output()[-5000:]

    def report_requests(self, unit_id: str) -> dict[str, int]:
        """The hub's access log: how many report requests this unit sent, batched or per attempt."""
        counts = {"batched": 0, "per-attempt": 0}
        pattern = re.compile(r"POST /api/v1/tasks/(reports|\d+/(?:logs|progress|complete|fail)) 2\d\d .* unit:(\S+)")
        for line in (self.tmp / "logs" / "access.log").read_text(errors="replace").splitlines():
            match = pattern.search(line)
            if match and match[2] == unit_id:
                counts["batched" if match[1] == "reports" else "per-attempt"] += 1
        return counts

    # --- API ---
    def submit(self, task_type: str, count: int, **config: Any) -> list[int]:
        return [
            self.api("POST", "/tasks", {"name": f"{task_type.lower()}-{n}", "taskType": task_type, "config": config})[
                "id"
            ]
            for n in range(count)
        ]

    def tasks(self, task_type: str, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in {"taskType": task_type, "limit": "100", **filters}.items())
        return list(self.api("GET", f"/tasks?{query}")["items"])

    def history(self, task_id: int) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/tasks/{task_id}/history")["items"])

    def all_completed(self, task_type: str, count: int) -> bool:
        rows = self.tasks(task_type)
        return len(rows) == count and all(row["status"] == "COMPLETED" for row in rows)

    def unit(self, unit_id: str) -> dict[str, Any] | None:
        status, body = call(self.base, "GET", f"/execution-units/{unit_id}", self.key)
        return dict(body) if status == 200 else None

    def unit_status(self, unit_id: str) -> str | None:
        unit = self.unit(unit_id)
        return None if unit is None else str(unit["status"])

    def start_unit(self, unit_id: str, unit_type: str, capacity: int, **extra: str) -> Unit:
        unit = Unit(self, unit_id, unit_type, capacity, extra)
        self.units.append(unit)
        wait_for(lambda: self.unit_status(unit_id) in ("ONLINE", "BUSY"), 20, f"unit {unit_id} to register")
        return unit


class Unit:
    """One `taskhub-unit` process (the installed console script)."""

    def __init__(
        self, hub: Hub, unit_id: str, unit_type: str, capacity: int, extra: dict[str, str], log_name: str = ""
    ) -> None:
        self.unit_id = unit_id
        env = unit_env(
            hub.url, hub.key, unit_id, unit_type, capacity, TASKHUB_POLL_INTERVAL="0.2", TASKHUB_RETRY_MAX="1", **extra
        )
        # A second process under one id: its own log.
        self.process = Process(unit_id, unit_argv(), env=env, log_path=hub.tmp / f"{log_name or unit_id}.log").start()
        self.proc = self.process.popen
        self.log_path = self.process.log_path

    def signal(self, signum: int) -> None:
        self.process.signal(signum)

    def kill(self) -> None:
        if self.process.running:
            self.process.signal(signal.SIGCONT)
            self.process.signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, and the exit code once it has drained."""
        self.signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.process.output()

    def log_matches(self, pattern: str) -> Callable[[], bool]:
        return lambda: re.search(pattern, self.log()) is not None


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Iterator[Hub]:
    # Not tmp_path: another pytest run on the machine may prune older basetemp directories, and
    # this one holds a live database, broker and logs for the whole module.
    workdir = Path(tempfile.mkdtemp(prefix="taskhub-e2e-"))
    failed_before = request.session.testsfailed
    hub = Hub(workdir)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()
        if request.session.testsfailed == failed_before:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\ne2e hub and unit logs kept in {workdir}")


def completions(hub: Hub, task_id: int) -> list[dict[str, Any]]:
    return [row for row in hub.history(task_id) if row["toStatus"] == "COMPLETED"]


def assert_history_is_a_chain(rows: list[dict[str, Any]]) -> None:
    for before, after in itertools.pairwise(rows):
        assert after["fromStatus"] == before["toStatus"], rows


def running_on(hub: Hub, task_type: str, unit_id: str) -> list[dict[str, Any]]:
    return hub.tasks(task_type, status="RUNNING", unitId=unit_id)


def test_two_units_complete_every_task_once(hub: Hub) -> None:
    first, second = hub.start_unit("e2e-a1", "E2E_ALL", 3), hub.start_unit("e2e-a2", "E2E_ALL", 3)
    ids = hub.submit("E2E_ALL", 20, seconds=0.3, steps=3)
    wait_for(lambda: hub.all_completed("E2E_ALL", 20), 60, "all 20 tasks to complete")
    done_by: dict[str, int] = {}
    for task_id in ids:
        rows = completions(hub, task_id)
        assert len(rows) == 1, rows
        done_by[rows[0]["unitId"]] = done_by.get(rows[0]["unitId"], 0) + 1
        assert_history_is_a_chain(hub.history(task_id))
    assert set(done_by) == {"e2e-a1", "e2e-a2"}, done_by
    task = hub.api("GET", f"/tasks/{ids[0]}")
    assert task["progress"] == 100 and task["result"]["unit"] in done_by
    messages = [line["message"] for line in hub.api("GET", f"/tasks/{ids[0]}/logs")["items"]]
    assert messages[0].startswith("sleeping 0.30s") and messages[-1] == "done"
    assert (first.stop(), second.stop()) == (0, 0)
    for unit_id in done_by:  # every log line, progress step and result went through POST /tasks/reports
        sent = hub.report_requests(unit_id)
        assert sent["batched"] > 0 and sent["per-attempt"] == 0, sent


def test_a_killed_units_tasks_complete_on_the_other_unit(hub: Hub) -> None:
    doomed, survivor = hub.start_unit("e2e-k1", "E2E_KILL", 2), hub.start_unit("e2e-k2", "E2E_KILL", 2)
    ids = hub.submit("E2E_KILL", 6, seconds=3, steps=6)
    held = wait_for(lambda: running_on(hub, "E2E_KILL", "e2e-k1"), 20, "k1 to run a task")
    doomed.signal(signal.SIGKILL)  # mid-task: 3s tasks, a fraction of a second in
    killed_at = time.monotonic()
    wait_for(lambda: hub.all_completed("E2E_KILL", 6), 60, "all tasks to complete after the kill")
    elapsed = time.monotonic() - killed_at
    for task in held:
        rows = hub.history(task["id"])
        assert_history_is_a_chain(rows)
        failover = [r for r in rows if (r["fromStatus"], r["toStatus"]) == ("RUNNING", "PENDING")]
        assert failover and "heartbeat timeout" in failover[0]["reason"], rows
        (done,) = completions(hub, task["id"])
        assert done["unitId"] == "e2e-k2" and done["attempt"] > task["attempt"]
    assert all(len(completions(hub, task_id)) == 1 for task_id in ids)
    assert elapsed < 30
    assert survivor.stop() == 0


def test_a_frozen_unit_comes_back_to_refused_reports_and_aborts(hub: Hub) -> None:
    frozen = hub.start_unit("e2e-s1", "E2E_STOP", 2)
    ids = hub.submit("E2E_STOP", 2, seconds=3.5, steps=14)
    held = wait_for(lambda: len(r := running_on(hub, "E2E_STOP", "e2e-s1")) == 2 and r, 20, "s1 to hold both")
    wait_for(lambda: all(t["progress"] > 0 for t in running_on(hub, "E2E_STOP", "e2e-s1")), 10, "progress")
    frozen.signal(signal.SIGSTOP)
    other = hub.start_unit("e2e-s2", "E2E_STOP", 2)
    # Past the heartbeat timeout the sweeper fails s1's tasks over and s2 completes them.
    wait_for(lambda: hub.all_completed("E2E_STOP", 2), 40, "s2 to complete the tasks s1 lost")
    frozen.signal(signal.SIGCONT)
    # s1 wakes up holding attempts the hub has moved on from: each late report is refused (409)
    # or its next heartbeat says abort; either way it drops the attempt and reports no more.
    for task in held:
        pattern = rf"task {task['id']} attempt {task['attempt']}: (report refused by the hub|hub says abort)"
        wait_for(frozen.log_matches(pattern), 15, f"s1 to drop task {task['id']}")
    wait_for(lambda: hub.unit_status("e2e-s1") == "ONLINE", 10, "s1 to be ONLINE again")
    assert frozen.proc.poll() is None, "s1 should survive and keep working"
    # Stopped (drained), s1 has sent all it ever will: any late report has (wrongly) landed by now.
    assert (frozen.stop(), other.stop()) == (0, 0)
    for task_id in ids:
        (done,) = completions(hub, task_id)  # exactly one COMPLETED
        assert done["unitId"] == "e2e-s2"
        rows = hub.history(task_id)
        assert_history_is_a_chain(rows)
        failed_over_at = next(r["createdAt"] for r in rows if r["toStatus"] == "PENDING" and r["fromStatus"])
        late = [
            line
            for line in hub.api("GET", f"/tasks/{task_id}/logs?attempt=1")["items"]
            if line["createdAt"] > failed_over_at
        ]
        assert late == [], "the hub stored logs of a fenced attempt"
        assert hub.api("GET", f"/tasks/{task_id}")["result"]["unit"] == "e2e-s2"


def test_sigterm_drains_running_tasks_then_exits_zero(hub: Hub) -> None:
    unit = hub.start_unit("e2e-d1", "E2E_TERM", 3, TASKHUB_DRAIN_TIMEOUT="20")
    ids = hub.submit("E2E_TERM", 3, seconds=1.5, steps=3)
    wait_for(lambda: len(running_on(hub, "E2E_TERM", "e2e-d1")) == 3, 20, "d1 to run all three")
    unit.signal(signal.SIGTERM)
    wait_for(unit.log_matches("draining"), 10, "d1 to start draining")
    later = hub.submit("E2E_TERM", 2, seconds=0.1)
    assert unit.proc.wait(20) == 0, unit.log()
    for task_id in ids:
        task = hub.api("GET", f"/tasks/{task_id}")
        assert task["status"] == "COMPLETED" and task["unitId"] == "e2e-d1"
    for task_id in later:  # a draining unit claims nothing
        task = hub.api("GET", f"/tasks/{task_id}")
        assert (task["status"], task["attempt"]) == ("PENDING", 0)
    assert "drained: every task finished and reported" in unit.log()
    # It told the hub it was leaving: drained by itself, then OFFLINE with its last heartbeat.
    assert (hub.unit_status("e2e-d1"), (hub.unit("e2e-d1") or {})["drainedBy"]) == ("OFFLINE", "self")


def test_a_second_signal_stops_at_once(hub: Hub) -> None:
    unit = hub.start_unit("e2e-h1", "E2E_HARD", 1)
    (task_id,) = hub.submit("E2E_HARD", 1, seconds=60, steps=60)
    wait_for(lambda: running_on(hub, "E2E_HARD", "e2e-h1"), 20, "h1 to run the task")
    unit.signal(signal.SIGTERM)
    wait_for(unit.log_matches("draining"), 10, "h1 to start draining")
    unit.signal(signal.SIGTERM)
    assert unit.proc.wait(5) == 128 + signal.SIGTERM
    assert hub.api("GET", f"/tasks/{task_id}")["status"] == "RUNNING"  # until the hub notices the silence


def test_a_unit_stopped_with_sigterm_works_again_when_started_with_the_same_id(hub: Hub) -> None:
    first = hub.start_unit("e2e-r1", "E2E_RESTART", 2)
    (before,) = hub.submit("E2E_RESTART", 1, seconds=0.2)
    wait_for(lambda: hub.api("GET", f"/tasks/{before}")["status"] == "COMPLETED", 20, "the first task")
    assert first.stop() == 0, first.log()
    assert (hub.unit("e2e-r1") or {})["drainedBy"] == "self"
    second = hub.start_unit("e2e-r1", "E2E_RESTART", 2)  # waits for ONLINE: its own drain is cleared
    (after,) = hub.submit("E2E_RESTART", 1, seconds=0.2)
    wait_for(lambda: hub.api("GET", f"/tasks/{after}")["status"] == "COMPLETED", 20, "a task after the restart")
    assert hub.api("GET", f"/tasks/{after}")["unitId"] == "e2e-r1"
    assert "cleared this unit's own drain from its last shutdown" in second.log()
    assert "MAINTENANCE" not in second.log()
    assert second.stop() == 0


def test_a_second_process_with_the_same_id_exits_instead_of_fighting(hub: Hub) -> None:
    first = hub.start_unit("e2e-i1", "E2E_TWICE", 2)
    (task_id,) = hub.submit("E2E_TWICE", 1, seconds=4, steps=8)
    wait_for(lambda: running_on(hub, "E2E_TWICE", "e2e-i1"), 20, "i1 to run the task")
    intruder = Unit(hub, "e2e-i1", "E2E_TWICE", 2, {}, log_name="e2e-i1-second")
    hub.units.append(intruder)
    code = intruder.proc.wait(20)
    log = intruder.log()
    assert code == 4, log
    assert re.search(
        r"another process is registered as e2e-i1 \(instance [0-9a-f]{16}, last heartbeat \d+\.\ds ago\); stopping",
        log,
    ), log
    # The first process kept its task: nothing was failed over, and it completes it.
    wait_for(lambda: hub.api("GET", f"/tasks/{task_id}")["status"] == "COMPLETED", 20, "i1 to finish its task")
    assert [row["toStatus"] for row in hub.history(task_id)] == ["PENDING", "RUNNING", "COMPLETED"]
    assert first.proc.poll() is None and first.stop() == 0


def test_replace_takes_the_id_over_and_the_old_process_stops(hub: Hub) -> None:
    old = hub.start_unit("e2e-p1", "E2E_REPLACE", 2)
    (task_id,) = hub.submit("E2E_REPLACE", 1, seconds=3, steps=6)
    wait_for(lambda: running_on(hub, "E2E_REPLACE", "e2e-p1"), 20, "p1 to run the task")
    old_instance = (hub.unit("e2e-p1") or {})["instanceId"]
    new = Unit(hub, "e2e-p1", "E2E_REPLACE", 2, {"TASKHUB_REPLACE": "1"}, log_name="e2e-p1-new")
    hub.units.append(new)
    wait_for(lambda: (hub.unit("e2e-p1") or {}).get("instanceId") not in (None, old_instance), 20, "the takeover")
    assert old.proc.wait(20) == 4, old.log()
    assert f"this process (instance {old_instance}) was replaced; stopping" in old.log()
    wait_for(lambda: hub.api("GET", f"/tasks/{task_id}")["status"] == "COMPLETED", 30, "the task, run again")
    rows = hub.history(task_id)
    assert_history_is_a_chain(rows)
    assert any(r["reason"] == "unit e2e-p1 re-registered (restarted)" for r in rows), rows
    (done,) = completions(hub, task_id)
    assert done["attempt"] == 2
    assert new.proc.poll() is None and new.stop() == 0


def test_a_result_survives_a_kill_right_after_its_handler_returned(hub: Hub) -> None:
    """Issue 18, finding 14: kill -9 between the handler's return and its report (a test-only pause
    holds the process there); the next process of the unit replays the spooled result before it
    registers: the task completes at its first attempt (claimed once, so its handler ran once)."""
    data_dir = hub.tmp / "spool-s1"
    data_dir.mkdir()
    spool = data_dir / ".taskhub-unit" / "e2e-s1"
    pause = {"TASKHUB_DATA_DIR": str(data_dir), "TASKHUB_UNIT_TEST_PAUSE_AFTER_HANDLER": "60"}
    first = hub.start_unit("e2e-s1", "E2E_SPOOL", 1, **pause)
    (task_id,) = hub.submit("E2E_SPOOL", 1, seconds=0.1)
    wait_for(lambda: list(spool.glob("outcome-*.json")), 20, "the result to be spooled")
    first.kill()
    assert hub.api("GET", f"/tasks/{task_id}")["status"] == "RUNNING"
    second = Unit(hub, "e2e-s1", "E2E_SPOOL", 1, {"TASKHUB_DATA_DIR": str(data_dir)}, log_name="e2e-s1-second")
    hub.units.append(second)
    wait_for(lambda: hub.api("GET", f"/tasks/{task_id}")["status"] == "COMPLETED", 20, "the replayed result")
    # The hub answers the replay before the unit logs it and removes its spooled file.
    replayed = f"task {task_id} attempt 1: spooled complete replayed (accepted)"
    wait_for(lambda: replayed in second.log(), 10, "the replay's log line")
    assert [row["toStatus"] for row in hub.history(task_id)] == ["PENDING", "RUNNING", "COMPLETED"]
    assert hub.api("GET", f"/tasks/{task_id}")["attempt"] == 1
    wait_for(lambda: not list(spool.glob("outcome-*.json")), 10, "the replayed result's file to go")
    assert second.stop() == 0
    without = hub.start_unit("e2e-s2", "E2E_SPOOL", 1)  # no --data-dir: no spool, and it says so
    wait_for(without.log_matches(r"no --data-dir: results are not spooled"), 10, "the no-spool warning")
    assert without.stop() == 0
