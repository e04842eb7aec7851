"""The unit agent's life around its unit id, against the in-memory hub of test_agent_runtime: one
live process per id (instance ids, `--replace`, a replaced process stops), who drained the unit
(its own shutdown or an operator) as its log tells it, and what it says about its work (the status
line, durations, a summary that counts each attempt once). Periodic work runs on a fake clock."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from taskhub_unit import NonRetryableError, TaskContext
from taskhub_unit.agent import Agent, AgentConfig, UnitInUse
from taskhub_unit.handlers import sleep
from taskhub_unit.runs import Run, RunTable
from taskhub_unit.status import StatusLine
from testkit.waiting import wait_for
from tests import test_agent_runtime as runtime
from tests.test_agent_runtime import FakeClock, FakeHub, status

hub = runtime.hub  # the same fixtures: every test against a hub with and without /tasks/reports
start = runtime.start
AGENT_LOG = "taskhub_unit.agent"


def paths_and_bodies(hub: FakeHub, suffix: str) -> list[Any]:
    return [body for _, path, body in hub.calls if path.endswith(suffix)]


# --- one live process per unit id --------------------------------------------------------------


def test_the_instance_id_goes_with_register_heartbeat_and_claim(hub: FakeHub, start: Any) -> None:
    hub.add(seconds=0.01, steps=1)
    unit = start(instance_id="inst-1")
    wait_for(lambda: hub.heartbeats() and paths_and_bodies(hub, "/claim"), what="a heartbeat and a claim")
    unit.drain()
    sent = [*paths_and_bodies(hub, "/register"), *hub.heartbeats(), *paths_and_bodies(hub, "/claim")]
    assert {body["instanceId"] for body in sent} == {"inst-1"}
    assert "replace" not in paths_and_bodies(hub, "/register")[0]


def test_each_process_makes_its_own_random_instance_id(tmp_path: Path) -> None:
    config = AgentConfig("http://hub.test", "k", "w1", "T", 1, sleep, data_dir=tmp_path)
    first, second = Agent(config).instance_id, Agent(config).instance_id
    assert first != second and re.fullmatch(r"[0-9a-f]{16}", first)


def test_a_unit_id_a_live_process_holds_stops_this_one_before_it_claims(
    hub: FakeHub, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hub.instance = "a1b2c3"  # another process registered as w1 and heartbeats
    task_id = hub.add()
    unit = start(instance_id="mine")
    unit.thread.join(5)
    assert isinstance(unit.error, UnitInUse)
    assert str(unit.error).startswith(
        "another process is registered as w1 (instance a1b2c3, last heartbeat 2.0s ago); stopping."
    )
    assert "--replace" in str(unit.error) and "silent for 30s" in str(unit.error)
    assert paths_and_bodies(hub, "/claim") == [] and status(hub, task_id) == "PENDING"
    assert hub.instance == "a1b2c3" and hub.registrations == 0


def test_replace_takes_the_id_over_on_the_first_registration_only(hub: FakeHub, start: Any) -> None:
    hub.instance = "old-process"
    task_id = hub.add(seconds=0.5, steps=5)
    start(replace=True, instance_id="new-process")
    wait_for(lambda: status(hub, task_id) == "RUNNING", what="a claim after taking over")
    assert hub.instance == "new-process"
    hub.token = "thu_forgotten"  # the hub no longer knows our token: we register again
    wait_for(lambda: hub.registrations >= 2, what="a second registration")
    first, again = paths_and_bodies(hub, "/register")[:2]
    assert first["replace"] is True and "replace" not in again  # never replaces its replacement back


def test_a_replaced_process_stops_instead_of_registering_back(
    hub: FakeHub, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stopped: list[str | None] = []

    def long(ctx: TaskContext) -> Any:
        ctx.sleep(30)
        stopped.append(ctx.cancel_reason)
        return {}

    task_id = hub.add()
    unit = start(long, instance_id="first")
    wait_for(lambda: status(hub, task_id) == "RUNNING", what="the claim")
    hub.take_over("second")  # its leases fail over, its token dies: our next call gets a 401
    unit.thread.join(5)
    assert not unit.thread.is_alive()
    assert isinstance(unit.error, UnitInUse)
    assert "another process took over unit w1 (instance second" in str(unit.error)
    assert "this process (instance first) was replaced; stopping" in str(unit.error)
    registers = paths_and_bodies(hub, "/register")
    assert len(registers) == 2 and "replace" not in registers[1]  # one try, refused, then it stopped
    assert hub.instance == "second" and hub.registrations == 2  # ours and the takeover: nothing won back
    wait_for(lambda: stopped, what="the handler told to stop")
    assert hub.tasks[task_id]["reports"] == [] and unit.agent.runs.counts["dropped"] == 1


def test_a_heartbeat_refused_as_from_a_replaced_instance_stops_it(hub: FakeHub, start: Any) -> None:
    unit = start(instance_id="first")
    wait_for(lambda: hub.heartbeats(), what="a heartbeat")
    hub.instance = "second"  # same token, another instance: the hub answers 409 unit_replaced
    unit.thread.join(5)
    assert isinstance(unit.error, UnitInUse) and "was replaced" in str(unit.error)
    assert len(paths_and_bodies(hub, "/register")) == 1


# --- drains: its own, an operator's ------------------------------------------------------------


def test_a_drain_ends_with_a_last_heartbeat_saying_the_process_stops(hub: FakeHub, start: Any) -> None:
    unit = start(instance_id="me")
    wait_for(lambda: hub.heartbeats(), what="a heartbeat")
    assert unit.drain() == 0
    last = hub.heartbeats()[-1]
    assert (last["stopping"], last["tasks"], last["instanceId"]) == (True, [], "me")
    assert hub.status == "OFFLINE"  # so the next process may register as w1 at once


def test_its_own_drain_is_not_blamed_on_the_hub_and_is_cleared_on_restart(
    hub: FakeHub, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AGENT_LOG)
    task_id = hub.add(seconds=0.3, steps=3)
    first = start(instance_id="first")
    wait_for(lambda: status(hub, task_id) == "RUNNING", what="the claim")
    assert first.drain() == 0
    assert status(hub, task_id) == "COMPLETED"
    # The hub answered heartbeats sent while it drained with MAINTENANCE (its own drain).
    assert any(body["metadata"]["draining"] and not body.get("stopping") for body in hub.heartbeats())
    assert "MAINTENANCE" not in caplog.text and "drained by" not in caplog.text
    later = hub.add(seconds=0.01, steps=1)
    start(instance_id="second")  # the next process under the same id
    wait_for(lambda: status(hub, later) == "COMPLETED", what="the restarted unit to claim")
    assert "cleared this unit's own drain from its last shutdown (drained at 2026-01-01T00:00:00Z)" in caplog.text


def test_an_operators_drain_is_named_once_and_claims_wait_for_a_resume(
    hub: FakeHub, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AGENT_LOG)
    hub.status = "MAINTENANCE"
    hub.drain = {"drainedBy": "operator", "drainedByActor": "user:alice", "drainedAt": "2026-03-04T05:06:07Z"}
    task_id = hub.add(seconds=0.01, steps=1)
    clock = FakeClock()
    unit = start(clock=clock)
    unit.tick_until(clock, lambda: len(hub.heartbeats()) >= 3, "heartbeats")
    assert status(hub, task_id) == "PENDING"
    note = (
        "this unit was drained by operator user:alice at 2026-03-04T05:06:07Z; claiming nothing until an "
        'operator resumes it (PATCH /api/v1/execution-units/w1 {"status": "ONLINE"}, or Resume in the console)'
    )
    assert caplog.text.count(note) == 1
    assert "the hub put this unit in MAINTENANCE" not in caplog.text
    hub.status, hub.drain = "ONLINE", dict.fromkeys(hub.drain)
    unit.tick_until(clock, lambda: status(hub, task_id) == "COMPLETED", "a claim once resumed")
    assert "unit is ONLINE again: claiming" in caplog.text


# --- what it says about its work ---------------------------------------------------------------


def test_each_finished_task_logs_how_long_its_handler_ran(
    hub: FakeHub, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AGENT_LOG)
    clock = FakeClock()

    def timed(ctx: TaskContext) -> Any:
        clock.advance(1.23 if ctx.config["ok"] else 0.5)
        if not ctx.config["ok"]:
            raise NonRetryableError("bad row")
        return {}

    good, bad = hub.add(ok=True), hub.add(ok=False)
    start(timed, clock=clock, capacity=1)
    # (Logged once the hub's answer is in: wait for the line, not for the hub's status.)
    # (30 s: real threads on a loaded machine; the handler's times are the fake clock's.)
    wait_for(lambda: f"task {good} attempt 1: completed in" in caplog.text, 30, what="the first task")
    assert f"task {good} attempt 1: completed in 1.23s (accepted)" in caplog.text
    wait_for(lambda: f"task {bad} attempt 1: failed in" in caplog.text, 30, what="the second task")
    assert f"task {bad} attempt 1: failed in 0.50s, not retryable (accepted): bad row" in caplog.text


def test_a_status_line_every_interval_on_the_agents_clock(
    hub: FakeHub, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AGENT_LOG)
    clock = FakeClock()
    ids = [hub.add() for _ in range(2)]
    unit = start(lambda ctx: {}, clock=clock, status_interval=30)
    wait_for(lambda: all(status(hub, i) == "COMPLETED" for i in ids), what="both tasks")
    wait_for(lambda: unit.agent.runs.counts["completed"] == 2, what="both answers")
    unit.tick(clock, 29)
    wait_for(lambda: len(hub.heartbeats()) >= 1, what="the loop to run at +29s")
    assert "status:" not in caplog.text
    unit.tick(clock, 1)
    line = wait_for(lambda: re.search(r"status: .*", caplog.text), what="the status line")[0]
    assert line == (
        "status: 0 running (capacity 2), 2 completed, 0 failed, 0 dropped; 4.0 done/min over the last 30s; unit ONLINE"
    )


def test_the_summary_counts_each_claimed_attempt_once(
    hub: FakeHub, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Completed, failed, cancelled by the hub, given back at the drain deadline: four claims, four
    endings (the given-back task used to count as dropped too)."""
    caplog.set_level(logging.INFO, logger=AGENT_LOG)
    clock = FakeClock()

    def handler(ctx: TaskContext) -> Any:
        if ctx.config["kind"] == "fail":
            raise NonRetryableError("no")
        if ctx.config["kind"] in ("cancel", "forever"):
            ctx.sleep(30)
        return {}

    done, failed, cancelled, forever = (hub.add(kind=k) for k in ("ok", "fail", "cancel", "forever"))
    unit = start(handler, clock=clock, capacity=4, drain_timeout=5)
    wait_for(lambda: status(hub, done) == "COMPLETED" and status(hub, failed) == "FAILED", what="two results")
    hub.cancel(cancelled)
    unit.tick(clock, 1)  # the heartbeat brings the cancel
    wait_for(lambda: unit.agent.runs.counts["dropped"] == 1, what="the cancel")
    assert status(hub, forever) == "RUNNING"
    unit.agent.request_drain()
    wait_for(lambda: "draining: claiming nothing more" in caplog.text, what="the drain to start")
    unit.tick(clock, 6)  # past the drain deadline: the last task is given back
    unit.thread.join(5)
    assert unit.exit_code == 0 and status(hub, forever) == "PENDING"
    counts = unit.agent.runs.counts
    assert counts == {"claimed": 4, "completed": 1, "failed": 1, "dropped": 1, "givenBack": 1}
    assert re.search(
        r"stopped after 7\.0s: 4 claimed = 1 completed \+ 1 failed \+ 1 dropped by the hub \+ 1 given back "
        r"\+ 0 unfinished",
        caplog.text,
    )


def _finished(runs: RunTable, clock: FakeClock, task_id: int) -> Run:
    run = Run(TaskContext({"id": task_id, "attempt": 1}, unit_id="w1", data_dir=Path()), started=clock())
    runs.add(run)
    runs.handler_finished(run, ("complete", {"attempt": 1}))
    return run


def test_status_line_and_summary_add_up_whatever_ends_each_attempt() -> None:
    clock = FakeClock()
    runs = RunTable(clock)
    line = StatusLine(runs, interval=30, capacity=5, clock=clock)
    for task_id in (1, 2, 3):
        runs.reported(_finished(runs, clock, task_id), "complete")
    runs.reported(_finished(runs, clock, 4), "fail")
    dropped = _finished(runs, clock, 5)
    runs.drop(dropped, "abort", "refused")
    runs.reported(dropped, "complete")  # a report racing the fence: still one ending
    runs.drop(_finished(runs, clock, 6), "shutdown", "grace over", ending="givenBack")
    _finished(runs, clock, 7)  # its result never delivered
    clock.advance(29.9)
    assert line.tick("ONLINE") is None
    clock.advance(0.1)
    assert line.tick("MAINTENANCE") == (
        "status: 1 running (capacity 5), 3 completed, 1 failed, 1 dropped; 8.0 done/min over the last 30s; "
        "unit MAINTENANCE"
    )
    clock.advance(60)
    assert line.tick("ONLINE") == (
        "status: 1 running (capacity 5), 3 completed, 1 failed, 1 dropped; 0.0 done/min over the last 60s; unit ONLINE"
    )
    assert line.summary() == (
        "stopped after 90.0s: 7 claimed = 3 completed + 1 failed + 1 dropped by the hub + 1 given back + 1 unfinished"
    )
    assert StatusLine(runs, interval=0, capacity=5, clock=clock).tick("ONLINE", now=clock() + 10**6) is None
