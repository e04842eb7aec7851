"""wait(): polling against a hub that answers at once, long-polling against one that holds the
request (GET /tasks/{id}?waitFor=terminal&waitSeconds=N, issue 14), and the timeout."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from hub import Hub, Tap, TapTransport, missing_feature, without_wait_parameters
from taskhub_client import Client, Task, WaitTimeout

pytestmark = pytest.mark.hub


def hub_long_polls(hub: Hub) -> bool:
    """Whether the hub's schema declares `waitFor` on GET /tasks/{id}."""
    for path, item in hub.schema()["paths"].items():
        if path.rstrip("/").endswith("/tasks/{id}"):
            return any(p.get("name") == "waitFor" for p in item.get("get", {}).get("parameters", []))
    return False


def in_thread(call: Callable[[], Any]) -> Callable[[], Any]:
    """Run `call` in a thread; the returned function joins it and returns (or raises) its result."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(60)
        assert not thread.is_alive(), "the waiter did not return"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return join


def complete_when_claimed(hub: Hub, task: Task, task_type: str) -> None:
    unit = hub.unit(f"w-{task_type.lower()}", task_type)
    [claimed] = unit.claim()
    assert claimed["id"] == task.id
    unit.report(claimed, "complete", result={"rows": 3})


def test_wait_polls_a_hub_without_long_poll_until_the_task_completes(hub: Hub, task_type: str) -> None:
    tap = Tap()
    # The transport strips waitFor/waitSeconds: the real hub answers as one without long-poll does.
    with Client(hub.url, hub.key, transport=TapTransport(tap, rewrite=without_wait_parameters)) as client:
        task = client.submit("waited", task_type)
        join = in_thread(lambda: client.wait(task.id, timeout=60))
        tap.wait_for(3)  # submit + two polls: it is waiting, and not by holding a request
        complete_when_claimed(hub, task, task_type)
        done = join()
        assert (done.status, done.result, done.done) == ("COMPLETED", {"rows": 3}, True)
        assert client._core.long_poll is False  # found out on the first answer, kept for the client's life
    polls = tap.to("GET", f"/tasks/{task.id}")
    assert polls[0].url.params["waitFor"] == "terminal"  # it asked, once
    assert all("waitFor" not in r.url.params for r in polls[1:])


def test_wait_returns_at_once_for_a_task_already_done(client: Client, task_type: str) -> None:
    task = client.submit("done", task_type)
    client.cancel(task.id)
    assert client.wait(task.id, timeout=5).status == "CANCELLED"


def test_wait_times_out_carrying_the_last_state_seen(hub: Hub, task_type: str) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the injected clock moves instead of the test sleeping
        sleeps.append(seconds)
        now[0] += seconds

    with Client(hub.url, hub.key, clock=lambda: now[0], sleep=sleep, rng=lambda: 1.0) as client:
        client._core.long_poll = False  # a held long-poll would take real time
        task = client.submit("never", task_type)
        with pytest.raises(WaitTimeout) as timed_out:
            client.wait(task.id, timeout=3)
    assert timed_out.value.task.id == task.id and timed_out.value.task.status == "PENDING"
    assert sleeps == [0.25, 0.5, 1.0, 1.25]  # capped exponential backoff, the last cut to the deadline
    assert isinstance(timed_out.value, TimeoutError)


def test_a_failed_task_waiting_for_its_automatic_retry_is_not_done(hub: Hub, client: Client, task_type: str) -> None:
    task = client.submit("flaky", task_type, max_retries=2)
    unit = hub.unit(f"r-{task_type.lower()}", task_type)
    [claimed] = unit.claim()
    unit.report(claimed, "fail", error="try again", retryable=True)
    failed = client.get(task.id)
    assert failed.status == "FAILED" and failed.waiting_for_retry and not failed.done
    client.cancel(task.id)
    assert client.wait(task.id, timeout=5).status == "CANCELLED"


@pytest.fixture
def long_poll_hub(hub: Hub) -> Hub:
    if not hub_long_polls(hub):
        missing_feature("the hub's schema has no waitFor on GET /api/v1/tasks/{id} (issue 14 item 4a, not landed)")
    return hub


def test_wait_long_polls_a_hub_that_holds_the_request(long_poll_hub: Hub, task_type: str) -> None:
    tap = Tap()
    with Client(long_poll_hub.url, long_poll_hub.key, transport=TapTransport(tap)) as client:
        task = client.submit("held", task_type)
        with pytest.raises(WaitTimeout):
            client.wait(task.id, timeout=3)
        assert client._core.long_poll is True
        # One held request of 3 s (a poller would have sent five or more), at most one plain get after.
        assert 1 <= len(tap.to("GET", f"/tasks/{task.id}")) <= 2
        join = in_thread(lambda: client.wait(task.id, timeout=60))
        tap.wait_for(len(tap.requests) + 1)
        complete_when_claimed(long_poll_hub, task, task_type)
        assert join().status == "COMPLETED"
