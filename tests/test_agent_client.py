"""The unit agent's HTTP client: which failures it retries, how long it backs off, when it gives up."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests

from taskhub_unit.client import (
    ApiError,
    Backoff,
    HubClient,
    HubUnavailable,
    is_transient_status,
    retry_after_seconds,
)


class Response:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.content = b"" if body is None else json.dumps(body).encode()
        self.text = self.content.decode()
        self.reason = "reason"
        self.headers = headers or {}

    def json(self) -> Any:
        return json.loads(self.content)


class ScriptedSession:
    """Answers each request with the next scripted item (a Response, or an exception to raise)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        self.calls.append({"method": method, "url": url, **kwargs})
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]


class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are remembered."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return self.is_set()


def make_client(script: list[Any], **kwargs: Any) -> tuple[HubClient, ScriptedSession, RecordingStop]:
    session = ScriptedSession(script)
    stop = RecordingStop()
    client = HubClient(
        "http://hub.test/",
        stop=stop,
        session_factory=lambda: session,
        backoff=kwargs.pop("backoff", Backoff(base=1.0, cap=8.0)),
        rng=kwargs.pop("rng", lambda: 1.0),
        **kwargs,
    )
    return client, session, stop


# --- back-off ------------------------------------------------------------------------------------


def test_backoff_doubles_from_base_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    assert [backoff.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_jitter_stays_between_half_and_all_of_the_ceiling() -> None:
    backoff = Backoff(base=1.0, cap=30.0)
    for attempt in range(8):
        ceiling = backoff.ceiling(attempt)
        assert backoff.delay(attempt, rng=lambda: 0.0) == pytest.approx(ceiling / 2)
        assert backoff.delay(attempt, rng=lambda: 1.0) == pytest.approx(ceiling)
        assert ceiling / 2 <= backoff.delay(attempt) <= ceiling


def test_backoff_jitter_spreads_units_apart() -> None:
    delays = {round(Backoff(base=1.0, cap=30.0).delay(3), 6) for _ in range(50)}
    assert len(delays) > 10


def test_backoff_never_overflows_on_a_long_outage() -> None:
    assert Backoff(base=0.25, cap=10.0).delay(10_000, rng=lambda: 1.0) == 10.0


def test_backoff_capped_lowers_cap_and_base() -> None:
    capped = Backoff(base=2.0, cap=30.0).capped(0.5)
    assert (capped.base, capped.cap) == (0.5, 0.5)


# --- what is transient ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_transient(status: int) -> None:
    assert is_transient_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413])
def test_client_errors_are_the_hubs_answer(status: int) -> None:
    assert not is_transient_status(status)


def test_retry_after_is_read_in_seconds() -> None:
    assert retry_after_seconds({"Retry-After": "5"}) == 5.0
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_seconds({}) is None


# --- the retry loop ------------------------------------------------------------------------------


def test_connection_errors_are_retried_with_growing_waits_until_success() -> None:
    client, session, stop = make_client(
        [
            requests.ConnectionError("refused"),
            requests.Timeout("slow"),
            requests.ConnectionError("x"),
            Response(200, {}),
        ]
    )
    assert client.post("/execution-units/w1/heartbeat", {}) == {}
    assert len(session.calls) == 4
    assert stop.waits == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_throttled_or_failing_hub_is_retried(status: int) -> None:
    client, session, _ = make_client([Response(status, {"code": "x"}), Response(201, {"ok": True})])
    assert client.post("/tasks/1/complete", {"attempt": 1}) == {"ok": True}
    assert len(session.calls) == 2


def test_retry_after_from_the_hub_stretches_the_wait_up_to_the_cap() -> None:
    client, _, stop = make_client(
        [Response(429, headers={"Retry-After": "3"}), Response(503, headers={"Retry-After": "60"}), Response(200)]
    )
    client.post("/x")
    assert stop.waits == [3.0, 8.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_client_errors_are_not_retried_and_carry_the_error_body(status: int) -> None:
    body = {"statusCode": status, "code": "stale_attempt", "message": "abort it", "details": {"command": "abort"}}
    client, session, _ = make_client([Response(status, body)])
    with pytest.raises(ApiError) as caught:
        client.post("/tasks/7/complete", {"attempt": 1})
    assert len(session.calls) == 1
    assert (caught.value.status, caught.value.code, caught.value.message) == (status, "stale_attempt", "abort it")
    assert caught.value.stale_attempt is (status == 409)


def test_a_conflict_that_is_not_about_the_attempt_is_not_stale() -> None:
    client, _, _ = make_client([Response(409, {"statusCode": 409, "code": "conflict", "message": "log cap"})])
    with pytest.raises(ApiError) as caught:
        client.post("/tasks/7/logs", {})
    assert not caught.value.stale_attempt


def test_non_json_error_body_still_raises_api_error() -> None:
    response = Response(400)
    response.content, response.text = b"<html>bad</html>", "<html>bad</html>"
    client, _, _ = make_client([response])
    with pytest.raises(ApiError) as caught:
        client.post("/x")
    assert caught.value.status == 400


def test_gives_up_after_max_attempts() -> None:
    client, session, _ = make_client([requests.ConnectionError(), requests.ConnectionError(), Response(200)])
    with pytest.raises(HubUnavailable, match="after 2 attempt"):
        client.post("/x", max_attempts=2)
    assert len(session.calls) == 2


def test_a_single_try_call_does_not_wait() -> None:
    client, _, stop = make_client([Response(503)])
    with pytest.raises(HubUnavailable):
        client.post("/x", max_attempts=1)
    assert stop.waits == []


def test_gives_up_when_the_next_wait_would_pass_the_deadline() -> None:
    client, session, stop = make_client([requests.ConnectionError()] * 5 + [Response(200)])
    with pytest.raises(HubUnavailable):
        client.post("/x", deadline=time.monotonic() + 3.5)
    assert stop.waits == [1.0, 2.0]  # a third wait (4s) would pass the deadline
    assert len(session.calls) == 3


def test_a_stop_signal_ends_retrying() -> None:
    client, session, stop = make_client([requests.ConnectionError(), Response(200)])
    stop.set()
    with pytest.raises(HubUnavailable):
        client.post("/x")
    assert len(session.calls) == 1


def test_sends_bearer_token_and_json_to_the_api_base() -> None:
    client, session, _ = make_client([Response(200, {"a": 1})])
    client.token = "thu_secret"
    client.post("/execution-units/w1/claim", {"max": 2})
    call = session.calls[0]
    assert call["url"] == "http://hub.test/api/v1/execution-units/w1/claim"
    assert call["headers"]["Authorization"] == "Bearer thu_secret"
    assert call["json"] == {"max": 2}
    assert call["timeout"] == client.timeout


def test_server_url_may_include_the_api_prefix() -> None:
    assert HubClient("http://hub.test:8000/api/v1/").base_url == "http://hub.test:8000/api/v1"


def test_secrets_never_appear_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    client, _, _ = make_client(
        [requests.ConnectionError("boom"), Response(503), Response(401, {"code": "unauthorized", "message": "no"})]
    )
    with caplog.at_level("DEBUG"), pytest.raises(ApiError) as caught:
        client.post("/execution-units/register", {}, token="thk_enroll_secret")
    assert "thk_enroll_secret" not in str(caught.value)
    assert "thk_enroll_secret" not in caplog.text


def test_a_success_status_with_a_body_that_is_not_json_is_retried() -> None:
    page = Response(200)
    page.content, page.text = b"<html>captive portal</html>", "<html>captive portal</html>"
    client, session, _ = make_client([page, Response(200, {"ok": 1})])
    assert client.post("/x") == {"ok": 1}
    assert len(session.calls) == 2
