"""The unit agent's reporter against a scripted hub (no threads, no sockets): what each flush sends
to `POST /tasks/reports`, how it applies each item's answer, and the per-attempt path it falls back
to on an older hub."""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
import requests

from taskhub_unit import TaskContext, reporter
from taskhub_unit.client import Backoff, HubClient
from taskhub_unit.reporter import LOG_BATCH, REPORTS_MAX_BYTES, REPORTS_MAX_ITEMS, Reporter
from taskhub_unit.runs import Run, RunTable
from tests.test_agent_runtime import Response, error

Answer = Callable[[str, Any], Any]  # (path, body) -> Response, or an exception to raise


def item_error(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details}


def accept_all(path: str, body: Any) -> Response:
    if path != "/tasks/reports":
        return Response(201 if path.endswith("/logs") else 200, {"accepted": True})
    items = [
        {"taskId": i["taskId"], "attempt": i["attempt"], "status": "RUNNING", "accepted": True, "error": None}
        for i in body["reports"]
    ]
    return Response(200, {"items": items})


def answering(errors: dict[int, dict[str, Any] | None]) -> Answer:
    """Accept every item but those named: an error, or None for `accepted: false` (a repeat)."""

    def answer(path: str, body: Any) -> Response:
        reply = accept_all(path, body).json()
        for item in reply["items"]:
            if item["taskId"] in errors:
                problem = errors[item["taskId"]]
                item |= {"accepted": False, "error": problem, "status": None if problem else "COMPLETED"}
        return Response(200, reply)

    return answer


class Hub:
    """The session HubClient uses: records each request, answers with `answer`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # of each request, in order
        self.answer: Answer = accept_all

    def request(self, method: str, url: str, json: Any = None, headers: Any = None, timeout: Any = None) -> Any:
        path = url.split("/api/v1", 1)[1]
        self.requests.append((path, copy.deepcopy(json)))
        self.headers.append(dict(headers or {}))
        outcome = self.answer(path, json)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def paths(self, after: int = 0) -> list[str]:
        return [path for path, _ in self.requests[after:]]

    def items(self, after: int = 0) -> list[dict[str, Any]]:
        return [i for path, body in self.requests[after:] if path == "/tasks/reports" for i in body["reports"]]


class Setup:
    def __init__(self, backoff: Backoff) -> None:
        self.hub = Hub()
        self.runs = RunTable()
        self.client = HubClient("http://hub.test", backoff=backoff, session_factory=lambda: self.hub)
        self.client.token = "thu_1"
        self.unknown: list[str | None] = []
        self.reporter = Reporter(self.client, self.runs, backoff=backoff, on_unit_unknown=self.unknown.append)
        self._ids = iter(range(1, 100_000))

    def run(
        self,
        *,
        lines: int = 0,
        progress: int = 0,
        outcome: tuple[str, dict[str, Any]] | None = None,
        sent: int = 0,
        traceparent: str | None = None,
    ) -> Run:
        task_id = next(self._ids)
        ctx = TaskContext({"id": task_id, "attempt": 1, "name": f"t{task_id}", "traceparent": traceparent})
        for n in range(lines):
            ctx.logger.info("task %d line %d", task_id, n)
        ctx.progress(progress)
        run = Run(ctx, sent_progress=sent)
        self.runs.add(run)
        if outcome is not None:
            self.runs.handler_finished(run, outcome)
        return run


def complete(result: Any = "ok") -> tuple[str, dict[str, Any]]:
    return ("complete", {"attempt": 1, "result": result})


def fail(error: str = "boom", retryable: bool = True) -> tuple[str, dict[str, Any]]:
    return ("fail", {"attempt": 1, "error": error, "retryable": retryable})


def messages(items: list[dict[str, Any]]) -> list[str]:
    return [line["message"] for item in items for line in item.get("logs", [])]


@pytest.fixture
def setup() -> Setup:
    return Setup(Backoff(base=60, cap=60))  # a back-off no test outlives


def test_one_request_carries_every_attempt_that_has_something_to_say(setup: Setup) -> None:
    done = setup.run(lines=2, outcome=complete({"rows": 3}))
    failed = setup.run(outcome=fail("bad input", retryable=False))
    moving = setup.run(lines=1, progress=40)
    chatty = setup.run(lines=1)  # only log lines: sent with its current progress
    setup.run(progress=30, sent=30)  # nothing new
    setup.run()  # nothing at all
    setup.reporter.flush()
    assert setup.hub.paths() == ["/tasks/reports"]
    items = setup.hub.items()
    assert [(i["taskId"], i["outcome"]) for i in items] == [
        (done.ctx.id, "complete"),
        (failed.ctx.id, "fail"),
        (moving.ctx.id, "progress"),
        (chatty.ctx.id, "progress"),
    ]
    assert items[0]["result"] == {"rows": 3} and messages(items[:1]) == ["task 1 line 0", "task 1 line 1"]
    assert (items[1]["error"], items[1]["retryable"], "logs" in items[1]) == ("bad input", False, False)
    assert (items[2]["progress"], items[3]["progress"], messages(items[3:])) == (40, 0, ["task 4 line 0"])
    assert setup.runs.counts | {"claimed": 0} == dict(claimed=0, completed=1, failed=1, dropped=0, givenBack=0)
    assert setup.runs.get(done.ctx.id, 1) is None and moving.sent_progress == 40
    setup.reporter.flush()
    assert len(setup.hub.requests) == 1  # nothing new to say: no request


def test_a_stale_or_unknown_item_drops_its_attempt_and_the_others_are_reported(setup: Setup) -> None:
    first, stale, gone, last = (setup.run(lines=1, outcome=complete()) for _ in range(4))
    setup.hub.answer = answering(
        {
            stale.ctx.id: item_error("stale_attempt", "Attempt 1 is not live; abort it", command="abort"),
            gone.ctx.id: item_error("not_found", "Task 3 not found"),
        }
    )
    setup.reporter.flush()
    assert len(setup.hub.requests) == 1
    assert stale.dead and gone.dead and stale.ctx.cancel_command == "abort"
    assert not first.dead and not last.dead
    assert setup.runs.live() == [] and setup.runs.counts["completed"] == 2 and setup.runs.counts["dropped"] == 2
    setup.reporter.flush()
    assert len(setup.hub.requests) == 1  # a dropped attempt is never reported again


def test_an_item_over_the_log_cap_is_sent_again_without_its_lines(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    capped, _other = setup.run(lines=3, outcome=complete()), setup.run(lines=1, outcome=complete())
    cap = item_error("conflict", "Task 1 has reached its log cap of 10000 entries", stored=10_000, cap=10_000)
    answers = iter([answering({capped.ctx.id: cap}), accept_all])
    setup.hub.answer = lambda path, body: next(answers)(path, body)
    with caplog.at_level(logging.WARNING, logger="taskhub_unit.agent"):
        setup.reporter.flush()
    assert setup.hub.paths() == ["/tasks/reports", "/tasks/reports"]
    (again,) = setup.hub.items(after=1)
    assert again == {"taskId": capped.ctx.id, "attempt": 1, "outcome": "complete", "result": "ok"}  # no logs
    assert setup.runs.counts["completed"] == 2 and not capped.dead
    assert "hub refused 3 log line(s)" in caplog.text and capped.ctx.logger.pending() == 0


@pytest.mark.parametrize(
    "failure",
    [error(503, "service_unavailable", "down"), error(429, "throttled", "slow down"), requests.ConnectionError("x")],
    ids=["503", "429", "unreachable"],
)
def test_a_transient_failure_keeps_everything_and_backs_off_the_whole_batch(setup: Setup, failure: Any) -> None:
    finished, running = setup.run(lines=2, outcome=complete()), setup.run(lines=3, progress=50)
    setup.hub.answer = lambda path, body: failure
    setup.reporter.flush()
    assert len(setup.hub.requests) == 1 and len(setup.hub.items()) == 2
    assert finished.ctx.logger.pending() == 2 and running.ctx.logger.pending() == 3
    assert finished.outcome == complete() and running.sent_progress == 0 and len(setup.runs) == 2
    setup.run(outcome=complete())  # a newcomer waits for the back-off too
    setup.reporter.flush()
    assert len(setup.hub.requests) == 1  # backing off: no request
    setup.reporter._batch_retry_at = 0.0  # the back-off is over
    setup.hub.answer = accept_all
    setup.reporter.flush()
    retried = setup.hub.items(after=1)
    assert [i["outcome"] for i in retried] == ["complete", "progress", "complete"]
    assert messages(retried) == ["task 1 line 0", "task 1 line 1", "task 2 line 0", "task 2 line 1", "task 2 line 2"]
    assert setup.runs.counts["completed"] == 2 and running.sent_progress == 50


def test_the_final_flush_after_stop_ignores_the_back_off(setup: Setup) -> None:
    setup.run(outcome=complete())
    setup.hub.answer = lambda path, body: requests.ConnectionError("x")
    setup.reporter.flush()
    setup.hub.answer = accept_all
    setup.reporter.stop(timeout=0)
    setup.reporter.flush()
    assert len(setup.hub.requests) == 2 and setup.runs.counts["completed"] == 1


def test_requests_are_split_by_item_count(setup: Setup) -> None:
    for _ in range(2 * REPORTS_MAX_ITEMS + 50):
        setup.run(outcome=complete())
    setup.reporter.flush()
    assert [len(body["reports"]) for _, body in setup.hub.requests] == [REPORTS_MAX_ITEMS, REPORTS_MAX_ITEMS, 50]
    assert setup.runs.counts["completed"] == 2 * REPORTS_MAX_ITEMS + 50


def test_requests_are_split_by_body_size(setup: Setup) -> None:
    for _ in range(8):
        setup.run(outcome=complete("x" * 200_000))
    setup.reporter.flush()
    sizes = [len(json.dumps(body)) for _, body in setup.hub.requests]
    assert len(sizes) > 1 and max(sizes) <= REPORTS_MAX_BYTES, sizes
    assert len(setup.hub.items()) == 8 and setup.runs.counts["completed"] == 8


def test_an_item_larger_than_a_request_goes_alone(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reporter, "REPORTS_MAX_BYTES", 10_000)
    small = [setup.run(outcome=complete("s" * 3_000)) for _ in range(2)]
    big = setup.run(outcome=complete("b" * 20_000))
    tail = setup.run(outcome=complete("s" * 3_000))
    setup.reporter.flush()
    chunks = [[i["taskId"] for i in body["reports"]] for _, body in setup.hub.requests]
    assert chunks == [[small[0].ctx.id, small[1].ctx.id], [big.ctx.id], [tail.ctx.id]]


def test_lines_beyond_one_item_go_first_and_the_result_after_them(setup: Setup) -> None:
    run = setup.run(lines=2 * LOG_BATCH + 200, outcome=complete())
    setup.reporter.flush()
    items = setup.hub.items()
    assert [(i["outcome"], len(i.get("logs", []))) for i in items] == [
        ("progress", LOG_BATCH),
        ("progress", LOG_BATCH),
        ("complete", 200),
    ]
    assert messages(items) == [f"task 1 line {n}" for n in range(2 * LOG_BATCH + 200)]
    assert setup.runs.counts["completed"] == 1 and run.ctx.logger.pending() == 0


def test_a_result_too_big_to_share_a_request_with_its_lines_goes_after_them(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reporter, "REPORTS_MAX_BYTES", 10_000)
    setup.run(lines=5, outcome=complete("r" * 9_700))
    setup.reporter.flush()
    items = setup.hub.items()
    assert [(i["outcome"], len(i.get("logs", []))) for i in items] == [("progress", 5), ("complete", 0)]


def test_a_repeat_of_an_accepted_result_counts_as_reported(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    run = setup.run(outcome=complete())
    setup.hub.answer = answering({run.ctx.id: None})
    with caplog.at_level(logging.INFO, logger="taskhub_unit.agent"):
        setup.reporter.flush()
    assert setup.runs.counts["completed"] == 1 and not run.dead
    assert re.search(r"task \d+ attempt 1: completed in \d+\.\d\ds \(already recorded\)", caplog.text)


def test_an_unknown_token_keeps_the_reports_and_asks_to_register_again(setup: Setup) -> None:
    run = setup.run(lines=2, outcome=complete())
    setup.hub.answer = lambda path, body: error(401, "unauthorized", "Invalid unit token")
    setup.reporter.flush()
    assert setup.unknown == ["thu_1"]
    assert run.ctx.logger.pending() == 2 and len(setup.runs) == 1 and not run.dead


def test_a_refused_batch_is_sent_item_by_item_so_only_the_bad_item_is_refused(setup: Setup) -> None:
    good, bad = setup.run(lines=1, outcome=complete()), setup.run(outcome=complete("too big for this hub"))

    def answer(path: str, body: Any) -> Response:
        if any(i["taskId"] == bad.ctx.id and i["outcome"] == "complete" for i in body["reports"]):
            return error(400, "validation_error", "reports[1].result: too large")
        return accept_all(path, body)

    setup.hub.answer = answer
    setup.reporter.flush()
    assert [[i["taskId"] for i in body["reports"]] for _, body in setup.hub.requests] == [
        [good.ctx.id, bad.ctx.id],
        [good.ctx.id],
        [bad.ctx.id],
    ]
    assert setup.runs.counts["completed"] == 1
    assert bad.outcome is not None and bad.outcome[0] == "fail" and bad.outcome[1]["retryable"] is False
    setup.reporter.flush()  # as on the per-attempt path: the refused result becomes a failure
    assert setup.hub.items(after=3) == [
        {
            "taskId": bad.ctx.id,
            "attempt": 1,
            "outcome": "fail",
            "error": "the hub refused the result: reports[1].result: too large",
            "retryable": False,
        }
    ]
    assert setup.runs.counts["failed"] == 1


def test_a_result_json_cannot_carry_fails_the_attempt_without_sending_it(setup: Setup) -> None:
    run = setup.run(outcome=complete({"ratio": float("nan")}))
    setup.reporter.flush()
    (item,) = setup.hub.items()
    assert (item["outcome"], item["retryable"]) == ("fail", False) and "not JSON" in item["error"]
    assert "not JSON" in item["logs"][0]["message"] and setup.runs.counts["failed"] == 1 and not run.dead


@pytest.mark.parametrize("status", [404, 405])
def test_an_older_hub_gets_per_attempt_reports_for_the_life_of_the_process(setup: Setup, status: int) -> None:
    done, moving = setup.run(lines=2, outcome=complete()), setup.run(progress=40)

    def old_hub(path: str, body: Any) -> Response:
        if path == "/tasks/reports":
            return error(status, "not_found" if status == 404 else "method_not_allowed", "Not found.")
        return accept_all(path, body)

    setup.hub.answer = old_hub
    setup.reporter.flush()
    assert setup.hub.paths() == [
        "/tasks/reports",
        f"/tasks/{done.ctx.id}/logs",
        f"/tasks/{done.ctx.id}/complete",
        f"/tasks/{moving.ctx.id}/progress",
    ]
    assert setup.hub.requests[1][1]["entries"][1]["message"] == "task 1 line 1"  # the lines were not lost
    assert setup.runs.counts["completed"] == 1 and moving.sent_progress == 40 and not setup.reporter.batch
    later = setup.run(outcome=fail())
    setup.reporter.flush()
    assert setup.hub.paths(after=4) == [f"/tasks/{later.ctx.id}/fail"]  # not asked again


TRACE_A = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_B = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_each_report_request_carries_the_traceparent_of_the_tasks_it_reports(setup: Setup) -> None:
    a1 = setup.run(outcome=complete(), traceparent=TRACE_A)
    plain = setup.run(progress=20)
    b = setup.run(outcome=fail(), traceparent=TRACE_B)
    a2 = setup.run(progress=50, traceparent=TRACE_A)
    setup.reporter.flush()
    sent = [
        (headers.get("traceparent"), [i["taskId"] for i in body["reports"]])
        for (_, body), headers in zip(setup.hub.requests, setup.hub.headers, strict=True)
    ]
    # One trace context per request: the tasks of one trace go together, a task with none goes without.
    assert sorted(sent, key=str) == sorted(
        [(TRACE_A, [a1.ctx.id, a2.ctx.id]), (None, [plain.ctx.id]), (TRACE_B, [b.ctx.id])], key=str
    )
    assert setup.runs.counts["completed"] == 1 and setup.runs.counts["failed"] == 1


@pytest.mark.parametrize("status", [404, 405])
def test_an_older_hub_gets_the_traceparent_on_each_per_attempt_report(setup: Setup, status: int) -> None:
    setup.hub.answer = lambda path, body: Response(status, {}) if path == "/tasks/reports" else accept_all(path, body)
    traced = setup.run(lines=1, progress=40, traceparent=TRACE_A)
    setup.run(outcome=complete())
    setup.reporter.flush()
    per_attempt = [
        (path, headers.get("traceparent"))
        for (path, _), headers in zip(setup.hub.requests, setup.hub.headers, strict=True)
        if path != "/tasks/reports"
    ]
    assert (f"/tasks/{traced.ctx.id}/logs", TRACE_A) in per_attempt
    assert (f"/tasks/{traced.ctx.id}/progress", TRACE_A) in per_attempt
    assert (f"/tasks/{traced.ctx.id + 1}/complete", None) in per_attempt


def test_a_claimed_task_without_a_traceparent_reads_none() -> None:
    assert TaskContext({"id": 1, "attempt": 1}).traceparent is None
    assert TaskContext({"id": 1, "attempt": 1, "traceparent": None}).traceparent is None
    assert TaskContext({"id": 1, "attempt": 1, "traceparent": TRACE_A}).traceparent == TRACE_A
