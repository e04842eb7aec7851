"""`python -m bench.dispatch`: the dispatch rows of issue 14, on MariaDB + Redis with the production
web server (gunicorn + uvicorn workers, taskhub/gunicorn.conf.py).

1. Dispatch latency: K real idle `taskhub-unit` processes (long-poll claims, the sleep handler with
   0 s); tasks created one at a time; latency = the task's `started_at - created_at` (both stamped
   by the hub). Celery + Redis in the same run: apply_async -> the task starts (bench.celery_noop.stamp).
2. Claim queries per created task with W waiters on one type: W simulated units each hold a
   long-poll claim; one task is created; the hub's claim counter (/metrics, taskhub_claims_total)
   says how many claims ran for it.
3. Idle fleet: N simulated idle units from one asyncio load generator, each doing what the agent
   does when idle: a long-poll claim (waitSeconds 20) again and again, a heartbeat at the interval
   the hub's last heartbeat reply gave (`idleHeartbeatIntervalSeconds` while it holds nothing and
   its claims wait, else `heartbeatIntervalSeconds`), the first one at a random phase within the
   idle interval (a fleet that has run for a while, not the burst of its start).
   Measured over a window: requests/s, hub CPU per idle unit per second, p99 of heartbeats and of
   the claims' time beyond their wait, errors, and the load generator's CPU share.

Every row is printed and written as JSON to bench/results/dispatch-<time>.json. Targets are not
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

from bench import celery_peer
from bench.load import percentile
from bench.stack import NCPU, ROOT, CpuMeter, Db, Stack, children
from taskhub.apikeys.tokens import digest
from testkit.hub import ALL_SCOPES, call, unit_argv, unit_env
from testkit.processes import Process
from testkit.waiting import wait_for

TYPE = "DISPATCH"
IDLE_HEARTBEAT_PHASE = 60.0  # UNIT_IDLE_HEARTBEAT_INTERVAL's default: the idle units' heartbeat phases


def _ms(values: list[float]) -> dict[str, float]:
    return {f"p{q}ms": round(percentile(values, q) * 1000, 2) for q in (50, 90, 99)} | {"n": len(values)}


# --- a minimal keep-alive HTTP/1.1 client for thousands of connections ---------------------------


class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, token: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        head = (
            f"POST /api/v1{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        try:
            status_line = await asyncio.wait_for(self.reader.readline(), timeout)
            length = 0
            while True:
                line = await asyncio.wait_for(self.reader.readline(), timeout)
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            payload = await asyncio.wait_for(self.reader.readexactly(length), timeout) if length else b""
            return int(status_line.split()[1]), json.loads(payload or b"null")
        except (Exception, asyncio.CancelledError):
            self.writer.close()
            self.writer = None
            raise


def insert_units(stack: Stack, owner: int, prefix: str, count: int) -> list[tuple[str, str]]:
    """`count` ONLINE units of TYPE straight into the database (registration is not what is
    measured), each with a token of its own."""
    now = datetime.now(UTC).replace(tzinfo=None)
    units = [(f"{prefix}-{i}", "thu_" + secrets.token_urlsafe(24)) for i in range(count)]
    conn = stack.db.connect(autocommit=True)
    try:
        cur = conn.cursor()
        cur.executemany(
            "INSERT INTO execution_units (id, unit_type, unit_name, capacity, current_load, status, endpoint,"
            " metadata, token_hash, owner_id, registered_at, last_heartbeat_at, updated_at, instance_id,"
            " drained_by, drained_by_actor) VALUES (%s, %s, %s, 1, 0, 'ONLINE', '', '{}', %s, %s, %s, %s, %s, '',"
            " '', '')",
            [(uid, TYPE, uid, digest(tok), owner, now, now, now) for uid, tok in units],
        )
    finally:
        conn.close()
    return units


METRICS_TOKEN = secrets.token_urlsafe(16)


def claims_counted(port: int) -> float:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("taskhub_claims_total"))


async def idle_unit(port: int, uid: str, token: str, stop_at: float, out: list[Any], wait: float) -> None:
    """What an idle agent does: a long-poll claim after another, a heartbeat at the interval the
    hub's reply gives (taskhub_unit.agent: the idle one, since its claims wait), ±10 %. Each
    request that ends is recorded as (end time, kind, seconds beyond its wait, error or None)."""
    claim, beat = Conn(port), Conn(port)
    body = {"currentLoad": 0, "metadata": {}, "tasks": []}

    async def heartbeats() -> None:
        # A fleet that has run for a while: each unit's heartbeat phase anywhere in the idle interval
        # (a start with all of them in the first 10 s is a burst the window would measure instead).
        await asyncio.sleep(random.uniform(0, IDLE_HEARTBEAT_PHASE))
        while time.monotonic() < stop_at:
            t = time.monotonic()
            interval = 10.0
            try:
                status, reply = await beat.request(f"/execution-units/{uid}/heartbeat", token, body, 60)
                error: int | str | None = None if status == 200 else status
                if status == 200:
                    interval = float(reply.get("idleHeartbeatIntervalSeconds") or reply["heartbeatIntervalSeconds"])
            except Exception as exc:
                error = type(exc).__name__
            out.append((time.monotonic(), "heartbeat", time.monotonic() - t, error))
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))

    task = asyncio.create_task(heartbeats())
    await asyncio.sleep(random.uniform(0, wait))
    while time.monotonic() < stop_at:
        t = time.monotonic()
        try:
            status, reply = await claim.request(
                f"/execution-units/{uid}/claim", token, {"max": 1, "waitSeconds": wait}, wait + 60
            )
            took = time.monotonic() - t
            waited = wait if status == 200 and not reply.get("items") else 0.0
            out.append((time.monotonic(), "claim", max(took - waited, 0.0), None if status == 200 else status))
        except Exception as exc:
            out.append((time.monotonic(), "claim", time.monotonic() - t, type(exc).__name__))
            await asyncio.sleep(1)
    task.cancel()


def fleet(stack: Stack, owner: int, n: int, seconds: float, wait: float) -> dict[str, Any]:
    units = insert_units(stack, owner, f"idle{n}", n)
    events: list[Any] = []
    warm = wait + 5
    web = [stack.procs["web"].pid, *children(stack.procs["web"].pid)]
    window: dict[str, float] = {}

    async def main() -> dict[str, float]:
        start = time.monotonic()
        stop_at = start + warm + seconds + wait + 5  # claims begun in the window may end in it
        runners = [asyncio.create_task(idle_unit(stack.web_port, u, t, stop_at, events, wait)) for u, t in units]
        await asyncio.sleep(warm)
        window["from"] = time.monotonic()
        meter = CpuMeter({"web": web, "loadgen": [os.getpid()]})
        await asyncio.sleep(seconds)
        cpu = meter.stop()
        window["to"] = time.monotonic()
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        return cpu

    cpu = asyncio.run(main())
    inside = [e for e in events if window["from"] <= e[0] <= window["to"]]
    errors = [e[3] for e in inside if e[3] is not None]
    return {
        "units": n,
        "seconds": seconds,
        "claimWait": wait,
        "requestsPerSecond": round(len(inside) / seconds, 1),
        "hubWebCpuMsPerUnitSecond": round(cpu["web"] / n / cpu["wall"] * 1000, 4),
        "heartbeat": _ms([e[2] for e in inside if e[1] == "heartbeat"]),
        "claimBeyondWait": _ms([e[2] for e in inside if e[1] == "claim"]),
        "errors": len(errors),
        "errorKinds": sorted({str(e) for e in errors})[:5],
        "loadgenCpuShare": round(cpu["loadgen"] / (cpu["wall"] * NCPU), 3),
        "restOfMachineCpuShare": round(max(cpu["machine"] - cpu["web"] - cpu["loadgen"], 0) / (cpu["wall"] * NCPU), 3),
    }


def waiters_per_create(stack: Stack, owner: int, key: str, waiters: int) -> dict[str, Any]:
    units = insert_units(stack, owner, f"wait{waiters}", waiters)

    async def main() -> dict[str, Any]:
        conns = [Conn(stack.web_port) for _ in units]
        pending = [
            asyncio.create_task(c.request(f"/execution-units/{u}/claim", t, {"max": 1, "waitSeconds": 25}, 40))
            for c, (u, t) in zip(conns, units, strict=True)
        ]
        await asyncio.sleep(6)  # every claim has run once and waits
        before = await asyncio.to_thread(claims_counted, stack.web_port)
        created = await asyncio.to_thread(
            call,
            f"http://127.0.0.1:{stack.web_port}/api/v1",
            "POST",
            "/tasks",
            key,
            {"name": "one", "taskType": TYPE, "priority": 1, "config": {}},
        )
        await asyncio.sleep(3)
        after = await asyncio.to_thread(claims_counted, stack.web_port)
        done = sum(1 for p in pending if p.done())
        for p in pending:
            p.cancel()
        return {"waiters": waiters, "created": created[0], "claimsForOneTask": after - before, "repliesWithin3s": done}

    return asyncio.run(main())


def dispatch_latency(stack: Stack, key: str, units: int, tasks: int) -> dict[str, Any]:
    procs = []
    for i in range(units):
        env = unit_env(f"http://127.0.0.1:{stack.web_port}", key, f"real-{i}", TYPE, 1, TASKHUB_CLAIM_WAIT="20")
        procs.append(
            Process(f"unit-{i}", unit_argv(), env=env, log_path=stack.run_dir / "logs" / f"unit-{i}.out").start()
        )
    base = f"http://127.0.0.1:{stack.web_port}/api/v1"
    try:
        wait_for(
            lambda: call(base, "GET", f"/execution-units?unitType={TYPE}&status=ONLINE", key)[1]["total"] >= units,
            60,
            "units",
        )
        time.sleep(3)
        ids = []
        for _ in range(tasks):
            _, reply = call(
                base, "POST", "/tasks", key, {"name": "d", "taskType": TYPE, "priority": 1, "config": {"seconds": 0}}
            )
            ids.append(reply["id"])
            time.sleep(random.uniform(0.05, 0.15))
        time.sleep(3)
        conn = stack.db.connect()
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT TIMESTAMPDIFF(MICROSECOND, created_at, started_at) FROM tasks"
                f" WHERE id IN ({','.join(map(str, ids))}) AND started_at IS NOT NULL"
            )
            lat = [row[0] / 1e6 for row in cur.fetchall()]
        finally:
            conn.close()
    finally:
        for p in procs:
            p.stop(5)
    return {"units": units, "tasks": tasks, "started": len(lat), **_ms(lat)}


def celery_latency(stack: Stack, tasks: int) -> dict[str, Any]:
    """Celery + Redis dispatch latency, apply_async -> the task starts (bench.celery_peer)."""
    return {"tasks": tasks, **_ms(celery_peer.dispatch_latencies(stack, tasks))}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__)
    parser.add_argument("--db-name", default="taskhub_bench_dispatch")
    parser.add_argument("--redis-db", type=int, default=3)
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--fleet", default="200,1000,5000")
    parser.add_argument("--fleet-seconds", type=float, default=15)
    parser.add_argument("--claim-wait", type=float, default=20)
    parser.add_argument("--only", default="latency,waiters,fleet")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = ROOT / "var" / "bench" / f"dispatch-{stamp}"
    # One metrics directory for both web workers, so /metrics sums their claim counters.
    (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
    knobs = {"METRICS_TOKEN": METRICS_TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics")}
    stack = Stack(db=Db.from_env(args.db_name), redis_db=args.redis_db, run_dir=run_dir, knobs=knobs)
    results: dict[str, Any] = {}
    only = set(args.only.split(","))
    try:
        stack.setup()
        key = stack.api_key("bench", ALL_SCOPES)
        conn = stack.db.connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT id FROM api_keys WHERE name = %s", ["bench"])
            owner = int(cur.fetchone()[0])
        finally:
            conn.close()
        stack.start_web(workers=2, threads=4)
        if "latency" in only:
            results["taskhub"] = dispatch_latency(stack, key, args.units, args.tasks)
            print("dispatch latency, taskhub long-poll units:", results["taskhub"], flush=True)
            results["celery"] = celery_latency(stack, args.tasks)
            print("dispatch latency, Celery + Redis:", results["celery"], flush=True)
        if "waiters" in only:
            results["waiters"] = waiters_per_create(stack, owner, key, args.waiters)
            print("claims for one created task:", results["waiters"], flush=True)
        if "fleet" in only:
            results["fleet"] = []
            for n in [int(x) for x in args.fleet.split(",") if x]:
                row = fleet(stack, owner, n, args.fleet_seconds, args.claim_wait)
                results["fleet"].append(row)
                print("idle fleet:", row, flush=True)
    finally:
        stack.stop_all()
        out = ROOT / "bench" / "results" / f"dispatch-{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"JSON: {out}")
        with contextlib.suppress(Exception):
            stack.db.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
