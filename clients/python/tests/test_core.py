"""The shared core's decisions, driven step by step with scripted answers and a fake clock — the
"sans-I/O" shape lets a test be the client. Covers what today's hub cannot show: a hub that holds a
long-poll, one that answers FAILED-awaiting-retry at once, the request each retry sends again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from taskhub_client._core import Core
from taskhub_client._steps import Emit, Send, Sleep, Steps

PENDING = {"id": 1, "name": "n", "taskType": "T", "status": "PENDING"}
DONE = {**PENDING, "status": "COMPLETED"}
RETRYING = {**PENDING, "status": "FAILED", "nextRetryAt": "2030-01-01T00:00:00Z"}


class Script:
    """Plays the hub: `answer(request, clock)` gives each reply and may move the clock (a hold)."""

    def __init__(self, answer: Callable[[httpx.Request, list[float]], httpx.Response]) -> None:
        self.now = [0.0]
        self.answer = answer
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        self.core = Core(
            httpx.Client(base_url="http://hub/api/v1"), timeout=10, retries=2, clock=self.clock, rng=lambda: 1.0
        )

    def clock(self) -> float:
        return self.now[0]

    def run(self, steps: Steps[Any]) -> Any:
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as stop:
                return stop.value
            reply = None
            if isinstance(step, Send):
                self.requests.append(step.request)
                reply = self.answer(step.request, self.now)
            elif isinstance(step, Sleep):
                self.sleeps.append(step.seconds)
                self.now[0] += step.seconds
            else:
                assert not isinstance(step, Emit)


def test_a_hub_that_holds_the_request_is_long_polled_without_sleeping() -> None:
    answers = iter([PENDING, PENDING, DONE])

    def hold(request: httpx.Request, now: list[float]) -> httpx.Response:
        now[0] += float(request.url.params["waitSeconds"])  # held for the whole wait
        return httpx.Response(200, json=next(answers))

    script = Script(hold)
    assert script.run(script.core.wait(1, timeout=100)).status == "COMPLETED"
    assert script.sleeps == [] and script.core.long_poll is True
    assert [r.url.params["waitSeconds"] for r in script.requests] == ["20", "20", "20"]
    # The read timeout covers the hold: the client's timeout plus the wait asked.
    assert script.requests[0].extensions["timeout"]["read"] == 30


def test_a_hub_that_answers_at_once_is_polled_for_the_rest_of_the_clients_life() -> None:
    answers = iter([PENDING, PENDING, DONE, PENDING, DONE])
    script = Script(lambda request, now: httpx.Response(200, json=next(answers)))
    assert script.run(script.core.wait(1, timeout=100)).status == "COMPLETED"
    assert ["waitFor" in r.url.params for r in script.requests] == [True, False, False]
    assert script.sleeps == [0.25, 0.5] and script.core.long_poll is False
    script.run(script.core.wait(1, timeout=100))
    assert ["waitFor" in r.url.params for r in script.requests[3:]] == [False, False]


def test_failed_awaiting_retry_answered_at_once_keeps_long_polling_with_a_pause() -> None:
    # A hub may count FAILED as final for waitFor; the task is not done while its retry is pending.
    answers = iter([RETRYING, DONE])
    script = Script(lambda request, now: httpx.Response(200, json=next(answers)))
    assert script.run(script.core.wait(1, timeout=100)).status == "COMPLETED"
    assert ["waitFor" in r.url.params for r in script.requests] == [True, True]
    assert script.sleeps == [0.25] and script.core.long_poll is None


def test_the_last_second_before_the_deadline_is_a_plain_get() -> None:
    script = Script(lambda request, now: httpx.Response(200, json=PENDING))
    script.core.long_poll = True
    with pytest.raises(TimeoutError):
        script.run(script.core.wait(1, timeout=0.5))
    assert [dict(r.url.params) for r in script.requests] == [{}, {}, {}]
    assert script.sleeps == [0.25, 0.25]  # the second cut to the deadline; one last look after it


def test_a_retried_submit_sends_the_same_request_again() -> None:
    from taskhub_client.models import BatchItem

    answers = iter([httpx.Response(502, text="bad gateway"), httpx.Response(201, json=PENDING)])
    script = Script(lambda request, now: next(answers))
    task = script.run(script.core.submit(BatchItem("n", "T", {"a": 1})))
    first, second = script.requests
    assert first is second and first.headers["Idempotency-Key"] and task.replayed is False
    assert script.sleeps == [0.5]


def test_a_long_retry_after_is_raised_rather_than_slept() -> None:
    from taskhub_client import Throttled

    script = Script(lambda request, now: httpx.Response(429, headers={"Retry-After": "3600"}, json={"message": "slow"}))
    with pytest.raises(Throttled) as refused:
        script.run(script.core.get(1))
    assert refused.value.retry_after == 3600 and script.sleeps == []


@pytest.mark.parametrize("status", [500, 502, 504])
def test_an_ambiguous_5xx_repeats_reads_but_not_a_cancel(status: int) -> None:
    from taskhub_client import ServerError

    script = Script(lambda request, now: httpx.Response(status, text="proxy error"))
    with pytest.raises(ServerError):
        script.run(script.core.get(1))
    assert len(script.requests) == 3
    script.requests.clear()
    with pytest.raises(ServerError):
        script.run(script.core.cancel(1, ""))
    assert len(script.requests) == 1
