"""The unit agent against an in-memory hub that speaks the unit API (no Django, no sockets):
what it claims, reports, keeps, drops and gives back."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from taskhub_unit import NonRetryableError, TaskContext
from taskhub_unit.agent import Agent, AgentConfig, RegistrationRefused
from taskhub_unit.client import Backoff, HubClient
from taskhub_unit.handlers import sleep
from testkit.waiting import wait_for

ENROLL = "thk_enroll"
Fault = Callable[[str, str, Any], Any]


class Response:
    def __init__(self, status: int, body: Any = None) -> None:
        self.status_code = status
        self.content = b"" if body is None else json.dumps(body).encode()
        self.text = self.content.decode()
        self.reason = ""
        self.headers: dict[str, str] = {}

    def json(self) -> Any:
        return json.loads(self.content)


def error(status: int, code: str, message: str, **details: Any) -> Response:
    return Response(status, {"statusCode": status, "code": code, "message": message, "details": details})


class FakeHub:
    """The hub's unit-facing rules in miniature: leases, fencing by attempt, failover of unlisted
    leases on heartbeat, commands for attempts that are no longer live, one live instance per unit
    (409 `unit_in_use` / `unit_replaced`), who drained the unit."""

    def __init__(self, interval: float = 0.05, *, batch: bool = True) -> None:
        self.lock = threading.Lock()
        self.interval = interval
        self.batch = batch  # False: an older hub, without POST /tasks/reports
        self.tasks: dict[int, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.sent: list[tuple[int, str, Any]] = []  # (task id, logs|progress|complete|fail, body): each report
        self.faults: list[Fault] = []
        self.status = "ONLINE"
        self.token: str | None = None
        self.registrations = 0
        self.instance: str | None = None  # the instance registered as the unit
        self.instance_live = True  # it heartbeated within the timeout (tests flip this)
        self.drain: dict[str, Any] = {"drainedBy": None, "drainedByActor": None, "drainedAt": None}
        self.peak_running = 0  # the most tasks RUNNING at once (only a claim adds to them)
        self.queue_paused = False  # the unit type's queue is paused: claims say so, with a retry-after
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)

    def add(self, **config: Any) -> int:
        task_id = next(self._ids)
        self.tasks[task_id] = {
            "id": task_id,
            "name": f"t{task_id}",
            "taskType": "T",
            "priority": 0,
            "config": config,
            "attempt": 0,
            "timeoutSeconds": config.pop("timeoutSeconds", None),
            "status": "PENDING",
            "logs": [],
            "progress": 0,
            "reports": [],
        }
        return task_id

    def cancel(self, task_id: int) -> None:
        with self.lock:
            task = self.tasks[task_id]
            task["status"], task["command"] = "CANCELLED", "cancel"

    # --- the session interface HubClient uses ---
    def request(self, method: str, url: str, json: Any = None, headers: Any = None, timeout: Any = None) -> Response:
        path = url.split("/api/v1", 1)[1]
        token = (headers or {}).get("Authorization", "").removeprefix("Bearer ")
        with self.lock:
            self.calls.append((method, path, json))
            for fault in list(self.faults):
                outcome = fault(method, path, json)
                if isinstance(outcome, BaseException):
                    raise outcome
                if outcome is not None:
                    return outcome  # type: ignore[no-any-return]
            if path == "/execution-units/register":
                return self._register(token, json)
            if token != self.token:
                return error(401, "unauthorized", "Invalid unit token")
            if method == "PATCH":  # a unit may only drain itself
                self.status = "MAINTENANCE"
                self.drain["drainedBy"] = self.drain["drainedBy"] or "self"  # an operator's drain stays
                return Response(200, {"status": self.status, **self.drain})
            if match := re.fullmatch(r"/execution-units/[\w-]+/(heartbeat|claim)", path):
                if json.get("instanceId") not in (None, self.instance):
                    return error(409, "unit_replaced", "replaced", instanceId=self.instance)
                return self._heartbeat(json) if match[1] == "heartbeat" else self._claim(json["max"])
            if path == "/tasks/reports":
                return self._reports(json["reports"]) if self.batch else error(404, "not_found", "Not found.")
            match = re.fullmatch(r"/tasks/(\d+)/(logs|progress|complete|fail)", path)
            assert match, path
            self.sent.append((int(match[1]), match[2], json))
            return self._report(int(match[1]), match[2], json)

    def _register(self, token: str, body: dict[str, Any]) -> Response:
        if token != ENROLL:
            return error(401, "unauthorized", "Invalid or revoked API key")
        instance = body.get("instanceId")
        if instance and not body.get("replace") and self.instance not in (None, instance) and self.instance_live:
            return error(
                409,
                "unit_in_use",
                "in use",
                unitId=body["id"],
                instanceId=self.instance,
                lastHeartbeatSecondsAgo=2.0,
                heartbeatTimeoutSeconds=30,
            )
        self.registrations += 1
        self.token, self.instance, self.instance_live = f"thu_{next(self._tokens)}", instance, True
        cleared = None
        if self.drain["drainedBy"] == "self":  # a restart ends the unit's own drain
            cleared, self.drain = "2026-01-01T00:00:00Z", dict.fromkeys(self.drain)
            self.status = "ONLINE"
        for task in self.tasks.values():
            if task["status"] == "RUNNING":
                task["status"] = "PENDING"
        reply = {"token": self.token, "status": self.status, "heartbeatIntervalSeconds": self.interval}
        return Response(201, reply | self.drain | {"clearedDrainAt": cleared})

    def take_over(self, instance: str = "other-process") -> None:
        """Another process registers as the unit (with --replace, say): new token and instance."""
        with self.lock:
            self._register(ENROLL, {"id": "w1", "instanceId": instance, "replace": True})

    def _heartbeat(self, body: dict[str, Any]) -> Response:
        listed = {(t["id"], t["attempt"]) for t in body["tasks"]}
        failed_over, commands = [], []
        for task in self.tasks.values():
            if task["status"] == "RUNNING" and (task["id"], task["attempt"]) not in listed:
                task["status"] = "PENDING"
                failed_over.append(task["id"])
        for task_id, attempt in sorted(listed):
            task = self.tasks[task_id]
            if task["status"] != "RUNNING" or task["attempt"] != attempt:
                command = task.get("command") or "abort"
                commands.append({"taskId": task_id, "attempt": attempt, "command": command, "reason": "not live"})
        if body.get("stopping"):
            self.status, self.instance_live = "OFFLINE", False
        reply = {
            "status": self.status,
            "heartbeatIntervalSeconds": self.interval,
            "commands": commands,
            "failedOver": failed_over,
            **self.drain,
        }
        return Response(200, reply)

    def _claim(self, wanted: int) -> Response:
        key = "items" if self.batch else "tasks"  # the older hub also names the claimed tasks `tasks`
        if self.status == "MAINTENANCE":
            return Response(200, {key: [], "unitStatus": self.status})
        if self.queue_paused:
            hold = {"taskType": "T", "paused": True, "heldBy": ["paused"], "nextStartAt": None, "retryAfterSeconds": 30}
            return Response(200, {key: [], "unitStatus": self.status, "queue": hold})
        claimed: list[dict[str, Any]] = []
        for task in self.tasks.values():
            if task["status"] == "PENDING" and len(claimed) < wanted:
                task["status"], task["attempt"] = "RUNNING", task["attempt"] + 1
                claimed.append({k: task[k] for k in ("id", "name", "taskType", "config", "attempt", "timeoutSeconds")})
        running = sum(task["status"] == "RUNNING" for task in self.tasks.values())
        self.peak_running = max(self.peak_running, running)
        return Response(200, {key: claimed, "unitStatus": self.status})

    def _report(self, task_id: int, what: str, body: dict[str, Any], logs: list[Any] | None = None) -> Response:
        task = self.tasks[task_id]
        if task["status"] != "RUNNING" or task["attempt"] != body["attempt"]:
            return error(
                409, "stale_attempt", f"Attempt {body['attempt']} of task {task_id} is not live", command="abort"
            )
        task["logs"].extend(logs or [])
        if what == "logs":
            task["logs"].extend(body["entries"])
            return Response(201, {"stored": len(body["entries"])})
        if what == "progress":
            task["progress"] = body["progress"]
        else:
            task["status"] = "COMPLETED" if what == "complete" else "FAILED"
            task["reports"].append((what, body))
        return Response(200, {"accepted": True})

    def _reports(self, items: list[dict[str, Any]]) -> Response:
        """POST /tasks/reports: each item fenced on its own; its logs and outcome both or neither."""
        answers = []
        for item in items:
            task_id, outcome = item["taskId"], item["outcome"]
            self.sent.append((task_id, outcome, item))
            single = {k: v for k, v in item.items() if k in ("attempt", "result", "error", "retryable", "progress")}
            if outcome == "complete":
                single.setdefault("result", None)
            reply = self._report(task_id, outcome, single, logs=item.get("logs") or [])
            answer = {"taskId": task_id, "attempt": item["attempt"], "status": None, "accepted": False, "error": None}
            if reply.status_code >= 400:
                body = reply.json()
                answer["error"] = {k: body[k] for k in ("code", "message", "details")}
            else:
                answer |= {"status": self.tasks[task_id]["status"], "accepted": True}
            answers.append(answer)
        return Response(200, {"items": answers})

    # --- for assertions ---
    def calls_for(self, task_id: int, after: int = 0) -> list[tuple[int, str, Any]]:
        """The reports about this task (a batch item counts as one), from `after` in `sent`."""
        return [c for c in self.sent[after:] if c[0] == task_id]

    def tried(self, what: str) -> int:
        """Requests (or batch items) that tried to report `what`, refused or not."""
        singles = sum(path.endswith(f"/{what}") for _, path, _ in self.calls)
        items = [i for _, path, body in self.calls if path == "/tasks/reports" for i in body["reports"]]
        return singles + sum(i["outcome"] == what for i in items)

    def heartbeats(self) -> list[Any]:
        return [c[2] for c in self.calls if c[1].endswith("/heartbeat")]


class FakeClock:
    """The agent's clock, moved by the test: periodic work happens without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


class Running:
    def __init__(self, agent: Agent, hub: FakeHub) -> None:
        self.agent, self.hub = agent, hub
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.exit_code = self.agent.run()
        except BaseException as exc:
            self.error = exc

    def tick(self, clock: FakeClock, seconds: float) -> None:
        """Move the agent's clock on and wake its control loop."""
        clock.advance(seconds)
        self.agent.runs.changed.set()

    def tick_until(self, clock: FakeClock, condition: Callable[[], Any], what: str) -> Any:
        """Move the agent's clock on a second at a time until `condition()` holds: periodic work
        (heartbeats, claims, timeouts) comes without waiting for it."""

        def ticked() -> Any:
            self.tick(clock, 1)
            return condition()

        return wait_for(ticked, what=what)

    def drain(self, timeout: float = 5.0, clock: FakeClock | None = None) -> int | None:
        """Ask the agent to drain and wait for it to stop. With `clock` (the agent's), move it past
        the drain deadline once the drain has begun: what still runs is given back."""
        self.agent.request_drain()
        if clock is not None:
            # The drain begins with telling the hub (PATCH MAINTENANCE); its deadline is set then.
            wait_for(lambda: any(method == "PATCH" for method, _, _ in self.hub.calls), what="the drain to begin")
            self.tick(clock, self.agent.config.drain_timeout + 1)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the agent did not stop"
        return self.exit_code


@pytest.fixture(params=["batch", "per-attempt"])
def hub(request: pytest.FixtureRequest) -> FakeHub:
    """Every test runs against a hub with POST /tasks/reports and an older one without it."""
    return FakeHub(batch=request.param == "batch")


@pytest.fixture
def start(hub: FakeHub, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(
        handler: Callable[[TaskContext], Any] = sleep,
        *,
        clock: Callable[[], float] = time.monotonic,
        instance_id: str | None = None,
        **overrides: Any,
    ) -> Running:
        options: dict[str, Any] = {
            "server": "http://hub.test",
            "enroll_key": ENROLL,
            "unit_id": "w1",
            "unit_type": "T",
            "capacity": 2,
            "handler": handler,
            "data_dir": tmp_path,
            "poll_interval": 0.02,
            "flush_interval": 0.02,
            "drain_timeout": 5.0,
            "retry_max": 0.05,
        }
        options.update(overrides)
        config = AgentConfig(**options)
        client = HubClient(config.server, backoff=Backoff(base=0.01, cap=0.05), session_factory=lambda: hub)
        agent = Agent(config, client=client, clock=clock, instance_id=instance_id)
        client.stop = agent.interrupt
        running = Running(agent, hub)
        running.thread.start()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.agent.request_drain()
            running.thread.join(5)


def status(hub: FakeHub, task_id: int) -> str:
    return str(hub.tasks[task_id]["status"])


def test_claims_runs_and_reports_results_logs_and_progress(hub: FakeHub, start: Callable[..., Running]) -> None:
    ids = [hub.add(seconds=0.05, steps=2) for _ in range(5)]
    unit = start()
    wait_for(lambda: all(status(hub, i) == "COMPLETED" for i in ids), what="all tasks completed")
    assert unit.drain() == 0
    for task_id in ids:
        task = hub.tasks[task_id]
        assert task["reports"] == [("complete", {"attempt": 1, "result": {"slept": 0.05, "unit": "w1", "attempt": 1}})]
        assert [line["message"] for line in task["logs"]][-1] == "done"
    assert unit.agent.runs.counts["completed"] == 5
    reports = [path for _, path, _ in hub.calls if path.startswith("/tasks/")]
    if hub.batch:
        assert set(reports) == {"/tasks/reports"}
    else:  # asked once, then attempt by attempt
        assert reports.count("/tasks/reports") == 1 and len(reports) > 1


def test_never_runs_more_than_its_capacity(hub: FakeHub, start: Callable[..., Running]) -> None:
    for _ in range(6):
        hub.add(seconds=0.1, steps=1)
    start(capacity=2)
    wait_for(lambda: all(t["status"] == "COMPLETED" for t in hub.tasks.values()), what="all tasks completed")
    peak = hub.peak_running
    assert peak == 2
    claims = [c[2]["max"] for c in hub.calls if c[1].endswith("/claim")]
    assert max(claims) <= 2


def test_heartbeats_list_every_attempt_the_unit_holds(hub: FakeHub, start: Callable[..., Running]) -> None:
    first, second = hub.add(seconds=0.5, steps=5), hub.add(seconds=0.5, steps=5)
    clock = FakeClock()
    unit = start(clock=clock)
    listed = unit.tick_until(
        clock, lambda: next((b["tasks"] for b in hub.heartbeats() if len(b["tasks"]) == 2), None), "a heartbeat"
    )
    assert {(t["id"], t["attempt"]) for t in listed} == {(first, 1), (second, 1)}
    assert status(hub, first) == "RUNNING"  # listed leases are not failed over


def test_handler_exception_fails_the_attempt_as_retryable(hub: FakeHub, start: Callable[..., Running]) -> None:
    def broken(ctx: TaskContext) -> Any:
        raise KeyError("column")

    task_id = hub.add()
    start(broken)
    wait_for(lambda: status(hub, task_id) == "FAILED")
    what, body = hub.tasks[task_id]["reports"][0]
    assert what == "fail" and body["retryable"] is True and "KeyError" in body["error"]
    assert any("Traceback" in line["message"] for line in hub.tasks[task_id]["logs"])


def test_non_retryable_error_fails_the_attempt_for_good(hub: FakeHub, start: Callable[..., Running]) -> None:
    def refuses(ctx: TaskContext) -> Any:
        raise NonRetryableError("input file not found: data.csv")

    task_id = hub.add()
    start(refuses)
    wait_for(lambda: status(hub, task_id) == "FAILED")
    assert hub.tasks[task_id]["reports"][0][1] == {
        "attempt": 1,
        "error": "input file not found: data.csv",
        "retryable": False,
    }


def test_a_result_json_cannot_encode_fails_the_attempt(hub: FakeHub, start: Callable[..., Running]) -> None:
    task_id = hub.add()
    start(lambda ctx: {"when": object()})
    wait_for(lambda: status(hub, task_id) == "FAILED")
    assert "not JSON" in hub.tasks[task_id]["reports"][0][1]["error"]


def test_cancel_command_stops_the_handler_and_nothing_more_is_reported(
    hub: FakeHub, start: Callable[..., Running]
) -> None:
    stopped = threading.Event()

    def patient(ctx: TaskContext) -> Any:
        if ctx.sleep(10):
            stopped.set()
            assert ctx.cancel_command == "cancel"
        return "late result"

    task_id = hub.add()
    unit = start(patient)
    wait_for(lambda: status(hub, task_id) == "RUNNING")
    before = len(hub.sent)
    hub.cancel(task_id)
    assert stopped.wait(5), "the handler was not told"
    wait_for(lambda: unit.agent.runs.busy() == 0, what="the handler to return")
    unit.drain()  # the reporter has stopped: whatever the agent would send is sent
    assert [c for c in hub.calls_for(task_id, before) if c[1] in ("complete", "fail")] == []
    assert unit.agent.runs.counts["dropped"] == 1


def test_a_refused_report_drops_the_attempt_for_good(hub: FakeHub, start: Callable[..., Running]) -> None:
    """A 409 on a report means the attempt is dead: no more logs, progress or result for it."""
    task_id = hub.add(seconds=0.3, steps=6)
    unit = start()
    wait_for(lambda: hub.tasks[task_id]["progress"] > 0, what="progress")
    silent: Fault = lambda m, p, b: requests.ConnectionError("lost") if p.endswith("/heartbeat") else None  # noqa: E731
    with hub.lock:  # the hub took the task away; heartbeats are lost, so only a report can tell
        hub.faults.append(silent)
        hub.tasks[task_id]["attempt"] = 2
        hub.status = "MAINTENANCE"  # so the unit claims nothing more
        changed_at = len(hub.sent)
    wait_for(lambda: unit.agent.runs.counts["dropped"] == 1, what="the attempt dropped")
    wait_for(lambda: unit.agent.runs.busy() == 0, what="the handler to return")
    unit.drain()  # the reporter has stopped: whatever the agent would send is sent
    reports = hub.calls_for(task_id, changed_at)
    assert len(reports) == 1, reports  # the refused one, then nothing
    assert hub.tasks[task_id]["reports"] == []


def test_a_result_is_kept_until_the_hub_accepts_it(hub: FakeHub, start: Callable[..., Running]) -> None:
    """The hub is down when the task finishes: the result waits, the lease stays listed in
    heartbeats, and it is delivered once the hub answers again."""
    down = threading.Event()
    down.set()

    def outage(method: str, path: str, body: Any) -> Any:
        if not down.is_set() or path.endswith("/claim"):
            return None
        if path.endswith("/heartbeat"):
            return requests.ConnectionError("hub restarting")
        reports = body.get("reports") or [] if path == "/tasks/reports" else []
        if path.endswith("complete") or any(item["outcome"] == "complete" for item in reports):
            return error(503, "service_unavailable", "Database unavailable, try again")
        return None

    task_id = hub.add(seconds=0.02, steps=1)
    unit = start()
    wait_for(lambda: status(hub, task_id) == "RUNNING")
    hub.faults.append(outage)
    wait_for(lambda: hub.tried("complete") >= 3, what="retried reports")
    assert status(hub, task_id) == "RUNNING"
    assert unit.agent.runs.heartbeat_list() == [{"id": task_id, "attempt": 1, "progress": 100}]
    down.clear()
    wait_for(lambda: status(hub, task_id) == "COMPLETED", what="the result delivered")
    assert len(hub.tasks[task_id]["reports"]) == 1


def test_maintenance_claims_nothing(hub: FakeHub, start: Callable[..., Running]) -> None:
    hub.status = "MAINTENANCE"
    task_id = hub.add()
    clock = FakeClock()
    unit = start(clock=clock)
    unit.tick_until(clock, lambda: len(hub.heartbeats()) >= 3, what="heartbeats")
    assert status(hub, task_id) == "PENDING"
    assert unit.agent.status == "MAINTENANCE"
    hub.status = "ONLINE"
    unit.tick_until(clock, lambda: status(hub, task_id) != "PENDING", what="a claim once ONLINE again")


def test_a_paused_queue_makes_the_agent_back_off_instead_of_spinning(
    hub: FakeHub, start: Callable[..., Running]
) -> None:
    hub.queue_paused = True
    task_id = hub.add()
    clock = FakeClock()
    unit = start(clock=clock)

    def claims() -> int:
        return sum(1 for _, path, _ in list(hub.calls) if path.endswith("/claim"))

    unit.tick_until(clock, lambda: claims() >= 1, what="the first claim")
    for _ in range(20):  # 20 s with a 0.02 s poll interval: one claim only, the hub said 30 s
        unit.tick(clock, 1)
        time.sleep(0.01)
    assert claims() == 1
    hub.queue_paused = False
    unit.tick_until(clock, lambda: status(hub, task_id) != "PENDING", what="a claim after the retry-after")


def test_drain_finishes_running_tasks_reports_them_and_claims_nothing_more(
    hub: FakeHub, start: Callable[..., Running]
) -> None:
    running = [hub.add(seconds=0.3, steps=3) for _ in range(2)]
    unit = start(capacity=2)
    wait_for(lambda: all(status(hub, i) == "RUNNING" for i in running))
    waiting = hub.add()
    assert unit.drain() == 0
    assert [status(hub, i) for i in running] == ["COMPLETED", "COMPLETED"]
    assert status(hub, waiting) == "PENDING"


def test_drain_gives_back_what_does_not_finish_in_the_grace_period(hub: FakeHub, start: Callable[..., Running]) -> None:
    slow, quick = hub.add(seconds=30, steps=30), hub.add(seconds=0.01, steps=1)
    clock = FakeClock()
    unit = start(capacity=2, drain_timeout=0.3, clock=clock)
    wait_for(lambda: status(hub, quick) == "COMPLETED" and status(hub, slow) == "RUNNING")
    assert unit.drain(clock=clock) == 0
    # The last heartbeat did not list it, so the hub failed it over at once.
    assert status(hub, slow) == "PENDING"
    assert hub.heartbeats()[-1]["tasks"] == []
    assert unit.agent.runs.counts["givenBack"] == 1


def test_an_unknown_token_makes_the_unit_register_again(hub: FakeHub, start: Callable[..., Running]) -> None:
    task_id = hub.add(seconds=0.5, steps=5)
    start()
    wait_for(lambda: status(hub, task_id) == "RUNNING")
    hub.token = "thu_revoked"  # e.g. the unit was registered again by someone else
    wait_for(lambda: hub.registrations >= 2, what="a second registration")
    # Registering again fails the old attempt over; the unit drops it and claims attempt 2.
    wait_for(lambda: status(hub, task_id) == "COMPLETED", what="the task completed")
    assert hub.tasks[task_id]["reports"][0][1]["attempt"] == 2


def test_registration_waits_for_the_hub_to_come_up(hub: FakeHub, start: Callable[..., Running]) -> None:
    refusals = iter(range(3))
    hub.faults.append(
        lambda m, p, b: (
            requests.ConnectionError("down") if p.endswith("register") and next(refusals, None) is not None else None
        )
    )
    task_id = hub.add(seconds=0.01, steps=1)
    start()
    wait_for(lambda: status(hub, task_id) == "COMPLETED")
    assert sum(c[1].endswith("/register") for c in hub.calls) == 4


def test_a_bad_enroll_key_is_refused_at_once(hub: FakeHub, start: Callable[..., Running]) -> None:
    unit = start(enroll_key="thk_wrong")
    unit.thread.join(5)
    assert isinstance(unit.error, RegistrationRefused)
    assert "thk_wrong" not in str(unit.error)


def test_a_task_past_its_timeout_is_stopped_and_failed_retryable(hub: FakeHub, start: Callable[..., Running]) -> None:
    task_id = hub.add(seconds=30, steps=30, timeoutSeconds=0.2)
    clock = FakeClock()
    unit = start(clock=clock)
    unit.tick_until(clock, lambda: status(hub, task_id) == "FAILED", "the timeout on the agent's clock")
    what, body = hub.tasks[task_id]["reports"][0]
    assert what == "fail" and body["retryable"] is True and "timed out" in body["error"]
