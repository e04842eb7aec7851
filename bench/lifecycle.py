"""Scenario 5: the whole life of M tasks over HTTP, against Celery + Redis draining M no-ops.

taskhub, two ways (two rows):
- batch (the row compared with Celery): P producer clients create M tasks in batches of C
  (`POST /tasks/batch`, an API key) while K simulated units claim them (`{max: B}`) and send one
  `POST /tasks/reports` per claim, holding a log line and the completion of each task claimed;
- single: one request per step, as before: `POST /tasks` per task, claim `{max: B}`, then
  `POST /tasks/{id}/logs` and `POST /tasks/{id}/complete` per task.
Celery: the same P producers publish M no-op tasks while a Celery worker (prefork, one process per
core, its defaults otherwise) drains them. Every clock runs from the first request to the last task
done.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from typing import Any

import redis

from bench import seed
from bench.load import Http, percentile, run_clients
from bench.stack import PYTHON, ROOT, Db, Stack

TASK_TYPE = "LIFECYCLE"
MODES = ("batch", "single")


def _new_task(index: int, n: int) -> dict[str, Any]:
    return {
        "name": f"lifecycle {index}-{n}",
        "taskType": TASK_TYPE,
        "priority": n % 5,
        "config": {"inputFile": "data.csv", "outputFormat": "json"},
    }


def _lifecycle_client(http: Http, index: int, arg: Any, deadline: float) -> dict[str, Any]:
    role = arg[0]
    if role == "producer":
        _, key, count, create_batch = arg
        created: list[int] = []
        if create_batch:  # POST /tasks/batch, `create_batch` tasks a request
            for start in range(0, count, create_batch):
                if time.monotonic() >= deadline:
                    break
                chunk = {"tasks": [_new_task(index, n) for n in range(start, min(start + create_batch, count))]}
                status, reply = http.call("create", "POST", "/tasks/batch", chunk, token=key)
                if status == 201:
                    created += [int(item["id"]) for item in reply["items"]]
            return {"created": created}
        for n in range(count):
            if time.monotonic() >= deadline:
                break
            status, reply = http.call("create", "POST", "/tasks", _new_task(index, n), token=key)
            if status == 201:
                created.append(int(reply["id"]))
        return {"created": created}
    _, unit_id, token, batch, total, done, batched = arg
    completed: list[int] = []
    refused = 0
    while time.monotonic() < deadline and done.value < total:
        status, reply = http.call("claim", "POST", f"/execution-units/{unit_id}/claim", {"max": batch}, token=token)
        tasks = reply.get("items", []) if status == 200 else []
        if not tasks:
            time.sleep(0.005)
            continue
        if batched:  # one POST /tasks/reports per claim: a log line and the completion of each task
            reports = [
                {
                    "taskId": int(task["id"]),
                    "attempt": int(task["attempt"]),
                    "outcome": "complete",
                    "result": {"ok": True},
                    "logs": [{"level": "INFO", "message": f"processing {task['id']}"}],
                }
                for task in tasks
            ]
            status, reply = http.call("report", "POST", "/tasks/reports", {"reports": reports}, token=token)
            items = reply.get("items", []) if status == 200 else []
            accepted = [int(item["taskId"]) for item in items if item.get("accepted")]
            completed += accepted
            refused += len(tasks) - len(accepted)
            with done.get_lock():
                done.value += len(accepted)
            continue
        for task in tasks:
            task_id, attempt = int(task["id"]), int(task["attempt"])
            body = {"attempt": attempt, "entries": [{"level": "INFO", "message": f"processing {task_id}"}]}
            http.call("log", "POST", f"/tasks/{task_id}/logs", body, token=token)
            status, reply = http.call(
                "complete", "POST", f"/tasks/{task_id}/complete", {"attempt": attempt, "result": {"ok": True}}, token
            )
            if status == 200 and reply.get("accepted"):
                completed.append(task_id)
                with done.get_lock():
                    done.value += 1
            else:
                refused += 1
    return {"completed": completed, "refused": refused}


def taskhub(
    db: Db,
    port: int,
    key: str,
    owner_id: int,
    *,
    tasks: int,
    units: int,
    producers: int,
    batch: int,
    meter: Any,
    mode: str = "batch",
    create_batch: int = 100,
) -> dict[str, Any]:
    """`mode` batch: batched creation (`create_batch` a request) and one report batch per claim;
    single: one request per step."""
    assert mode in MODES
    batched = mode == "batch"
    ctx = multiprocessing.get_context("fork")
    done = ctx.Value("i", 0)
    ids = [f"life-{mode}-{i}" for i in range(units)]
    conn = db.connect(autocommit=False)
    try:
        tokens = seed.insert_units(conn, ids, unit_type=TASK_TYPE, capacity=max(batch, 25), owner_id=owner_id)
    finally:
        conn.close()
    per = [tasks // producers + (1 if i < tasks % producers else 0) for i in range(producers)]
    args: list[Any] = [("producer", key, n, create_batch if batched else 0) for n in per]
    args += [("unit", u, t, batch, tasks, done, batched) for u, t in zip(ids, tokens, strict=True)]
    result = run_clients(_lifecycle_client, args, port=port, duration=max(60.0, tasks / 5), meter=meter)
    created = result.extras("created")
    completed = result.extras("completed")
    conn = db.connect(autocommit=False)
    try:
        q = "SELECT COUNT(*) FROM tasks WHERE task_type=%s"
        in_db = seed.scalar(conn, q, (TASK_TYPE,))
        finished = seed.scalar(conn, q + " AND status='COMPLETED' AND attempt=1", (TASK_TYPE,))
        logs = seed.scalar(
            conn,
            "SELECT COUNT(*) FROM task_execution_logs l JOIN tasks t ON t.id=l.task_id WHERE t.task_type=%s",
            (TASK_TYPE,),
        )
        # Tasks that entered RUNNING or COMPLETED more than once (claimed twice, finished twice).
        repeated = seed.scalar(
            conn,
            "SELECT COUNT(*) FROM (SELECT h.task_id FROM task_status_history h JOIN tasks t ON t.id=h.task_id "
            "WHERE t.task_type=%s AND h.to_status IN ('RUNNING', 'COMPLETED') GROUP BY h.task_id, h.to_status "
            "HAVING COUNT(*) > 1) x",
            (TASK_TYPE,),
        )
        chains = seed.broken_chains(conn, TASK_TYPE)
    finally:
        conn.close()
    requests = sum(result.count(op) for op in ("create", "claim", "log", "complete", "report"))
    ok = result.count("create", 201) + result.count("claim", 200) + result.count("log", 201)
    ok += result.count("complete", 200) + result.count("report", 200)
    return {
        "mode": mode,
        "tasks": tasks,
        "units": units,
        "producers": producers,
        "batch": batch,
        "createBatch": create_batch if batched else 1,
        "elapsed": result.elapsed,
        "tasksPerSecond": len(completed) / result.elapsed if result.elapsed else 0.0,
        "requests": requests,
        "requestsPerSecond": requests / result.elapsed if result.elapsed else 0.0,
        "unexpected": requests - ok,
        "createP99ms": percentile(result.latencies("create"), 99) * 1000,
        "completeP99ms": percentile(result.latencies("report" if batched else "complete"), 99) * 1000,
        "double": (len(completed) - len(set(completed))) + repeated,
        "lost": (tasks - finished) + (len(created) - in_db) + (tasks - len(created)),
        "logsStored": logs,
        "brokenChains": chains,
        "refusedReports": sum(result.extras("refused")),
        "serverErrors": result.server_errors,
        "lockErrors": result.lock_errors,
        "transportErrors": result.transport_errors,
        "errors": result.errors,
        "loadgenCpuShare": result.cpu_share(),
        "cpu": result.meters,
    }


def _celery_producer(http: Http, index: int, arg: Any, deadline: float) -> dict[str, Any]:
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


def celery(stack: Stack, *, tasks: int, producers: int, meter_groups: dict[str, list[int]]) -> dict[str, Any]:
    from bench.celery_noop import DONE_KEY, QUEUE
    from bench.stack import CpuMeter

    broker = stack.redis_url
    client = redis.Redis.from_url(broker)
    client.delete(DONE_KEY, QUEUE)
    worker = stack.start(
        "celery-noop",
        [
            *(
                PYTHON,
                "-m",
                "celery",
                "-A",
                "bench.celery_noop",
                "worker",
                "--loglevel",
                "WARNING",
                "--pool",
                "prefork",
            ),
            *("--concurrency", str(os.cpu_count() or 1), "-Q", QUEUE, "--without-gossip", "--without-mingle"),
            *("--without-heartbeat", "--hostname", f"bench-noop-{os.getpid()}@%h"),
        ],
        BENCH_CELERY_BROKER=broker,
    )
    try:
        # Warm up: the worker is ready once it has run a few.
        warm = run_clients(_celery_producer, [(broker, 20)], port=0, duration=30)
        _wait_done(client, DONE_KEY, sum(warm.extras("sent")), 60)
        client.delete(DONE_KEY)
        per = [tasks // producers + (1 if i < tasks % producers else 0) for i in range(producers)]
        meter = CpuMeter({**meter_groups, "celery": worker.tree()})
        started = time.monotonic()
        result = run_clients(_celery_producer, [(broker, n) for n in per], port=0, duration=120)
        sent = sum(result.extras("sent"))
        finished = _wait_done(client, DONE_KEY, sent, 300)
        meters = meter.stop()
        done = int(client.get(DONE_KEY) or 0)
        elapsed = finished - started
        return {
            "tasks": tasks,
            "producers": producers,
            "workerConcurrency": os.cpu_count() or 1,
            "sent": sent,
            "done": done,
            "elapsed": elapsed,
            "tasksPerSecond": done / elapsed if elapsed else 0.0,
            "lost": tasks - done,
            "loadgenCpuShare": result.cpu / (elapsed * (os.cpu_count() or 1)) if elapsed else 0.0,
            "cpu": meters,
            "celeryVersion": subprocess.run(
                [PYTHON, "-m", "celery", "--version"], capture_output=True, text=True, cwd=ROOT
            ).stdout.strip(),
        }
    finally:
        stack.stop("celery-noop")
        client.delete(DONE_KEY, QUEUE)
        client.close()
