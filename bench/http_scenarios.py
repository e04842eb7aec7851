"""Scenarios 2-4 over HTTP: the floor (a cheap authenticated read), the heartbeat, the claim.

Each client process acts as execution units with their own bearer tokens, like the real agent.
"""

from __future__ import annotations

import time
from typing import Any

from bench import seed
from bench.load import Http, LoadResult, percentile, run_clients
from bench.stack import Db

AGENT_METADATA = {
    "agent": "taskhub-unit bench",
    "hostname": "bench-host",
    "pid": 4242,
    "python": "3.11.7",
    "handler": "sleep",
    "draining": False,
    "loadAverage": 1.5,
}


def _summary(result: LoadResult, op: str, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    lat = result.latencies(op)
    good = result.count(op, *ok)
    total = result.count(op)
    return {
        "requests": total,
        "ok": good,
        "unexpected": total - good,
        "elapsed": result.elapsed,
        "perSecond": good / result.elapsed if result.elapsed else 0.0,
        "p50ms": percentile(lat, 50) * 1000,
        "p99ms": percentile(lat, 99) * 1000,
        "serverErrors": result.server_errors,
        "lockErrors": result.lock_errors,
        "transportErrors": result.transport_errors,
        "errors": result.errors,
        "loadgenCpuShare": result.cpu_share(),
        "cpu": result.meters,
        # CPU per request is steadier than throughput on a shared machine (MariaDB's figure also
        # holds whatever else the server ran meanwhile).
        "webCpuMsPerRequest": 1000 * result.meters.get("web", 0.0) / good if good else 0.0,
        "dbCpuMsPerRequest": 1000 * result.meters.get("mariadb", 0.0) / good if good else 0.0,
    }


# --- (2) the floor --------------------------------------------------------------------------


def _floor_client(http: Http, index: int, arg: Any, deadline: float) -> dict[str, Any]:
    unit_id, token, limit = arg
    path = f"/execution-units/{unit_id}"
    for _ in range(limit):
        if time.monotonic() >= deadline:
            break
        http.call("floor", "GET", path, token=token)
    return {}


def floor(
    db: Db, port: int, owner_id: int, *, concurrency: int, duration: float, limit: int, meter: Any
) -> dict[str, Any]:
    conn = db.connect(autocommit=False)
    try:
        ids = [f"floor-{concurrency}-{i}" for i in range(concurrency)]
        tokens = seed.insert_units(conn, ids, unit_type="FLOOR", capacity=5, owner_id=owner_id)
    finally:
        conn.close()
    args = [(unit_id, token, limit) for unit_id, token in zip(ids, tokens, strict=True)]
    result = run_clients(_floor_client, args, port=port, duration=duration, meter=meter)
    return {"concurrency": concurrency, **_summary(result, "floor")}


# --- (3) the heartbeat ----------------------------------------------------------------------


def _heartbeat_client(http: Http, index: int, arg: Any, deadline: float) -> dict[str, Any]:
    unit_id, token, task_ids, limit = arg
    path = f"/execution-units/{unit_id}/heartbeat"
    refused = 0
    for n in range(limit):
        if time.monotonic() >= deadline:
            break
        body = {
            "currentLoad": len(task_ids),
            "metadata": AGENT_METADATA,
            "tasks": [{"id": t, "attempt": 1, "progress": n % 100} for t in task_ids],
        }
        status, reply = http.call("heartbeat", "POST", path, body, token=token)
        if status == 200 and (reply.get("failedOver") or reply.get("commands")):
            refused += 1  # a unit that lists its live attempts must never lose them
    return {"lostLeases": refused}


def heartbeat(
    db: Db, port: int, owner_id: int, *, concurrency: int, tasks_per_unit: int, duration: float, limit: int, meter: Any
) -> dict[str, Any]:
    task_type = f"HEARTBEAT_{concurrency}_{tasks_per_unit}"
    ids = [f"hb-{concurrency}-{tasks_per_unit}-{i}" for i in range(concurrency)]
    conn = db.connect(autocommit=False)
    try:
        tokens = seed.insert_units(conn, ids, unit_type=task_type, capacity=50, owner_id=owner_id)
        held: list[list[int]] = [[] for _ in ids]
        if tasks_per_unit:
            new = seed.insert_tasks(
                conn, tasks_per_unit * len(ids), task_type=task_type, owner_id=owner_id, status="RUNNING", units=ids
            )
            for n, task_id in enumerate(new):
                held[n % len(ids)].append(task_id)
    finally:
        conn.close()
    args = [(u, t, h, limit) for u, t, h in zip(ids, tokens, held, strict=True)]
    result = run_clients(_heartbeat_client, args, port=port, duration=duration, meter=meter)
    conn = db.connect(autocommit=False)
    try:
        still_held = seed.scalar(
            conn, "SELECT COUNT(*) FROM tasks WHERE task_type=%s AND status='RUNNING'", (task_type,)
        )
        chains = seed.broken_chains(conn, task_type)
    finally:
        conn.close()
    lost = sum(result.extras("lostLeases")) + (tasks_per_unit * len(ids) - still_held)
    return {
        "concurrency": concurrency,
        "tasksPerUnit": tasks_per_unit,
        **_summary(result, "heartbeat"),
        "lost": lost,
        "brokenChains": chains,
    }


# --- (4) the claim --------------------------------------------------------------------------


def _claim_client(http: Http, index: int, arg: Any, deadline: float) -> dict[str, Any]:
    units, batch, capacity = arg
    claimed: list[int] = []
    current = 0
    held = 0
    while time.monotonic() < deadline and current < len(units):
        unit_id, token = units[current]
        status, reply = http.call("claim", "POST", f"/execution-units/{unit_id}/claim", {"max": batch}, token=token)
        if status != 200:
            continue
        got = [int(t["id"]) for t in reply["items"]]
        claimed.extend(got)
        held += len(got)
        if held + batch > capacity:  # this unit is (nearly) full: the next one claims
            current, held = current + 1, 0
        elif not got:
            break  # the queue is drained
    return {"ids": claimed}


def claim(
    db: Db,
    port: int,
    owner_id: int,
    *,
    concurrency: int,
    batch: int,
    pool: int,
    capacity: int,
    duration: float,
    meter: Any,
) -> dict[str, Any]:
    task_type = f"CLAIM_{concurrency}_{batch}"
    units_per_client = pool // capacity + 2
    conn = db.connect(autocommit=False)
    try:
        seed.insert_tasks(conn, pool, task_type=task_type, owner_id=owner_id)
        args = []
        for c in range(concurrency):
            unit_ids = [f"claim-{concurrency}-{batch}-{c}-{i}" for i in range(units_per_client)]
            tokens = seed.insert_units(conn, unit_ids, unit_type=task_type, capacity=capacity, owner_id=owner_id)
            args.append((list(zip(unit_ids, tokens, strict=True)), batch, capacity))
    finally:
        conn.close()
    result = run_clients(_claim_client, args, port=port, duration=duration, meter=meter)
    ids = result.extras("ids")
    conn = db.connect(autocommit=False)
    try:
        audit = seed.claim_audit(conn, task_type, ids)
        chains = seed.broken_chains(conn, task_type)
    finally:
        conn.close()
    summary = _summary(result, "claim")
    return {
        "concurrency": concurrency,
        "batch": batch,
        "capacity": capacity,
        **summary,
        "tasks": len(ids),
        "tasksPerSecond": len(ids) / result.elapsed if result.elapsed else 0.0,
        "double": audit["double"],
        "lost": audit["lost"],
        "brokenChains": chains,
        "drained": len(ids) >= pool,
    }
