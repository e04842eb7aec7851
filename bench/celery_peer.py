"""The Celery + Redis peer every comparison in the benchmarks runs against, started and measured in
one place: a worker of bench.celery_noop (its own app and queue, prefork, one process per core, its
defaults otherwise) on the run's Redis DB number, and the two measurements taken of it:

- throughput (bench.lifecycle): P producers publish M no-op tasks while the worker drains them;
  the clock runs from the first publish to the last task done;
- dispatch latency (bench.dispatch): tasks published one at a time at random gaps; latency =
  apply_async -> the task starts (bench.celery_noop.stamp).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import redis

from bench.load import Http, run_clients
from bench.stack import NCPU, PYTHON, ROOT, CpuMeter, Stack
from testkit.processes import Process
from testkit.waiting import wait_for

PROCESS = "celery-noop"


@contextlib.contextmanager
def worker(stack: Stack, role: str) -> Iterator[Process]:
    """A started no-op worker (named after `role` in its hostname), stopped afterwards."""
    from bench.celery_noop import QUEUE

    argv = [PYTHON, "-m", "celery", "-A", "bench.celery_noop", "worker", "--loglevel", "WARNING"]
    argv += ["--pool", "prefork", "--concurrency", str(NCPU), "-Q", QUEUE]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    argv += ["--hostname", f"bench-{role}-{os.getpid()}@%h"]
    proc = stack.start(PROCESS, argv, BENCH_CELERY_BROKER=stack.redis_url)
    try:
        yield proc
    finally:
        stack.stop(PROCESS)


def version() -> str:
    return subprocess.run(
        [PYTHON, "-m", "celery", "--version"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()


def _producer(http: Http, index: int, arg: Any, deadline: float) -> dict[str, Any]:
    from bench.celery_noop import noop, use_broker

    broker, count = arg
    use_broker(broker)
    sent = 0
    for _ in range(count):
        if time.monotonic() >= deadline:
            break
        noop.delay()
        sent += 1
    return {"sent": sent}


def _wait_done(client: redis.Redis, key: str, target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(client.get(key) or 0) >= target:
            return time.monotonic()
        time.sleep(0.002)
    raise TimeoutError(f"Celery ran {int(client.get(key) or 0)} of {target} no-op tasks in {timeout:.0f}s")


def throughput(stack: Stack, *, tasks: int, producers: int, meter_groups: dict[str, list[int]]) -> dict[str, Any]:
    """M no-op tasks from P producers, drained by the worker: tasks/s from the first publish to the last done."""
    from bench.celery_noop import DONE_KEY, QUEUE

    broker = stack.redis_url
    client = redis.Redis.from_url(broker)
    client.delete(DONE_KEY, QUEUE)
    try:
        with worker(stack, "noop") as proc:
            # Warm up: the worker is ready once it has run a few.
            warm = run_clients(_producer, [(broker, 20)], port=0, duration=30)
            _wait_done(client, DONE_KEY, sum(warm.extras("sent")), 60)
            client.delete(DONE_KEY)
            per = [tasks // producers + (1 if i < tasks % producers else 0) for i in range(producers)]
            meter = CpuMeter({**meter_groups, "celery": proc.tree()})
            started = time.monotonic()
            result = run_clients(_producer, [(broker, n) for n in per], port=0, duration=120)
            sent = sum(result.extras("sent"))
            finished = _wait_done(client, DONE_KEY, sent, 300)
            meters = meter.stop()
            done = int(client.get(DONE_KEY) or 0)
        elapsed = finished - started
        return {
            "tasks": tasks,
            "producers": producers,
            "workerConcurrency": NCPU,
            "sent": sent,
            "done": done,
            "elapsed": elapsed,
            "tasksPerSecond": done / elapsed if elapsed else 0.0,
            "lost": tasks - done,
            "loadgenCpuShare": result.cpu / (elapsed * NCPU) if elapsed else 0.0,
            "cpu": meters,
            "celeryVersion": version(),
        }
    finally:
        client.delete(DONE_KEY, QUEUE)
        client.close()


def dispatch_latencies(stack: Stack, tasks: int) -> list[float]:
    """`tasks` published one at a time (50-150 ms apart): seconds from apply_async to the task's start, each."""
    from bench.celery_noop import QUEUE, STAMP_KEY, stamp, use_broker

    broker = stack.redis_url
    use_broker(broker)
    client = redis.Redis.from_url(broker)
    client.delete(STAMP_KEY, QUEUE)
    try:
        with worker(stack, "dispatch"):
            for _ in range(10):
                stamp.apply_async((time.time(),))
            wait_for(lambda: client.llen(STAMP_KEY) >= 10, 60, "celery warm-up")
            client.delete(STAMP_KEY)
            for _ in range(tasks):
                stamp.apply_async((time.time(),))
                time.sleep(random.uniform(0.05, 0.15))
            wait_for(lambda: client.llen(STAMP_KEY) >= tasks, 30, "celery tasks")
            return [float(v) for v in client.lrange(STAMP_KEY, 0, -1)]
    finally:
        client.delete(STAMP_KEY, QUEUE)
        client.close()
