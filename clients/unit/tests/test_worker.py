"""`Worker` against a real hub: several task types in one process, typed input checked before the
handler runs, the context, and a blocking `run()` that `stop()` ends. Plus its registration rules."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import testkit.hub

from taskhub_unit import TaskContext, Worker

pytestmark = pytest.mark.hub


@dataclass
class Resize:
    width: int
    height: int = 10
    output_format: Literal["png", "jpg"] = "png"


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def submit(hub: testkit.hub.Hub, task_type: str, config: dict[str, Any], **more: Any) -> int:
    body = {"name": f"t-{task_type}", "taskType": task_type, "priority": 5, "config": config, **more}
    return int(hub.api("POST", "/tasks", body)["id"])


def done(hub: testkit.hub.Hub, ids: list[int]) -> list[dict[str, Any]] | None:
    tasks = [hub.api("GET", f"/tasks/{task_id}") for task_id in ids]
    terminal = all(
        t["status"] in ("COMPLETED", "CANCELLED") or (t["status"] == "FAILED" and not t["nextRetryAt"]) for t in tasks
    )
    return tasks if terminal else None


def test_one_worker_runs_two_task_types_with_typed_input_until_stopped(hub: testkit.hub.Hub, task_type: str) -> None:
    resize_type, echo_type = f"{task_type[:24]}_R", f"{task_type[:24]}_E"
    worker = Worker(hub.url, hub.key, id="sdk-two-types", capacity=2, claim_wait=2, status_interval=0)
    seen: list[tuple[str, int, str | None]] = []

    @worker.handler(resize_type)
    def resize(job: Resize, ctx: TaskContext) -> dict[str, Any]:
        ctx.log.info("resizing to %dx%d", job.width, job.height)
        ctx.progress(50)
        seen.append(("resize", ctx.attempt, ctx.traceparent))
        return {"area": job.width * job.height, "format": job.output_format, "cancelled": ctx.cancelled}

    @worker.handler(echo_type)
    def echo(ctx: TaskContext) -> dict[str, Any]:
        seen.append(("echo", ctx.attempt, ctx.traceparent))
        return {"said": ctx.config.get("message")}

    assert [worker.unit_id(t) for t in worker.task_types] == [f"{worker.id}.{resize_type}", f"{worker.id}.{echo_type}"]
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    ids = [
        submit(hub, resize_type, {"width": 30, "outputFormat": "jpg"}),
        submit(hub, resize_type, {"width": "wide"}, maxRetries=3),  # does not fit Resize: never runs
        submit(hub, echo_type, {"message": "hello"}),
    ]
    good, bad, echoed = wait_for(lambda: done(hub, ids), 60, "the three tasks to finish")
    worker.stop()
    runner.join(40)
    assert not runner.is_alive(), "worker.run() did not return after stop()"

    assert (good["status"], good["result"]) == ("COMPLETED", {"area": 300, "format": "jpg", "cancelled": False})
    assert (echoed["status"], echoed["result"]) == ("COMPLETED", {"said": "hello"})
    # A config that does not fit fails at once, without a retry, naming the field.
    assert bad["status"] == "FAILED" and bad["attempt"] == 1 and bad["retryCount"] == 0
    assert "config.width: expected an integer" in bad["error"]
    assert sorted(s[0] for s in seen) == ["echo", "resize"]
    logs = hub.api("GET", f"/tasks/{good['id']}/logs")
    assert "resizing to 30x10" in str(logs)
    for unit_type in (resize_type, echo_type):
        unit = hub.api("GET", f"/execution-units/{worker.id}.{unit_type}")
        assert unit["unitType"] == unit_type and unit["capacity"] == 2 and unit["status"] == "OFFLINE"


def test_a_worker_stopped_before_it_runs_returns_at_once_without_registering(hub: testkit.hub.Hub) -> None:
    worker = Worker(hub.url, hub.key, id="never-started")
    worker.handler("NEVER")(lambda ctx: None)
    worker.stop()
    assert worker.run() == 0
    status, _ = testkit.hub.call(hub.base, "GET", "/execution-units/never-started", hub.key)
    assert status == 404


def test_handlers_are_registered_once_per_type_before_the_worker_runs() -> None:
    worker = Worker("http://127.0.0.1:9", "key", id="w")
    with pytest.raises(RuntimeError, match="no handlers"):
        worker.run()
    worker.handler("A")(lambda ctx: None)
    assert worker.unit_id("A") == "w"  # one type: the id as given
    with pytest.raises(ValueError, match="registered already"):
        worker.handler("A")(lambda ctx: None)
    with pytest.raises(TypeError, match="must take"):
        worker.handler("B")(lambda a, b, c: None)
    with pytest.raises(ValueError, match="capacity"):
        Worker("http://127.0.0.1:9", "key", id="w", capacity=0)
