"""`python -m bench.dispatch`: the dispatch rows of issue 14, on MariaDB + Redis with the production
web server (gunicorn + uvicorn workers, taskhub/gunicorn.conf.py).

1. Dispatch latency: K real idle `taskhub-unit` processes (long-poll claims, the sleep handler with
   0 s); tasks created one at a time; latency = the task's `started_at - created_at` (both stamped
   by the hub), split at the ring (a subscriber of the doorbell channel: create -> ring delivered,
   ring -> the woken claim starts), with a bare INSERT + COMMIT timed after it (the durable write's
   floor at that moment). Celery + Redis in the same run: apply_async -> the task starts
   (bench.celery_noop.stamp).
2. Claims and SQL statements per created task with W waiters on one type: W simulated units each
   hold a long-poll claim; once the hub's counters settle, one task is created; the claim counter
   (/metrics, taskhub_claims_total) and the web's statement counter (bench/sqlcount) say how many
   claims and statements ran for it, net of the background (the safety-net probes) and of the
   create's own statements, each measured in a window of the same length (`waiters_per_create`).
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
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
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
SQLCOUNT_DIR = ROOT / "bench" / "sqlcount"  # its sitecustomize counts a hub process's SQL statements
CLAIMS = "taskhub_claims_total"
STATEMENTS = "bench_sql_statements_total"


def hub_knobs(run_dir: Path) -> dict[str, str]:
    """What the web needs for `hub_counters`: the metrics token, one multiprocess directory for
    every worker (so /metrics sums them), and the statement counter (bench/sqlcount)."""
    path = run_dir / "metrics"
    path.mkdir(parents=True, exist_ok=True)
    return {
        "METRICS_TOKEN": METRICS_TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(path),
        "BENCH_SQL_COUNT": "1",
        "PYTHONPATH": os.pathsep.join([str(SQLCOUNT_DIR), str(ROOT)]),
    }


def hub_counters(port: int) -> dict[str, float]:
    """The claim counter by outcome and the statement counter by (verb, table), summed over the web
    workers: {'taskhub_claims_total{outcome="empty"}': 3.0, ...}."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith((CLAIMS, STATEMENTS)):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def claims_counted(port: int) -> float:
    return _total(hub_counters(port), CLAIMS)


def _total(counters: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in counters.items() if k.startswith(prefix))


def _outcomes(counters: dict[str, float]) -> dict[str, float]:
    """{'claimed': 1.0, 'empty': 1.0} from the claim counter's lines."""
    return {k.split('"')[1]: v for k, v in counters.items() if k.startswith(CLAIMS) and '"' in k}


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(after) | set(before)}


def _minus(a: dict[str, float], *others: dict[str, float]) -> dict[str, float]:
    out = dict(a)
    for other in others:
        for k, v in other.items():
            out[k] = out.get(k, 0.0) - v
    return {k: v for k, v in out.items() if abs(v) > 1e-9}


async def _window(port: int, seconds: float, act: Any = None) -> tuple[dict[str, float], Any]:
    """Counters' change over `seconds` from a reading, with `act()` (in a thread) done first. Each
    window holds one /metrics scrape's own statements (the state gauges, read after the counters)."""
    before = await asyncio.to_thread(hub_counters, port)
    started = time.monotonic()
    outcome = await asyncio.to_thread(act) if act is not None else None
    await asyncio.sleep(max(seconds - (time.monotonic() - started), 0.0))
    return _delta(await asyncio.to_thread(hub_counters, port), before), outcome


async def _settle(port: int, claims: float, quiet: float, timeout: float) -> tuple[dict[str, float], bool, float]:
    """Read the counters until the claim counter reached `claims` and stayed still for `quiet`
    seconds (every waiter's first claim ran, nothing in flight): (reading, settled, seconds)."""
    started = time.monotonic()
    last = await asyncio.to_thread(hub_counters, port)
    still_since = time.monotonic()
    while time.monotonic() - started < timeout:
        await asyncio.sleep(0.5)
        now = await asyncio.to_thread(hub_counters, port)
        if _total(now, CLAIMS) != _total(last, CLAIMS):
            still_since = time.monotonic()
        last = now
        if _total(now, CLAIMS) >= claims and time.monotonic() - still_since >= quiet:
            return now, True, time.monotonic() - started
    return last, False, time.monotonic() - started


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


def waiters_per_create(
    stack: Stack, owner: int, key: str, waiters: int, window: float = 4.0, wait: float = 30.0
) -> dict[str, Any]:
    """Claims and SQL statements that one created task costs while `waiters` long-poll claims wait
    on its type, net of everything else, in windows of `window` seconds each:

    1. no waiter: a window with nothing done (the background: /metrics scrapes, beat-free web) and
       a window with one create of a type nobody waits on (the create request's own statements);
    2. the waiters' claims sent, and the counters read until settled (every first claim ran, the
       claim counter still for 1.5 s: the safety-net probes are the only thing left);
    3. a window with nothing done (the background with the waiters: their probes) and a window
       with one create of their type. Claims for the create = that window - the background;
       statements = that window - the background - the create's own.
    `hub_counters` needs the web started with `hub_knobs`; without the statement counter the
    statement fields are 0."""
    units = insert_units(stack, owner, f"wait{waiters}", waiters)
    base = f"http://127.0.0.1:{stack.web_port}/api/v1"
    port = stack.web_port

    def create(task_type: str) -> Any:
        return call(base, "POST", "/tasks", key, {"name": "one", "taskType": task_type, "priority": 1, "config": {}})

    async def main() -> dict[str, Any]:
        # Not measured: the key's last-used stamp (an UPDATE at most once a while) and a connection
        # per thread are first-use costs, not the create's.
        await asyncio.to_thread(create, f"{TYPE}-NOBODY")
        idle, _ = await _window(port, window)
        alone, other = await _window(port, window, lambda: create(f"{TYPE}-NOBODY"))
        create_alone = _minus(alone, idle)
        first = await asyncio.to_thread(hub_counters, port)
        started = time.monotonic()
        conns = [Conn(port) for _ in units]
        pending = [
            asyncio.create_task(c.request(f"/execution-units/{u}/claim", t, {"max": 1, "waitSeconds": wait}, wait + 30))
            for c, (u, t) in zip(conns, units, strict=True)
        ]
        ready, settled, settle_s = await _settle(port, _total(first, CLAIMS) + waiters, 1.5, wait - 3 * window)
        first_claims = _minus(_delta(ready, first))
        background, _ = await _window(port, window)
        replied_before = sum(1 for p in pending if p.done())
        with_create, created = await _window(port, window, lambda: create(TYPE))
        left = wait - (time.monotonic() - started)  # the waits still held when the window closed
        replies = sum(1 for p in pending if p.done()) - replied_before
        for p in pending:
            p.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        net = _minus(with_create, background, create_alone)
        claims = _total(_minus(with_create, background), CLAIMS)
        statements = {k[len(STATEMENTS) :]: round(v) for k, v in sorted(net.items()) if k.startswith(STATEMENTS)}
        return {
            "waiters": waiters,
            "windowSeconds": window,
            "created": created[0],
            "otherTypeCreated": other[0],
            "settled": settled,
            "settleSeconds": round(settle_s, 1),
            "waitsLeftSeconds": round(left, 1),
            "firstClaims": _total(first_claims, CLAIMS),
            "statementsPerFirstClaim": round(_total(first_claims, STATEMENTS) / waiters, 2) if waiters else 0.0,
            "claimsForOneTask": claims,
            "claimsByOutcome": _outcomes(_minus(with_create, background)),
            "statementsForOneTask": round(_total(net, STATEMENTS)),
            "statementsByShape": statements,
            "createStatements": round(_total(create_alone, STATEMENTS)),
            "backgroundStatements": round(_total(background, STATEMENTS) - _total(idle, STATEMENTS)),
            "backgroundClaims": _total(background, CLAIMS),
            "replies": replies,
            "repliesBeforeCreate": replied_before,
        }

    return asyncio.run(main())


class RingTap:
    """A subscriber of the hub's doorbell channel (Redis pub/sub, as each web process has one):
    the wall-clock time each ring for `key` reached a subscriber, to split a task's dispatch into
    create -> ring delivered (the create's work from its `now` to its commit, then the PUBLISH) and
    ring delivered -> claim started (the web process's delivery and its event loop waking the
    waiter). Same machine, one clock."""

    def __init__(self, redis_url: str, channel: str, key: str) -> None:
        import redis

        self.key = key
        self.times: list[float] = []
        self.client = redis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(channel)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for message in self.pubsub.listen():
                if message.get("type") == "message":
                    at = time.time()
                    if json.loads(message["data"])[0] == self.key:
                        self.times.append(at)

    def first_after(self, moment: float) -> float | None:
        later = [t for t in self.times if t >= moment]
        return min(later) if later else None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pubsub.close()
            self.client.close()


def _breakdown(rows: list[tuple[float, float]], tap: RingTap) -> dict[str, Any]:
    """(created_at, started_at) epoch seconds of each task -> the two legs, for all tasks and for
    the slowest tenth (where the tail loses its time)."""
    legs = []
    for created, started in rows:
        ring = tap.first_after(created)
        if ring is not None and ring <= started + 0.05:
            legs.append((started - created, ring - created, started - ring))
    legs.sort()
    tail = legs[-max(len(legs) // 10, 1) :] if legs else []
    return {
        "matched": len(legs),
        "createToRing": _ms([leg[1] for leg in legs]),
        "ringToClaim": _ms([leg[2] for leg in legs]),
        "slowestTenth": {
            "n": len(tail),
            "createToRingMeanMs": round(sum(leg[1] for leg in tail) / len(tail) * 1000, 2) if tail else 0.0,
            "ringToClaimMeanMs": round(sum(leg[2] for leg in tail) / len(tail) * 1000, 2) if tail else 0.0,
            # Claims that started before the tap saw the ring: a claim already running found the task
            # (or this process saw the ring later than the hub's did).
            "claimedBeforeRingSeen": sum(1 for leg in tail if leg[2] < 0),
        },
        "claimedBeforeRingSeen": sum(1 for leg in legs if leg[2] < 0),
    }


def commit_floor(stack: Stack, count: int = 100) -> dict[str, Any]:
    """The durable write under every create, timed alone: `count` one-row INSERT + COMMIT
    (InnoDB, the server's own flush settings) into a scratch table of the bench database, 20 ms
    apart, from this process: what MariaDB's commit costs on this machine at this moment."""
    conn = stack.db.connect(autocommit=False)
    took = []
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        for n in range(count):
            t = time.perf_counter()
            cur.execute("INSERT INTO bench_commit_probe (v) VALUES (%s)", [n])
            conn.commit()
            took.append(time.perf_counter() - t)
            time.sleep(0.02)
        cur.execute("DROP TABLE bench_commit_probe")
    finally:
        conn.close()
    return _ms(took)


def dispatch_latency(stack: Stack, key: str, units: int, tasks: int) -> dict[str, Any]:
    """K real long-poll taskhub-unit processes; `tasks` created one at a time (50-150 ms apart);
    latency = `started_at - created_at` (both the hub's stamps: the woken claim stamps `started_at`
    before its queries). With Redis, `breakdown` splits it at the ring (RingTap). The web's CPU
    over the creates is reported per task (its create, claim and report, the units' heartbeats:
    robust on a shared machine)."""
    procs = []
    for i in range(units):
        env = unit_env(f"http://127.0.0.1:{stack.web_port}", key, f"real-{i}", TYPE, 1, TASKHUB_CLAIM_WAIT="20")
        procs.append(
            Process(f"unit-{i}", unit_argv(), env=env, log_path=stack.run_dir / "logs" / f"unit-{i}.out").start()
        )
    base = f"http://127.0.0.1:{stack.web_port}/api/v1"
    tap = RingTap(stack.redis_url, f"taskhub:doorbell:{stack.redis_db}", f"type:{TYPE}")
    try:
        wait_for(
            lambda: call(base, "GET", f"/execution-units?unitType={TYPE}&status=ONLINE", key)[1]["total"] >= units,
            60,
            "units",
        )
        time.sleep(3)
        ids = []
        web = [stack.procs["web"].pid, *children(stack.procs["web"].pid)]
        meter = CpuMeter({"web": web, "loadgen": [os.getpid()]})
        for _ in range(tasks):
            _, reply = call(
                base, "POST", "/tasks", key, {"name": "d", "taskType": TYPE, "priority": 1, "config": {"seconds": 0}}
            )
            ids.append(reply["id"])
            time.sleep(random.uniform(0.05, 0.15))
        time.sleep(3)
        cpu = meter.stop()
        conn = stack.db.connect()
        try:
            cur = conn.cursor()
            cur.execute("SET time_zone = '+00:00'")  # the columns hold UTC
            cur.execute(
                "SELECT UNIX_TIMESTAMP(created_at), UNIX_TIMESTAMP(started_at) FROM tasks"
                f" WHERE id IN ({','.join(map(str, ids))}) AND started_at IS NOT NULL"
            )
            stamps = [(float(c), float(s)) for c, s in cur.fetchall()]
        finally:
            conn.close()
    finally:
        tap.close()
        for p in procs:
            p.stop(5)
    lat = [s - c for c, s in stamps]
    return {
        "units": units,
        "tasks": tasks,
        "started": len(lat),
        **_ms(lat),
        "breakdown": _breakdown(stamps, tap),
        "commitFloor": commit_floor(stack, min(tasks, 100)),
        "webCpuMsPerTask": round(cpu["web"] / tasks * 1000, 2) if tasks else 0.0,
        "restOfMachineCpuShare": round(max(cpu["machine"] - cpu["web"] - cpu["loadgen"], 0) / (cpu["wall"] * NCPU), 3),
    }


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
    parser.add_argument("--claim-wait", type=float, default=30)  # the taskhub-unit default
    parser.add_argument("--only", default="latency,waiters,fleet")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = ROOT / "var" / "bench" / f"dispatch-{stamp}"
    knobs = hub_knobs(run_dir)  # one metrics directory for both web workers, the statement counter
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
