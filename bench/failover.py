"""Scenario 6: units that go silent while holding tasks; how long until another unit holds each.

The real Celery worker and beat (django-celery-beat's database scheduler, `setup_beat --reset`)
run the sweeper every SWEEP_INTERVAL. Victim units claim every task, send one last heartbeat
listing them (staggered over one sweep interval, so the phase against beat's clock is sampled),
then go silent. Rescuer units heartbeat and poll `claim` every POLL seconds, completing what they
get. Afterwards each victim reports its stale attempts as completed: all must be refused (409).

Latency per task, from the server's own clock: the rescuer's claim history row minus the victim's
last heartbeat (`last_heartbeat_at`), compared with UNIT_HEARTBEAT_TIMEOUT + SWEEP_INTERVAL.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from bench import seed
from bench.load import Http, percentile, run_clients
from bench.stack import Db, Stack

TASK_TYPE = "FAILOVER"
POLL = 0.05


def _client(http: Http, index: int, arg: Any, deadline: float) -> dict[str, Any]:
    role, shared = arg[0], arg[-1]
    phase, rescued, total = shared
    if role == "victims":
        victims, per_victim, stagger = arg[1], arg[2], arg[3]
        held: list[tuple[str, str, int, int]] = []
        for unit_id, token in victims:
            status, reply = http.call("claim", "POST", f"/execution-units/{unit_id}/claim", {"max": per_victim}, token)
            for task in reply.get("items", []) if status == 200 else []:
                held.append((unit_id, token, int(task["id"]), int(task["attempt"])))
        phase.value = 1
        start = time.monotonic()
        for i, (unit_id, token) in enumerate(victims):
            time.sleep(max(0.0, start + i * stagger - time.monotonic()))
            mine = [{"id": t, "attempt": a, "progress": 50} for u, _, t, a in held if u == unit_id]
            body = {"currentLoad": len(mine), "tasks": mine}
            http.call("last-heartbeat", "POST", f"/execution-units/{unit_id}/heartbeat", body, token)
        while rescued.value < total and time.monotonic() < deadline:
            time.sleep(0.05)
        accepted = refused = 0
        for _, token, task_id, attempt in held:  # late results of the lost attempts
            body = {"attempt": attempt, "result": {"late": True}}
            status, reply = http.call("late-complete", "POST", f"/tasks/{task_id}/complete", body, token)
            if status == 200:
                accepted += 1
            elif status in (403, 404, 409):
                refused += 1
        return {"held": len(held), "lateAccepted": accepted, "lateRefused": refused}
    unit_id, token, beat_every = arg[1], arg[2], arg[3]
    done: list[int] = []
    next_beat = 0.0
    while rescued.value < total and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_beat:
            http.call("heartbeat", "POST", f"/execution-units/{unit_id}/heartbeat", {"currentLoad": 0}, token)
            next_beat = now + beat_every
        if phase.value == 1:
            status, reply = http.call("claim", "POST", f"/execution-units/{unit_id}/claim", {"max": 100}, token)
            for task in reply.get("items", []) if status == 200 else []:
                body = {"attempt": int(task["attempt"]), "result": {"rescued": True}}
                status, ack = http.call("complete", "POST", f"/tasks/{task['id']}/complete", body, token)
                if status == 200 and ack.get("accepted"):
                    done.append(int(task["id"]))
                    with rescued.get_lock():
                        rescued.value += 1
        time.sleep(POLL)
    return {"rescued": done}


def run(
    stack: Stack,
    owner_id: int,
    *,
    victims: int,
    per_victim: int,
    rescuers: int,
    timeout: float,
    interval: float,
    heartbeat_every: float,
    meter: Any,
) -> dict[str, Any]:
    db: Db = stack.db
    total = victims * per_victim
    victim_ids = [f"victim-{i}" for i in range(victims)]
    rescuer_ids = [f"rescuer-{i}" for i in range(rescuers)]
    stack.start_celery(beat=True)
    try:
        stack.procs["worker"].wait_for_line(" ready.", 90)
        stack.procs["beat"].wait_for_line("Sending due task taskhub: sweep_heartbeats", 90)
        # Units are made only now: the sweeper is running, and they must not look silent already.
        conn = db.connect(autocommit=False)
        try:
            seed.insert_tasks(conn, total, task_type=TASK_TYPE, owner_id=owner_id)
            victim_tokens = seed.insert_units(
                conn, victim_ids, unit_type=TASK_TYPE, capacity=per_victim, owner_id=owner_id
            )
            rescuer_tokens = seed.insert_units(conn, rescuer_ids, unit_type=TASK_TYPE, capacity=1000, owner_id=owner_id)
        finally:
            conn.close()
        ctx = multiprocessing.get_context("fork")
        shared = (ctx.Value("i", 0), ctx.Value("i", 0), total)
        args: list[Any] = [("victims", list(zip(victim_ids, victim_tokens, strict=True)), per_victim)]
        args[0] += (interval / victims, shared)
        args += [("rescuer", u, t, heartbeat_every, shared) for u, t in zip(rescuer_ids, rescuer_tokens, strict=True)]
        result = run_clients(_client, args, port=stack.web_port, duration=timeout + interval + 60, meter=meter)
    finally:
        stack.stop("beat")
        stack.stop("worker")
    conn = db.connect(autocommit=False)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT t.id, t.status, u.last_heartbeat_at, "
            "(SELECT MIN(f.created_at) FROM task_status_history f WHERE f.task_id=t.id AND f.from_status='RUNNING' "
            " AND f.to_status='PENDING' AND f.attempt=1), "
            "(SELECT MIN(r.created_at) FROM task_status_history r WHERE r.task_id=t.id AND r.to_status='RUNNING' "
            " AND r.attempt=2) "
            "FROM tasks t JOIN task_status_history c ON c.task_id=t.id AND c.to_status='RUNNING' AND c.attempt=1 "
            "JOIN execution_units u ON u.id=c.unit_id WHERE t.task_type=%s",
            (TASK_TYPE,),
        )
        rows = cur.fetchall()
        completed = seed.scalar(
            conn, "SELECT COUNT(*) FROM tasks WHERE task_type=%s AND status='COMPLETED' AND attempt=2", (TASK_TYPE,)
        )
        completions = seed.scalar(
            conn,
            "SELECT COUNT(*) FROM task_status_history h JOIN tasks t ON t.id=h.task_id WHERE t.task_type=%s "
            "AND h.to_status='COMPLETED'",
            (TASK_TYPE,),
        )
        chains = seed.broken_chains(conn, TASK_TYPE)
    finally:
        conn.close()
    latencies, detect, pickup = [], [], []
    for _, _, silent_from, failed_over, reclaimed in rows:
        if reclaimed is None or failed_over is None:
            continue
        latencies.append((reclaimed - silent_from).total_seconds())
        detect.append((failed_over - silent_from).total_seconds())
        pickup.append((reclaimed - failed_over).total_seconds())
    victims_out = result.clients[0].extra
    rescued = result.extras("rescued")
    bound = timeout + interval
    return {
        "tasks": total,
        "victims": victims,
        "rescuers": rescuers,
        "heartbeatTimeout": timeout,
        "sweepInterval": interval,
        "bound": bound,
        "p50s": percentile(latencies, 50),
        "p99s": percentile(latencies, 99),
        "maxs": max(latencies, default=0.0),
        "minS": min(latencies, default=0.0),
        "detectP99s": percentile(detect, 99),
        "pickupP99s": percentile(pickup, 99),
        "reclaimed": len(latencies),
        "lost": total - completed + (total - len(rows)),
        "double": int(victims_out.get("lateAccepted", 0))
        + (completions - completed)
        + (len(rescued) - len(set(rescued))),
        "lateRefused": int(victims_out.get("lateRefused", 0)),
        "heldByVictims": int(victims_out.get("held", 0)),
        "brokenChains": chains,
        "serverErrors": result.server_errors,
        "lockErrors": result.lock_errors,
        "transportErrors": result.transport_errors,
        "errors": result.errors,
        "loadgenCpuShare": result.cpu_share(),
        "cpu": result.meters,
    }
