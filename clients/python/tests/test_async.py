"""AsyncClient against the real hub: the same flow as the blocking client, on the same core."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from hub import AsyncTapTransport, Hub, Tap
from taskhub_client import AsyncClient, BatchItem, Conflict, NotFound, ValidationError

pytestmark = [pytest.mark.hub, pytest.mark.anyio]


async def test_submit_get_list_cancel_retry_and_wait(hub: Hub, task_type: str) -> None:
    async with AsyncClient(hub.url, hub.key) as client:
        task = await client.submit("async", task_type, config={"k": "v"}, priority=2)
        assert (await client.get(task.id)) == task and task.config == {"k": "v"}
        more = await client.submit_many([BatchItem(f"a{i}", task_type) for i in range(4)])
        async with aclosing(client.list(task_type=task_type, page_size=2)) as listing:
            ids = [t.id async for t in listing]
        assert ids == sorted([task.id, *(t.id for t in more)], reverse=True)

        cancelled = await client.cancel(more[0].id, reason="async")
        assert cancelled.status == "CANCELLED"
        with pytest.raises(Conflict):
            await client.cancel(more[0].id)

        unit = hub.unit(f"a-{task_type.lower()}", task_type)
        [claimed] = unit.claim()  # the highest priority: `task`
        unit.report(claimed, "fail", error="boom", retryable=False)
        assert (await client.wait(task.id, timeout=30)).status == "FAILED"
        assert (await client.retry(task.id)).status == "PENDING"
        assert [h.to_status for h in await client.history(task.id)] == ["PENDING", "RUNNING", "FAILED", "PENDING"]
        async with aclosing(client.logs(task.id)) as lines:
            assert [line async for line in lines] == []
        assert (await client.stats()).by_type[task_type]["PENDING"] == 4


async def test_wait_polls_while_a_unit_completes_the_task(hub: Hub, task_type: str) -> None:
    async with AsyncClient(hub.url, hub.key) as client:
        task = await client.submit("awaited", task_type)
        waiter = asyncio.create_task(client.wait(task.id, timeout=60))
        unit = hub.unit(f"aw-{task_type.lower()}", task_type)
        [claimed] = await asyncio.to_thread(unit.claim)
        await asyncio.to_thread(unit.report, claimed, "complete", result=[1, 2])
        done = await waiter
        assert (done.status, done.result) == ("COMPLETED", [1, 2])


async def test_a_lost_submit_reply_is_replayed_not_duplicated(hub: Hub, task_type: str) -> None:
    tap = Tap(drop=lambda r: r.method == "POST")

    async def no_sleep(seconds: float) -> None:
        pass

    async with AsyncClient(hub.url, hub.key, transport=AsyncTapTransport(tap), sleep=no_sleep) as client:
        task = await client.submit("once", task_type)
        assert task.replayed
        async with aclosing(client.list(task_type=task_type)) as listing:
            assert [t.id async for t in listing] == [task.id]
    assert len({r.headers["Idempotency-Key"] for r in tap.to("POST", "/tasks")}) == 1


async def test_errors_are_the_same_classes(hub: Hub, task_type: str) -> None:
    async with AsyncClient(hub.url, hub.key) as client:
        with pytest.raises(NotFound):
            await client.get(2**62)
        with pytest.raises(ValidationError) as refused:
            await client.submit("x", task_type, timeout_seconds=0)
        assert list(refused.value.fields) == ["timeoutSeconds"]
