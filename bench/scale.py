"""Scenario 7 (`make bench-scale`): lists at 1,000,000 tasks, the sweeper at 10,000 units and
100,000 RUNNING tasks with 1,000 units dead, and memory (a gunicorn worker, a unit agent)."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from typing import Any

from bench import seed
from bench.load import Http, percentile, run_clients
from bench.stack import PYTHON, Stack, memory_kb

LIST_STATUSES = ("PENDING", *["COMPLETED"] * 6, "FAILED", "CANCELLED", "PAUSED")
LIST_TYPES = ("SCALE_0", "SCALE_1", "SCALE_2", "SCALE_3", "SCALE_4")
COPY_COLUMNS = (
    "name, task_type, priority, config, status, attempt, max_retries, retry_count, failover_count, "
    "available_at, progress, error, pending_command, request_fingerprint, created_at, updated_at, owner_id"
)


def seed_tasks(stack: Stack, owner_id: int, total: int) -> float:
    """`total` tasks owned by the bench key: 10,000 rows from Python, then doubled server-side."""
    started = time.monotonic()
    conn = stack.db.connect(autocommit=False)
    try:
        base = min(total, 10_000)
        seed.insert_tasks(
            conn, base, task_type="SCALE_0", owner_id=owner_id, history=False, statuses=LIST_STATUSES, types=LIST_TYPES
        )
        cur = conn.cursor()
        have = base
        while have < total:
            take = min(have, total - have, 200_000)
            shifted = COPY_COLUMNS.replace("created_at", f"created_at + INTERVAL {have} SECOND")
            cur.execute(f"INSERT INTO tasks ({COPY_COLUMNS}) SELECT {shifted} FROM tasks ORDER BY id LIMIT {take}")
            conn.commit()
            have += take
        cur.execute("ANALYZE TABLE tasks")
        cur.fetchall()
    finally:
        conn.close()
    return time.monotonic() - started


def _list_client(http: Http, index: int, arg: Any, deadline: float) -> dict[str, Any]:
    key, queries = arg
    for name, query, repeat in queries:
        for _ in range(min(3, repeat)):  # warm-up, not recorded
            http.call("warmup", "GET", f"/tasks?{query}", token=key)
        for _ in range(repeat):
            if time.monotonic() >= deadline:
                break
            http.call(name, "GET", f"/tasks?{query}", token=key)
    return {}


def lists(stack: Stack, key: str, *, repeat: int, meter: Any) -> list[dict[str, Any]]:
    conn = stack.db.connect()
    try:
        some_id = seed.scalar(conn, "SELECT MAX(id) DIV 2 FROM tasks")
    finally:
        conn.close()
    few = max(1, repeat // 10)  # full scans: a few samples say enough
    queries = [
        ("page 1", "page=1&limit=10", repeat),
        ("page 1, status=PENDING", "page=1&limit=10&status=PENDING", repeat),
        ("page 1, status=FAILED & taskType", "page=1&limit=10&status=FAILED&taskType=SCALE_3", repeat),
        ("page 100, status=COMPLETED", "page=100&limit=10&status=COMPLETED", repeat),
        ("page 1, status=PENDING, -priority", "page=1&limit=10&status=PENDING&ordering=-priority", repeat),
        ("cursor, first page", "cursor=&limit=10", repeat),
        ("cursor, status=PENDING", "cursor=&limit=10&status=PENDING", repeat),
        ("search by id", f"page=1&limit=10&search={some_id}", repeat),
        ("page 1, -priority", "page=1&limit=10&ordering=-priority", repeat),
        ("page 100", "page=100&limit=10", repeat),
        ("search by name (newest 5,000)", "page=1&limit=10&search=task%2012", repeat),
        ("page 1, -updatedAt (a sort)", "page=1&limit=10&ordering=-updatedAt", few),
    ]
    result = run_clients(_list_client, [(key, queries)], port=stack.web_port, duration=900, meter=meter)
    out = []
    for name, query, _ in queries:
        lat = result.latencies(name)
        out.append(
            {
                "query": name,
                "url": f"/api/v1/tasks?{query}",
                "requests": result.count(name),
                "ok": result.count(name, 200),
                "unexpected": result.count(name) - result.count(name, 200),
                "p50ms": percentile(lat, 50) * 1000,
                "p99ms": percentile(lat, 99) * 1000,
            }
        )
    out[0] |= {"serverErrors": result.server_errors, "transportErrors": result.transport_errors}
    operator = [
        ("operator: page 1", "page=1&limit=10", repeat),
        ("operator: page 1, status=PENDING", "page=1&limit=10&status=PENDING", repeat),
        ("operator: cursor, status=PENDING", "cursor=&limit=10&status=PENDING", repeat),
        (
            "operator: page 1, status=PENDING, -priority (a sort)",
            "page=1&limit=10&status=PENDING&ordering=-priority",
            few,
        ),
    ]
    os.environ["BENCH_LIST_PROBE"] = json.dumps(operator)
    try:
        probed = stack.probe("bench.list_probe")
    finally:
        del os.environ["BENCH_LIST_PROBE"]
    return out + [row | {"inProcess": True} for row in probed]


def heartbeat_history(stack: Stack, owner_id: int, *, finished: int, repeat: int) -> dict[str, Any]:
    """Heartbeat latency of a unit that has finished `finished` tasks, against a fresh unit; both
    hold 5 running tasks and list them. Sequential requests (c=1), so latency is the unit's own."""
    from bench.http_scenarios import _heartbeat_client

    conn = stack.db.connect(autocommit=False)
    try:
        out: dict[str, Any] = {"finished": finished}
        for unit_id, done in (("rookie", 0), ("veteran", finished)):
            (token,) = seed.insert_units(conn, [unit_id], unit_type="HISTORY", capacity=50, owner_id=owner_id)
            if done:
                finished_ids = seed.insert_tasks(
                    conn, done, task_type="HISTORY", owner_id=owner_id, history=False, status="COMPLETED"
                )
                conn.cursor().execute(
                    "UPDATE tasks SET unit_id=%s WHERE id BETWEEN %s AND %s",
                    (unit_id, finished_ids[0], finished_ids[-1]),
                )
                conn.commit()
            held = seed.insert_tasks(conn, 5, task_type="HISTORY", owner_id=owner_id, status="RUNNING", units=[unit_id])
            result = run_clients(_heartbeat_client, [(unit_id, token, held, repeat)], port=stack.web_port, duration=300)
            lat = result.latencies("heartbeat")
            out[unit_id] = {
                "finishedTasks": done,
                "requests": len(lat),
                "ok": result.count("heartbeat", 200),
                "p50ms": percentile(lat, 50) * 1000,
                "p99ms": percentile(lat, 99) * 1000,
                "serverErrors": result.server_errors,
                "lost": sum(result.extras("lostLeases")),
            }
    finally:
        conn.close()
    return out


def sweeper(stack: Stack, owner_id: int, *, units: int, tasks: int, dead: int, timeout: float) -> dict[str, Any]:
    conn = stack.db.connect(autocommit=False)
    started = time.monotonic()
    try:
        now = seed.utcnow()
        alive_ids = [f"fleet-{i}" for i in range(units - dead)]
        dead_ids = [f"fleet-dead-{i}" for i in range(dead)]
        seed.insert_units(conn, alive_ids, unit_type="FLEET", capacity=50, owner_id=owner_id)
        seed.insert_units(
            conn,
            dead_ids,
            unit_type="FLEET",
            capacity=50,
            owner_id=owner_id,
            last_heartbeat_at=now - timedelta(seconds=timeout + 60),
        )
        seed.insert_tasks(
            conn, tasks, task_type="FLEET", owner_id=owner_id, status="RUNNING", units=alive_ids + dead_ids
        )
    finally:
        conn.close()
    seeded = time.monotonic() - started
    out = stack.probe("bench.sweep_probe")
    conn = stack.db.connect()
    try:
        q = "SELECT COUNT(*) FROM tasks WHERE task_type='FLEET' AND status=%s"
        pending, running = seed.scalar(conn, q, ("PENDING",)), seed.scalar(conn, q, ("RUNNING",))
        offline = seed.scalar(conn, "SELECT COUNT(*) FROM execution_units WHERE status='OFFLINE'")
        chains = seed.broken_chains(conn, "FLEET")
    finally:
        conn.close()
    expected = tasks * dead // units
    return {
        "units": units,
        "tasks": tasks,
        "deadUnits": dead,
        "seedSeconds": seeded,
        **out,
        "expectedFailovers": expected,
        "lost": abs(pending - expected) + abs(running - (tasks - expected)),
        "unitsOffline": offline,
        "brokenChains": chains,
    }


def agent_memory(stack: Stack, key: str, *, tasks: int, settle: float) -> dict[str, Any]:
    """Peak RSS of `taskhub-unit` holding `tasks` running tasks (the built-in `sleep` handler)."""
    conn = stack.db.connect(autocommit=False)
    try:
        owner = seed.key_id(conn, "bench")
        cur = conn.cursor()
        new = seed.insert_tasks(conn, tasks, task_type="AGENT_MEM", owner_id=owner)
        cur.execute(
            "UPDATE tasks SET config=%s WHERE id BETWEEN %s AND %s",
            (json.dumps({"seconds": 300, "steps": 300}), new[0], new[-1]),
        )
        conn.commit()
    finally:
        conn.close()
    argv = [PYTHON, "-m", "taskhub_unit", "--server", f"http://127.0.0.1:{stack.web_port}", "--id", "agent-mem"]
    argv += ["--type", "AGENT_MEM", "--capacity", str(tasks), "--handler", "sleep", "--poll-interval", "0.2"]
    argv += ["--drain-timeout", "1", "--log-level", "WARNING", "--data-dir", str(stack.run_dir)]
    try:
        proc = stack.start("agent", argv, TASKHUB_ENROLL_KEY=key)
    except OSError as exc:
        return {"usable": False, "error": f"could not start taskhub-unit: {exc}"}
    try:
        deadline = time.monotonic() + 60
        running = 0
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                tail = proc.log_path.read_text(errors="replace")[-1500:]
                return {"usable": False, "error": f"taskhub-unit exited with {proc.popen.returncode}: {tail}"}
            conn = stack.db.connect()
            try:
                running = seed.scalar(conn, "SELECT COUNT(*) FROM tasks WHERE unit_id='agent-mem' AND status='RUNNING'")
            finally:
                conn.close()
            if running >= tasks:
                break
            time.sleep(0.5)
        if running < tasks:
            return {"usable": False, "error": f"taskhub-unit held {running} of {tasks} tasks after 60 s"}
        time.sleep(settle)  # heartbeats, progress and logs flowing
        mem = memory_kb(proc.pid)
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        return {
            "usable": True,
            "running": running,
            "peakRssMb": mem["peak"] / 1024,
            "rssMb": mem["rss"] / 1024,
            "threads": threads,
            "settleSeconds": settle,
        }
    finally:
        if proc.popen.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.5)
        stack.stop("agent")
