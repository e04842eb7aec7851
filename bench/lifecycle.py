"""Scenario 5: the whole life of M tasks over HTTP, against Celery + Redis draining M no-ops.

taskhub, two ways (two rows):
- batch (the row compared with Celery): P producer clients create M tasks in batches of C
  (`POST /tasks/batch`, an API key) while K simulated units claim them (`{max: B}`) and send one
  `POST /tasks/reports` per claim, holding a log line and the completion of each task claimed;
- single: one request per step, as before: `POST /tasks` per task, claim `{max: B}`, then
  `POST /tasks/{id}/logs` and `POST /tasks/{id}/complete` per task.
The units claim as taskhub-unit does (`--claim-wait`): a long-poll claim (`waitSeconds`) that the hub
holds until work arrives; with `claim_wait` 0 they poll (an empty claim, 5 ms, the next).
Celery: the same P producers publish M no-op tasks while a Celery worker (prefork, one process per
core, its defaults otherwise; bench.celery_peer) drains them. Every clock runs from the first request
to the last task done (a unit still holding a long-poll claim when the work is done is not timed).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from bench import celery_peer, seed
from bench.load import Http, percentile, run_clients
from bench.stack import Db, Stack

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
    _, unit_id, token, batch, total, done, batched, claim_wait = arg
    completed: list[int] = []
    refused = 0
    last_done = 0.0
    claim: dict[str, Any] = {"max": batch, "waitSeconds": claim_wait} if claim_wait else {"max": batch}
    while time.monotonic() < deadline and done.value < total:
        status, reply = http.call("claim", "POST", f"/execution-units/{unit_id}/claim", claim, token=token)
        tasks = reply.get("items", []) if status == 200 else []
        if not tasks:
            if not claim_wait or status != 200:
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
            last_done = time.monotonic()
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
                last_done = time.monotonic()
            else:
                refused += 1
    return {"completed": completed, "refused": refused, "lastDoneAt": last_done}


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
    claim_wait: float = 0.0,
) -> dict[str, Any]:
    """`mode` batch: batched creation (`create_batch` a request) and one report batch per claim;
    single: one request per step. `claim_wait`: the units' long-poll `waitSeconds` (0: polling)."""
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
    args += [("unit", u, t, batch, tasks, done, batched, claim_wait) for u, t in zip(ids, tokens, strict=True)]
    result = run_clients(_lifecycle_client, args, port=port, duration=max(60.0, tasks / 5), meter=meter)
    # From the first request to the last task done: a unit's last long-poll claim, still held when
    # the work ran out, ends up to `claim_wait` later and is no part of the work.
    began = min(c.started for c in result.clients)
    last_done = max(result.extras("lastDoneAt"), default=0.0)
    elapsed = last_done - began if last_done > began else result.elapsed
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
        "claimWait": claim_wait,
        "elapsed": elapsed,
        "clientsElapsed": result.elapsed,
        "tasksPerSecond": len(completed) / elapsed if elapsed else 0.0,
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


def celery(stack: Stack, *, tasks: int, producers: int, meter_groups: dict[str, list[int]]) -> dict[str, Any]:
    """The Celery + Redis row: the same P producers publish M no-op tasks (bench.celery_peer)."""
    return celery_peer.throughput(stack, tasks=tasks, producers=producers, meter_groups=meter_groups)
