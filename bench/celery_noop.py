"""The baseline for the lifecycle: Celery with the Redis broker running no-op tasks.

Its own app and queue (so no taskhub job is mixed in), on the harness's Redis DB number. The task
does nothing but count itself done (one INCR on the broker's Redis), so the harness can tell when
the last one has run without a result backend.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/3")
QUEUE = "bench-noop"
DONE_KEY = "bench:noop:done"

app = Celery("bench_noop", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
_counter: dict[str, Any] = {}


def use_broker(url: str) -> None:
    """Point this app (publisher side and counter) at `url`."""
    global BROKER
    BROKER = url
    app.conf.update(broker_url=url)
    _counter.pop("client", None)


def _redis() -> redis.Redis:
    client = _counter.get("client")
    if client is None:
        client = _counter["client"] = redis.Redis.from_url(BROKER)
    return client


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    _redis().incr(DONE_KEY)


STAMP_KEY = "bench:noop:dispatch"


@app.task(name="bench.stamp", ignore_result=True)
def stamp(sent: float) -> None:
    """Dispatch latency of Celery (bench.dispatch): apply_async at `sent` -> this task starts."""
    import time

    _redis().rpush(STAMP_KEY, time.time() - sent)
