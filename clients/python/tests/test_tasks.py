"""The producer's flow against a real hub: submit, get, list, cancel, retry, history, logs, stats,
and idempotent submits whose reply was lost on the way back."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from hub import Hub, Tap, TapTransport
from taskhub_client import BatchItem, Client, Conflict, HubUnavailable, Task

pytestmark = pytest.mark.hub


def test_submit_then_get_returns_the_task_typed(client: Client, task_type: str) -> None:
    when = datetime.now(UTC) + timedelta(hours=1)
    task = client.submit(
        "resize", task_type, config={"inputFile": "a.png"}, priority=7, max_retries=2, timeout_seconds=60,
        scheduled_at=when,
    )  # fmt: skip
    assert (task.name, task.task_type, task.status, task.priority) == ("resize", task_type, "PENDING", 7)
    assert (task.max_retries, task.timeout_seconds, task.config) == (2, 60, {"inputFile": "a.png"})
    assert task.scheduled_at == when and task.created_at is not None and task.created_at.tzinfo is not None
    assert task.replayed is False
    got = client.get(task.id)
    assert got == task and not got.done


def test_list_walks_every_page_in_cursor_mode(hub: Hub, client: Client, task_type: str) -> None:
    tap = Tap()
    created = client.submit_many([BatchItem(f"n{i}", task_type) for i in range(25)])
    with Client(hub.url, hub.key, transport=TapTransport(tap)) as watched:
        listed = list(watched.list(task_type=task_type, page_size=10))
    assert [t.id for t in listed] == sorted((t.id for t in created), reverse=True)
    pages = tap.to("GET", "/tasks")
    assert len(pages) == 3 and all("cursor" in r.url.params for r in pages)


def test_list_in_another_ordering_walks_pages(client: Client, task_type: str) -> None:
    client.submit_many([BatchItem(f"p{i}", task_type, priority=i % 3) for i in range(7)])
    listed = list(client.list(task_type=task_type, ordering="-priority", page_size=3))
    assert len(listed) == 7 and [t.priority for t in listed] == sorted((t.priority for t in listed), reverse=True)
    assert list(client.list(task_type=task_type, status="RUNNING")) == []


def test_an_early_break_leaves_the_rest_unfetched(hub: Hub, task_type: str) -> None:
    tap = Tap()
    with Client(hub.url, hub.key, transport=TapTransport(tap)) as client:
        client.submit_many([BatchItem(f"b{i}", task_type) for i in range(5)])
        assert len(list(itertools.islice(client.list(task_type=task_type, page_size=2), 3))) == 3
    assert len(tap.to("GET", "/tasks")) == 2


def test_cancel_then_cancel_again_is_a_conflict_naming_no_targets(client: Client, task_type: str) -> None:
    task = client.submit("c", task_type)
    cancelled = client.cancel(task.id, reason="not needed")
    assert cancelled.status == "CANCELLED" and cancelled.done
    with pytest.raises(Conflict) as refused:
        client.cancel(task.id)
    assert refused.value.status_code == 409 and refused.value.allowed_targets == ()
    assert refused.value.current_status == "CANCELLED"
    history = client.history(task.id)
    assert [(h.from_status, h.to_status) for h in history] == [(None, "PENDING"), ("PENDING", "CANCELLED")]
    assert history[-1].reason == "not needed" and history[-1].created_at is not None


def test_retry_of_a_failed_task_puts_it_back_to_pending(hub: Hub, client: Client, task_type: str) -> None:
    task = client.submit("f", task_type)
    unit = hub.unit(f"unit-{task_type.lower()}", task_type)
    [claimed] = unit.claim()
    unit.http.post(f"/tasks/{task.id}/logs", json={"attempt": claimed["attempt"], "message": "about to fail"})
    unit.report(claimed, "fail", error="disk full", retryable=False)
    failed = client.get(task.id)
    assert (failed.status, failed.error, failed.done, failed.waiting_for_retry) == ("FAILED", "disk full", True, False)
    retried = client.retry(task.id)
    assert retried.status == "PENDING" and not retried.done
    assert [h.to_status for h in client.history(task.id)] == ["PENDING", "RUNNING", "FAILED", "PENDING"]
    [line] = list(client.logs(task.id))
    assert (line.message, line.attempt, line.task_id, line.unit_id) == ("about to fail", 1, task.id, unit.unit_id)
    assert list(client.logs(task.id, after=line.id)) == []
    stats = client.stats()
    assert stats.by_type[task_type] == {"PENDING": 1} and stats.total >= 1


def test_a_submit_whose_reply_was_lost_is_retried_without_a_second_task(hub: Hub, task_type: str) -> None:
    tap = Tap(drop=lambda r: r.method == "POST" and r.url.path.endswith("/tasks"))
    with Client(hub.url, hub.key, transport=TapTransport(tap), sleep=lambda s: None) as client:
        task = client.submit("once", task_type, config={"n": 1})
        assert task.replayed is True  # the second answer is the hub's replay of the first
        sent = tap.to("POST", "/tasks")
        assert len(sent) == 2 and len({r.headers["Idempotency-Key"] for r in sent}) == 1
        assert [t.id for t in client.list(task_type=task_type)] == [task.id]
        # Each call gets its own key: a second submit is a second task.
        assert client.submit("once", task_type, config={"n": 1}).id != task.id


def test_a_batch_whose_reply_was_lost_is_retried_without_second_tasks(hub: Hub, task_type: str) -> None:
    tap = Tap(drop=lambda r: r.url.path.endswith("/tasks/batch"))
    with Client(hub.url, hub.key, transport=TapTransport(tap), sleep=lambda s: None) as client:
        tasks = client.submit_many([BatchItem("a", task_type), {"name": "b", "task_type": task_type, "priority": 3}])
        assert [(t.name, t.priority, t.replayed) for t in tasks] == [("a", 0, True), ("b", 3, True)]
        assert len(tap.to("POST", "/tasks/batch")) == 2
        assert sorted(t.id for t in client.list(task_type=task_type)) == sorted(t.id for t in tasks)
        assert client.submit_many([]) == []


def test_an_explicit_idempotency_key_returns_the_first_task(client: Client, task_type: str) -> None:
    first = client.submit("k", task_type, idempotency_key=f"key-{task_type}")
    again = client.submit("k", task_type, idempotency_key=f"key-{task_type}")
    assert (again.id, first.replayed, again.replayed) == (first.id, False, True)
    with pytest.raises(Conflict, match="different request body"):
        client.submit("k", task_type, priority=1, idempotency_key=f"key-{task_type}")


def test_a_cancel_whose_reply_was_lost_is_not_sent_again(hub: Hub, client: Client, task_type: str) -> None:
    # PUT status is not idempotent: a second cancel of a cancelled task is a 409, so after an
    # ambiguous failure the SDK raises rather than repeating it.
    task = client.submit("lost cancel", task_type)
    tap = Tap(drop=lambda r: r.method == "PUT")
    lossy = Client(hub.url, hub.key, transport=TapTransport(tap), sleep=lambda s: None)
    with lossy, pytest.raises(HubUnavailable, match="may have acted"):
        lossy.cancel(task.id)
    assert len(tap.to("PUT", "/status")) == 1
    assert client.get(task.id).status == "CANCELLED"


def test_a_naive_datetime_is_refused_before_anything_is_sent(client: Client, task_type: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        client.submit("naive", task_type, scheduled_at=datetime(2030, 1, 1))


def test_fields_a_newer_hub_adds_are_ignored() -> None:
    from taskhub_client.models import decode

    body = {"id": 1, "name": "n", "taskType": "T", "status": "PENDING", "shinyNewField": {"x": 1}}
    assert decode(Task, body) == Task(id=1, name="n", task_type="T", status="PENDING")


def test_url_may_name_the_api_prefix(hub: Hub) -> None:
    with Client(f"{hub.url}/api/v1/", hub.key) as client:
        assert client.stats().total >= 0
