"""Every error class from a real hub's answer (or its silence), and the retry policy around them:
what is repeated, how long it waits (recorded, not slept), and what is raised at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hub import Hub, free_port
from taskhub_client import (
    AuthenticationError,
    Client,
    Conflict,
    HubUnavailable,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServerError,
    TaskhubError,
    Throttled,
    ValidationError,
)

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def throttled_url(hub: Hub) -> str:
    """A web process on the hub's database allowing a client 2 requests a minute (its counter is
    in its own memory, so no other test's requests count)."""
    return hub.web("throttled", API_THROTTLE_CLIENT="2/min")


@pytest.fixture(scope="module")
def broken_url(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A web process whose database cannot be opened: the hub answers 503 service_unavailable."""
    return hub.web("broken", SQLITE_PATH=str(tmp_path_factory.mktemp("gone") / "no-such-dir" / "hub.sqlite3"))


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def recording(hub: Hub, sleeps: list[float]) -> Iterator[Client]:
    with Client(hub.url, hub.key, retries=2, sleep=sleeps.append, rng=lambda: 1.0) as client:
        yield client


def test_bad_input_is_a_validation_error_naming_each_field(recording: Client, sleeps: list[float]) -> None:
    with pytest.raises(ValidationError) as refused:
        recording.submit("", "bad type!", priority=5000)
    error = refused.value
    assert (error.status_code, error.code) == (400, "validation_error")
    assert set(error.fields) == {"name", "taskType", "priority"}
    assert error.message.startswith(("name:", "taskType:", "priority:"))
    assert sleeps == []  # a 400 is the hub's answer: never repeated


def test_a_batch_item_error_names_its_index(recording: Client, task_type: str) -> None:
    with pytest.raises(ValidationError) as refused:
        recording.submit_many(
            [{"name": "ok", "task_type": task_type}, {"name": "x", "task_type": task_type, "priority": -5000}]
        )
    assert list(refused.value.fields) == ["tasks[1].priority"]
    assert list(recording.list(task_type=task_type)) == []  # all or nothing


def test_an_unknown_key_is_an_authentication_error(hub: Hub) -> None:
    with Client(hub.url, "thk_not-a-key", retries=0) as client, pytest.raises(AuthenticationError) as refused:
        client.get(1)
    assert (refused.value.status_code, refused.value.code) == (401, "unauthorized")


def test_a_read_only_key_may_not_submit(hub: Hub, task_type: str) -> None:
    with Client(hub.url, hub.read_key) as client:
        with pytest.raises(PermissionDenied) as refused:
            client.submit("nope", task_type)
        assert (refused.value.status_code, refused.value.code) == (403, "forbidden")
        assert list(client.list(task_type=task_type)) == []


def test_a_missing_task_is_not_found(recording: Client) -> None:
    with pytest.raises(NotFound) as refused:
        recording.get(2**62)
    assert (refused.value.status_code, refused.value.code) == (404, "not_found")


def test_a_body_over_the_limit_is_payload_too_large(recording: Client, task_type: str, sleeps: list[float]) -> None:
    with pytest.raises(PayloadTooLarge) as refused:
        recording.submit("big", task_type, config={"blob": "x" * 1_100_000})
    assert refused.value.status_code == 413 and refused.value.details["limitBytes"] == 1_048_576
    assert sleeps == []


def test_a_retry_of_a_pending_task_is_a_conflict(recording: Client, task_type: str) -> None:
    task = recording.submit("pending", task_type)
    with pytest.raises(Conflict) as refused:
        recording.retry(task.id)
    assert refused.value.details["currentStatus"] == "PENDING" and refused.value.allowed_targets is None


def test_over_the_rate_is_throttled_after_waiting_out_retry_after_once(throttled_url: str, hub: Hub) -> None:
    sleeps: list[float] = []
    with Client(throttled_url, hub.key, retries=1, sleep=sleeps.append) as client:
        client.stats()
        client.stats()
        with pytest.raises(Throttled) as refused:
            client.stats()
    assert (refused.value.status_code, refused.value.code) == (429, "throttled")
    assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 60
    assert sleeps == [refused.value.retry_after]  # Retry-After honoured, then given up


def test_a_hub_without_its_database_is_a_server_error_after_retries(broken_url: str, hub: Hub) -> None:
    sleeps: list[float] = []
    with Client(broken_url, hub.key, retries=2, sleep=sleeps.append) as client:
        with pytest.raises(ServerError) as refused:
            client.get(1)
        assert (refused.value.status_code, refused.value.code) == (503, "service_unavailable")
        assert sleeps == [5.0, 5.0]  # the hub's Retry-After
        # Its own 503 means it changed nothing: even a cancel, not idempotent, is repeated.
        sleeps.clear()
        with pytest.raises(ServerError):
            client.cancel(1)
        assert sleeps == [5.0, 5.0]


def test_no_hub_is_hub_unavailable_after_backing_off(hub: Hub) -> None:
    sleeps: list[float] = []
    nowhere = f"http://127.0.0.1:{free_port()}"
    client = Client(nowhere, hub.key, retries=3, sleep=sleeps.append, rng=lambda: 0.0)
    with client, pytest.raises(HubUnavailable) as refused:
        client.cancel(1)  # never connected: safe to repeat even a cancel
    assert sleeps == [0.25, 0.5, 1.0]  # equal jitter at its low end: half of 0.5 * 2^n
    assert refused.value.status_code is None and "after 4 attempt(s)" in str(refused.value)
    assert isinstance(refused.value, TaskhubError)
