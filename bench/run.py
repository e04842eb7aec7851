"""`python -m bench --profile full|smoke|scale`: run the benchmarks, print one table, keep a JSON copy.

Every run checks its own honesty (no task claimed twice, none lost, no lock error reaching a
client, no 5xx, gap-free history chains); a run that fails those prints FAIL and exits 1, whatever
its speed. Targets are reported as met/MISSED and never change the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench import dispatch, failover, http_scenarios, lifecycle, push_queue, raw, report, scale, seed
from bench.stack import NCPU, ROOT, CpuMeter, Db, Stack, memory_kb, pids_named

RESULTS = ROOT / "bench" / "results"
ALL_SCOPES = "tasks:read,tasks:write,units:read,units:write,units:register"
PACKAGES = ("Django", "djangorestframework", "celery", "kombu", "gunicorn", "mysqlclient", "redis", "django-redis")
SCENARIOS = (
    *("queries", "queues", "raw", "floor", "heartbeat", "claim", "lifecycle", "failover"),
    *("dispatch", "waiters", "fleet", "results", "schedules", "prune", "scale"),
)
# Issue 14 (push-speed dispatch) and issue 15 (queue control): bench.push_queue.
PUSH_ROWS = ("dispatch", "waiters", "fleet")


@dataclass(frozen=True)
class Profile:
    name: str
    redis_db: int
    scenarios: tuple[str, ...]
    concurrencies: tuple[int, ...] = (1, 2, 4)
    duration: float = 6.0
    raw_pool: tuple[int, int] = (20_000, 100_000)  # LIMIT 1, LIMIT 25
    claim_pool: tuple[int, int] = (4_000, 40_000)  # {max: 1}, {max: 25}
    claim_capacity: int = 50
    request_limit: int = 1_000_000
    heartbeat_tasks: tuple[int, ...] = (0, 5)
    lifecycle: tuple[int, int, int, int] = (3_000, 4, 2, 10)  # M, K units, P producers, claim batch
    lifecycle_batch: tuple[int, int] = (25, 100)  # batch row: claim {max}, tasks per POST /tasks/batch
    # The lifecycle's units claim as taskhub-unit does: long polls of this many seconds (0: polling),
    # taskhub-unit's default; with lifecycle_ab the same lifecycle runs with polling units as well,
    # interleaved with Celery, lifecycle_rounds times.
    claim_wait: float = 20.0
    lifecycle_ab: bool = True
    lifecycle_rounds: int = 1
    failover: tuple[int, int, int] = (40, 5, 2)  # victims, tasks each, rescuers
    knobs: dict[str, str] = field(default_factory=dict)
    scale_tasks: int = 1_000_000
    scale_fleet: tuple[int, int, int] = (10_000, 100_000, 1_000)  # units, RUNNING tasks, dead units
    list_repeat: int = 50
    # Issue 14: K real taskhub-unit processes and tasks created one at a time; waiters on one type;
    # idle fleet sizes, seconds measured each, their long-poll wait; producer waits, SSE events, webhooks.
    dispatch: tuple[int, int] = (4, 200)
    # The web of these rows is production's (taskhub/gunicorn.conf.py's defaults, as bench.dispatch
    # runs it): 2 uvicorn workers with 4 sync-view threads each. With 1 (the rows above, measured
    # best for sync workers), 1,000 waiting claims queue every other request behind one thread.
    push_threads: int = 4
    waiters: int = 1_000
    waiter_window: float = 4.0  # seconds of each window of the waiters row (bench.dispatch.waiters_per_create)
    fleet: tuple[int, ...] = (200, 1_000, 5_000)
    fleet_seconds: float = 15.0
    fleet_wait: float = 30.0  # the taskhub-unit default long poll (clients/unit: --claim-wait 30)
    results: tuple[int, int, int] = (60, 60, 500)
    # Issue 15: seconds per mode of the limits probe; schedules firing in one minute; prune table.
    queue_seconds: float = 10.0
    schedules: int = 1_000
    prune: tuple[int, float] = (200_000, 20.0)  # finished rows seeded, seconds of claims (half beside pruning)
    # gunicorn: 2 sync workers measured best on this 2-core machine (BENCHMARKS.md, "gunicorn");
    # the config file's own default is 2 workers x 4 threads (gthread).
    workers: int = 2
    threads: int = 1

    @property
    def db_name(self) -> str:
        return f"taskhub_bench_{self.name}" if self.name != "full" else "taskhub_bench"


PROFILES = {
    "full": Profile(
        "full",
        redis_db=3,
        scenarios=tuple(s for s in SCENARIOS if s != "scale"),
        knobs={"UNIT_HEARTBEAT_TIMEOUT": "30", "SWEEP_INTERVAL": "5"},
    ),
    "smoke": Profile(
        "smoke",
        redis_db=4,
        scenarios=tuple(s for s in SCENARIOS if s != "scale"),
        concurrencies=(1, 2),
        duration=2.0,
        raw_pool=(300, 2_000),
        claim_pool=(120, 600),
        claim_capacity=50,
        request_limit=60,
        heartbeat_tasks=(5,),
        lifecycle=(60, 2, 1, 5),
        lifecycle_batch=(10, 20),
        failover=(4, 3, 2),
        claim_wait=1.0,
        lifecycle_ab=False,  # the smoke run's length: one lifecycle of each form
        dispatch=(2, 10),
        waiters=20,
        waiter_window=1.5,
        fleet=(20,),
        fleet_seconds=3.0,
        fleet_wait=2.0,
        results=(3, 3, 20),
        queue_seconds=1.0,
        schedules=20,
        prune=(2_000, 2.0),
        knobs={"UNIT_HEARTBEAT_TIMEOUT": "2", "SWEEP_INTERVAL": "1"},
    ),
    "scale": Profile(
        "scale",
        redis_db=6,
        scenarios=("scale", "prune"),
        prune=(1_000_000, 20.0),
        knobs={"UNIT_HEARTBEAT_TIMEOUT": "30", "SWEEP_INTERVAL": "5"},
    ),
}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(db: Db) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    conn = db.connect(database=False)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT @@version, @@innodb_buffer_pool_size, @@innodb_flush_log_at_trx_commit, @@innodb_flush_method"
        )
        version, pool, flush, method = cur.fetchone()
    finally:
        conn.close()
    return {
        "cpu": cpu_model,
        "cpus": NCPU,
        "memoryGb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mariadb": version,
        "innodbBufferPoolMb": int(pool) // (1024 * 1024),
        "innodbFlushLogAtTrxCommit": int(flush),
        "innodbFlushMethod": method,
        "redis": _command(["redis-server", "--version"]),
        "packages": {p: _version(p) for p in PACKAGES},
        "gitCommit": _command(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "gitUncommittedFiles": len(_command(["git", "-C", str(ROOT), "status", "--porcelain"]).splitlines()),
    }


LOCK_DIR = Path("/tmp")
REDIS_DBS = tuple(n for n in range(3, 16) if n != 5)  # 0: development and tests; 5: `make chaos`


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[bool]:
    """A machine-wide advisory lock (flock on a file under /tmp); yields whether it was taken."""
    path = LOCK_DIR / f"taskhub-bench-{name}.lock"
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@contextlib.contextmanager
def claim_resources(db_name: str, redis_db: int | None, preferred: int) -> Iterator[int]:
    """Own the database name and a Redis DB number for the run, so concurrent runs keep apart."""
    with contextlib.ExitStack() as stack:
        if not stack.enter_context(machine_lock(f"db-{db_name}")):
            raise SystemExit(f"another benchmark run is using the database {db_name}; pass --db-name")
        candidates = (redis_db,) if redis_db is not None else (preferred, *(n for n in REDIS_DBS if n != preferred))
        for number in candidates:
            if stack.enter_context(machine_lock(f"redis-{number}")):
                yield number
                return
        raise SystemExit(f"no free Redis DB number among {candidates} (other benchmark runs hold them)")


class Runner:
    def __init__(self, profile: Profile, stack: Stack, log: Callable[[str], None]) -> None:
        self.p = profile
        self.stack = stack
        self.log = log
        self.results: dict[str, Any] = {}
        self.key = ""
        self.owner = 0
        self.workers, self.threads = profile.workers, profile.threads
        self.gunicorn_extra: list[str] = []
        self.failed: dict[str, str] = {}  # rows that raised: reported, and the run fails

    def meter(self, **extra: list[int]) -> Callable[[], CpuMeter]:
        def make() -> CpuMeter:
            groups = {"mariadb": pids_named("mariadbd"), "redis": pids_named("redis-server"), **extra}
            if "web" in self.stack.procs:
                groups["web"] = self.stack.procs["web"].tree()
            return CpuMeter(groups)

        return make

    def fresh(self) -> None:
        conn = self.stack.db.connect(autocommit=False)
        try:
            seed.reset_tasks(conn)
        finally:
            conn.close()

    def step(self, label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        started = time.monotonic()
        out = fn()
        cpu = out.get("cpu") or {}
        if cpu.get("wall"):
            ours = sum(v for k, v in cpu.items() if k not in ("machine", "wall"))
            loadgen = out.get("loadgenCpuShare", 0.0) * cpu["wall"] * NCPU
            out["otherCpuShare"] = max(cpu["machine"] - ours - loadgen, 0.0) / (cpu["wall"] * NCPU)
        summary = {k: out[k] for k in ("perSecond", "tasksPerSecond", "p50s", "p99s") if k in out}
        shown = ", ".join(f"{k}={v:,.2f}" for k, v in summary.items())
        self.log(f"  {label}: {shown} ({time.monotonic() - started:.1f}s)")
        return out

    def run(self) -> dict[str, Any]:
        p, stack = self.p, self.stack
        self.log(f"setting up database {stack.db.name} and Redis DB {stack.redis_db}")
        stack.setup()
        self.key = stack.api_key("bench", ALL_SCOPES)
        conn = stack.db.connect()
        try:
            self.owner = seed.key_id(conn, "bench")
        finally:
            conn.close()
        if "queries" in p.scenarios:
            self.log("SQL statements per request (Django test client through the whole stack)")
            self.results["queries"] = self.stack.probe("bench.query_probe")
            self.log("  " + ", ".join(f"{k}: {v['queries']}" for k, v in self.results["queries"].items()))
        if "queues" in p.scenarios:
            self.log("claim with queue limits (maxRunning, perKeyConcurrency, rateLimit) vs none (bench.queue_probe)")
            q = self.row("queues", lambda: push_queue.queue_limits_row(stack, p.queue_seconds))
            if q:
                self.log(f"  limited/none: {q['ratio']:.2f} wall, {q['claimRatio']:.2f} in the claim (target >= 0.8)")
        if "raw" in p.scenarios:
            self.log("1 raw claim limit (plain MySQLdb)")
            self.results["raw"] = [
                self.step(
                    f"c={c} LIMIT {b}",
                    lambda c=c, b=b, pool=pool: raw.measure(  # type: ignore[misc]
                        stack.db, concurrency=c, batch=b, pool=pool, duration=p.duration, meter=self.meter()
                    ),
                )
                for b, pool in zip((1, 25), p.raw_pool, strict=True)
                for c in p.concurrencies
            ]
        stack.start_web(workers=self.workers, threads=self.threads, extra=self.gunicorn_extra)
        self._warm_up()
        port = stack.web_port
        if "floor" in p.scenarios:
            self.log("2 HTTP floor: GET /execution-units/{id} with the unit's token")
            self.results["floor"] = [
                self.step(
                    f"c={c}",
                    lambda c=c: http_scenarios.floor(  # type: ignore[misc]
                        stack.db,
                        port,
                        self.owner,
                        concurrency=c,
                        duration=p.duration,
                        limit=p.request_limit,
                        meter=self.meter(),
                    ),
                )
                for c in p.concurrencies
            ]
        if "heartbeat" in p.scenarios:
            self.log("3 heartbeat (the agent's body: load, metadata, the tasks it runs with progress)")
            self.results["heartbeat"] = []
            for n in p.heartbeat_tasks:
                for c in p.concurrencies:
                    self.results["heartbeat"].append(
                        self.step(
                            f"c={c} tasks={n}",
                            lambda c=c, n=n: http_scenarios.heartbeat(  # type: ignore[misc]
                                stack.db,
                                port,
                                self.owner,
                                concurrency=c,
                                tasks_per_unit=n,
                                duration=p.duration,
                                limit=p.request_limit,
                                meter=self.meter(),
                            ),
                        )
                    )
        if "claim" in p.scenarios:
            self.log("4 claim over HTTP")
            self.results["claim"] = []
            for b, pool in zip((1, 25), p.claim_pool, strict=True):
                for c in p.concurrencies:
                    self.fresh()
                    self.results["claim"].append(
                        self.step(
                            f"c={c} max={b}",
                            lambda c=c, b=b, pool=pool: http_scenarios.claim(  # type: ignore[misc]
                                stack.db,
                                port,
                                self.owner,
                                concurrency=c,
                                batch=b,
                                pool=pool,
                                capacity=p.claim_capacity,
                                duration=p.duration,
                                meter=self.meter(),
                            ),
                        )
                    )
        if "lifecycle" in p.scenarios:
            self.run_lifecycle()
        if "failover" in p.scenarios:
            self.fresh()
            victims, per, rescuers = p.failover
            timeout = float(p.knobs["UNIT_HEARTBEAT_TIMEOUT"])
            interval = float(p.knobs["SWEEP_INTERVAL"])
            self.log(f"6 failover: {victims} units go silent holding {per} tasks each (real Celery worker + beat)")
            self.results["failover"] = self.step(
                "failover",
                lambda: failover.run(
                    stack,
                    self.owner,
                    victims=victims,
                    per_victim=per,
                    rescuers=rescuers,
                    timeout=timeout,
                    interval=interval,
                    heartbeat_every=timeout / 3,
                    meter=self.meter(),
                ),
            )
        self.results["memory"] = {**self.results.get("memory", {}), **self._web_memory()}
        self.run_push()
        self.run_upkeep()
        if "scale" in p.scenarios:
            self.run_scale()
        return self.results

    def run_lifecycle(self) -> None:
        """Scenario 5. The batch row with long-poll units (`claim_wait`) is the one compared with
        Celery; with `lifecycle_ab` the same batch lifecycle also runs with polling units
        (`--claim-wait 0`), interleaved with Celery in `lifecycle_rounds` rounds (polling, long
        polls, Celery; the order turns each round), every ratio from the same run. The main rows
        are the last round's; `lifecycleAB` keeps each round's three figures."""
        p, stack = self.p, self.stack
        m, k, producers, batch = p.lifecycle
        claim_max, create_batch = p.lifecycle_batch
        waits = (0.0, p.claim_wait) if p.lifecycle_ab and p.claim_wait else (p.claim_wait,)
        self.log(
            f"5 lifecycle: {m} tasks created, claimed (units waiting {' and '.join(f'{w:g} s' for w in waits)}"
            f" a claim), logged, completed over HTTP; Celery; {p.lifecycle_rounds} round(s)"
        )
        batch_how = {"mode": "batch", "batch": claim_max, "create_batch": create_batch}

        def taskhub(how: dict[str, Any], wait: float) -> dict[str, Any]:
            self.fresh()
            return lifecycle.taskhub(
                stack.db,
                stack.web_port,
                self.key,
                self.owner,
                tasks=m,
                units=k,
                producers=producers,
                meter=self.meter(),
                claim_wait=wait,
                **how,
            )

        def celery() -> dict[str, Any]:
            groups = {"mariadb": pids_named("mariadbd"), "redis": pids_named("redis-server")}
            return self.step(
                "celery", lambda: lifecycle.celery(stack, tasks=m, producers=producers, meter_groups=groups)
            )

        rounds: list[dict[str, Any]] = []
        for n in range(p.lifecycle_rounds):
            order = [*waits, None] if n % 2 == 0 else [None, *reversed(waits)]
            got: dict[float | str, Any] = {}
            for wait in order:
                if wait is None:
                    got["celery"] = celery()
                    continue
                label = (
                    f"taskhub, batch forms (create {create_batch}/request, claim {{max: {claim_max}}}, 1 report/claim)"
                )
                label += f", claim wait {wait:g} s"
                got[wait] = self.step(label, partial(taskhub, batch_how, wait))
            cel = got["celery"]["tasksPerSecond"] or 0.0
            entry: dict[str, Any] = {"round": n + 1, "order": ["celery" if w is None else w for w in order]}
            entry["celeryTasksPerSecond"] = cel
            cel_cpu = got["celery"].get("cpu", {})
            entry["celeryCpuMsPerTask"] = round((cel_cpu.get("celery", 0) + cel_cpu.get("redis", 0)) / m * 1000, 2)
            for wait in waits:
                entry[f"wait{wait:g}TasksPerSecond"] = got[wait]["tasksPerSecond"]
                entry[f"wait{wait:g}xCelery"] = round(got[wait]["tasksPerSecond"] / cel, 3) if cel else 0.0
                # CPU per task (robust on a shared machine): the web, and MariaDB (others' queries too).
                cpu = got[wait].get("cpu", {})
                entry[f"wait{wait:g}WebCpuMsPerTask"] = round(cpu.get("web", 0) / m * 1000, 2)
                entry[f"wait{wait:g}MariadbCpuMsPerTask"] = round(cpu.get("mariadb", 0) / m * 1000, 2)
                entry[f"wait{wait:g}OtherCpuShare"] = round(got[wait].get("otherCpuShare", 0), 3)
            if len(waits) == 2:
                polled = got[waits[0]]["tasksPerSecond"]
                entry["longPollxPolling"] = round(got[waits[1]]["tasksPerSecond"] / polled, 3) if polled else 0.0
                self.results["lifecyclePolling"] = got[waits[0]]
            self.results["lifecycle"], self.results["celery"] = got[waits[-1]], got["celery"]
            rounds.append(entry)
            self.log(f"  round {n + 1}: {entry}")
        if len(waits) == 2 or len(rounds) > 1:
            self.results["lifecycleAB"] = rounds
        self.results["lifecycleSingle"] = self.step(
            f"taskhub, one request per step (claim {{max: {batch}}})",
            lambda: taskhub({"mode": "single", "batch": batch}, p.claim_wait),
        )

    def row(self, name: str, fn: Callable[[], Any]) -> Any:
        """results[name] = fn(); a row that raises is recorded as failed and the run goes on."""
        value, error = push_queue.guarded(self.log, fn)
        if error:
            self.failed[name] = error
        else:
            self.results[name] = value
        return value

    def run_push(self) -> None:
        """Issue 14's rows on a web restarted with the metrics knobs (bench.push_queue)."""
        p, stack = self.p, self.stack
        if any(s in p.scenarios for s in PUSH_ROWS):
            stack.stop("web")
            self.fresh()
            stack.knobs.update(push_queue.metrics_knobs(stack.run_dir))
            stack.start_web(workers=self.workers, threads=p.push_threads, extra=self.gunicorn_extra)
            self._warm_up()
        if "dispatch" in p.scenarios:
            units, tasks = p.dispatch
            self.log(
                f"8 dispatch latency: {units} real taskhub-unit processes (long polls), {tasks} tasks; then Celery"
            )
            d = self.row("dispatch", lambda: push_queue.dispatch_rows(stack, self.key, units, tasks))
            if d:
                t, c = d["taskhub"], d["celery"]
                self.log(f"  taskhub p50 {t['p50ms']} p99 {t['p99ms']} ms; Celery p50 {c['p50ms']} p99 {c['p99ms']} ms")
        if "waiters" in p.scenarios:
            self.log(f"9 claims for one created task with {p.waiters:,} long-poll claims waiting on its type")
            w = self.row(
                "waiters",
                lambda: dispatch.waiters_per_create(stack, self.owner, self.key, p.waiters, window=p.waiter_window),
            )
            if w:
                self.log(
                    f"  {w['claimsForOneTask']:g} claims, {w['statementsForOneTask']} statements,"
                    f" {w['replies']} replies (settled: {w['settled']}, in {w['settleSeconds']} s)"
                )
        if "fleet" in p.scenarios:
            self.log(
                f"10 idle fleet: {', '.join(map(str, p.fleet))} simulated units (long polls of {p.fleet_wait:g} s)"
            )
            self.row(
                "fleet",
                lambda: push_queue.fleet_rows(stack, self.owner, p.fleet, p.fleet_seconds, p.fleet_wait),
            )
            for f in self.results.get("fleet", []):
                self.log(
                    f"  N={f['units']}: {f['requestsPerSecond']} req/s, {f['hubWebCpuMsPerUnitSecond']} ms CPU/unit/s,"
                    f" errors {f['errors']}"
                )
        if "results" in p.scenarios:
            stack.stop("web")
            waits, events, hooks = p.results
            self.log(
                f"11 results to the client: {waits} producer waits, {events} SSE events, {hooks} webhooks (runhub)"
            )
            r = self.row("results", lambda: push_queue.results_rows(stack, waits, events, hooks))
            if r:
                self.log(f"  wait p99 {r['wait']['p99ms']} ms, SSE p99 {r['sse']['p99ms']} ms")
            if "scale" in p.scenarios:  # its lists and heartbeats go through the web
                stack.start_web(workers=self.workers, threads=self.threads, extra=self.gunicorn_extra)

    def run_upkeep(self) -> None:
        """Issue 15's schedules and prune rows (bench.queue_upkeep, its own processes)."""
        p, stack = self.p, self.stack
        if "schedules" in p.scenarios:
            self.log(f"12 schedules: {p.schedules:,} firing in one minute (two beats; waits for the minute)")
            sch = self.row("schedules", lambda: push_queue.schedules_row(stack, p.schedules))
            if sch:
                self.log(f"  exactly once: {sch['exactlyOnce']}; lag p99 {sch['lagP99s']} s")
        if "prune" in p.scenarios:
            rows, phase = p.prune
            self.log(f"13 prune: {rows:,} finished tasks, claims alone and beside the pruner for {phase:g} s")
            pr = self.row("prune", lambda: push_queue.prune_row(stack, rows, phase))
            if pr:
                self.log(f"  {pr['pruneRowsPerSecond']:,} rows/s")

    def run_scale(self) -> None:
        p, stack = self.p, self.stack
        out: dict[str, Any] = {}
        self.results["scale"] = out  # filled as it goes: a crash keeps what was measured
        self.fresh()
        self.log(f"7 scale: seeding {p.scale_tasks:,} tasks")
        out["seedSeconds"] = scale.seed_tasks(stack, self.owner, p.scale_tasks)
        self.log(f"  seeded in {out['seedSeconds']:.0f}s; listing")
        out["lists"] = scale.lists(stack, self.key, repeat=p.list_repeat, meter=self.meter())
        for q in out["lists"]:
            self.log(f"  {q['query']}: p50 {q['p50ms']:.1f} ms, p99 {q['p99ms']:.1f} ms")
        self.log("  heartbeat of a unit with 10,000 finished tasks, against a fresh one")
        out["heartbeatHistory"] = scale.heartbeat_history(stack, self.owner, finished=10_000, repeat=p.list_repeat)
        hh = out["heartbeatHistory"]
        self.log(f"  fresh p50 {hh['rookie']['p50ms']:.1f} ms; veteran p50 {hh['veteran']['p50ms']:.1f} ms")
        units, tasks, dead = p.scale_fleet
        self.log(f"  sweeper: {units:,} units, {tasks:,} RUNNING tasks, {dead:,} dead")
        out["sweeper"] = scale.sweeper(
            stack, self.owner, units=units, tasks=tasks, dead=dead, timeout=float(p.knobs["UNIT_HEARTBEAT_TIMEOUT"])
        )
        sw = out["sweeper"]
        self.log(f"  sweeper: {sw['seconds']:.2f}s, {sw['queries']} queries, {sw['result']}")
        self.log("  memory: taskhub-unit with 50 running tasks")
        agent = scale.agent_memory(stack, self.key, tasks=50, settle=10)
        self.log(f"  agent: {agent}")
        self.results["memory"] = {"agent": agent}

    def _warm_up(self) -> None:
        import urllib.request

        for _ in range(20):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.stack.web_port}/api/v1/health", timeout=5).read()

    def _web_memory(self) -> dict[str, Any]:
        workers = self.stack.web_workers() if "web" in self.stack.procs else []
        peaks = [memory_kb(pid)["peak"] / 1024 for pid in workers]
        rss = [memory_kb(pid)["rss"] / 1024 for pid in workers]
        if not peaks:
            return {}
        return {"gunicornWorkerPeakMb": max(peaks), "gunicornWorkerRssMb": max(rss), "gunicornWorkers": len(peaks)}


def lock_errors_in_logs(text: str) -> int:
    return len(re.findall(r"\((?:1213|1205),", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--json-out", type=Path, default=None, help="where to write the JSON (default bench/results/)")
    parser.add_argument("--concurrency", default="", help="comma-separated client counts (default: the profile's)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured level")
    parser.add_argument("--repeat", type=int, default=None, help="scale: requests per list query (default 50)")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="gunicorn threads per worker (default 1: sync)")
    parser.add_argument("--gunicorn-arg", action="append", default=[], help="extra gunicorn flag (repeatable)")
    parser.add_argument(
        "--web-worker",
        choices=("asgi", "wsgi"),
        default="asgi",
        help="WEB_WORKER of the gunicorn config: asgi (production's, uvicorn workers) or wsgi (gthread/sync)",
    )
    parser.add_argument(
        "--claim-wait",
        type=float,
        default=None,
        help="lifecycle units' long-poll waitSeconds (default: the profile's; 0 polls as before long polls)",
    )
    parser.add_argument(
        "--lifecycle-rounds",
        type=int,
        default=None,
        help="lifecycle: rounds of (polling units, long-poll units, Celery), interleaved (default 1)",
    )
    parser.add_argument(
        "--app-dir", type=Path, default=ROOT, help="run gunicorn/Celery from another taskhub tree (A/B comparisons)"
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the bench database afterwards")
    parser.add_argument("--db-name", default=None, help="the bench database (created and dropped by the run)")
    parser.add_argument("--redis-db", type=int, default=None, help="Redis DB number (default: a free one from 3)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.only:
        wanted = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = [s for s in wanted if s not in SCENARIOS]
        if unknown:
            parser.error(f"--only: unknown scenario(s) {', '.join(unknown)}")
        profile = replace(profile, scenarios=wanted)
    if args.concurrency:
        profile = replace(profile, concurrencies=tuple(int(c) for c in args.concurrency.split(",")))
    if args.duration:
        profile = replace(profile, duration=args.duration)
    if args.repeat:
        profile = replace(profile, list_repeat=args.repeat)
    if args.workers:
        profile = replace(profile, workers=args.workers)
    if args.threads:
        profile = replace(profile, threads=args.threads)
    if args.claim_wait is not None:
        profile = replace(profile, claim_wait=args.claim_wait)
    if args.lifecycle_rounds:
        profile = replace(profile, lifecycle_rounds=args.lifecycle_rounds)
    push_queue.raise_open_files()

    def log(text: str) -> None:
        print(text, flush=True)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = ROOT / "var" / "bench" / f"{profile.name}-{stamp}"
    db = Db.from_env(args.db_name or profile.db_name)
    results: dict[str, Any] = {}
    crashed = ""
    with claim_resources(db.name, args.redis_db, profile.redis_db) as redis_db:
        knobs = {**profile.knobs, "WEB_WORKER": args.web_worker}
        stack = Stack(db=db, redis_db=redis_db, run_dir=run_dir, knobs=knobs, app_dir=args.app_dir.resolve())
        runner = Runner(profile, stack, log)
        runner.gunicorn_extra = args.gunicorn_arg
        meta: dict[str, Any] = {
            "profile": profile.name,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(db),
            "gunicorn": {
                "config": "taskhub/gunicorn.conf.py",
                "webWorker": args.web_worker,
                "workers": profile.workers,
                "threads": profile.threads,
                "workerClass": (
                    f"uvicorn (taskhub.uvicorn_worker.Worker), sync views on {profile.threads} thread(s)"
                    if args.web_worker == "asgi"
                    else ("gthread" if profile.threads > 1 else "sync")
                ),
                "extra": args.gunicorn_arg,
            },
            "claimWait": profile.claim_wait,
            "knobs": profile.knobs,
            "appDir": str(args.app_dir.resolve()),
            "database": db.name,
            "redisDb": redis_db,
        }
        log(f"taskhub bench, profile {profile.name}: {', '.join(profile.scenarios)}")
        try:
            results = runner.run()
        except BaseException as exc:  # report what ran, then fail
            crashed = "".join(traceback.format_exception(exc))[-3000:]
            results = runner.results
            if not isinstance(exc, Exception):
                log("interrupted")
        finally:
            logs = stack.server_log_text() if run_dir.exists() else ""
            stack.stop_all()
            if not args.keep_db:
                with contextlib.suppress(Exception):
                    db.drop()
            with contextlib.suppress(Exception):
                stack.flush_redis()
    prune_run_dirs(profile.name)
    meta["lockErrorsInServerLogs"] = lock_errors_in_logs(logs)
    meta["seconds"] = round(time.monotonic() - started, 1)
    http = [
        item["loadgenCpuShare"]
        for name, item in _items(results)
        if name not in ("raw", "celery") and isinstance(item.get("loadgenCpuShare"), float)
    ]
    others = [item["otherCpuShare"] for _, item in _items(results) if isinstance(item.get("otherCpuShare"), float)]
    meta["cpus"] = NCPU
    meta["loadgenCpuShare"] = sum(http) / len(http) if http else 0.0
    meta["loadgenCpuShareMax"] = max(http, default=0.0)
    meta["rawClientCpuShareMax"] = max((r["loadgenCpuShare"] for r in results.get("raw", [])), default=0.0)
    meta["celeryProducerCpuShare"] = results.get("celery", {}).get("loadgenCpuShare", 0.0)
    meta["otherCpuShare"] = sum(others) / len(others) if others else 0.0
    results = {"meta": meta, **results}
    if crashed:
        results["meta"]["crashed"] = crashed
    if runner.failed:
        results["meta"]["failedRows"] = runner.failed
    results["table"] = report.rows(results)
    results["honesty"] = report.honesty(results)
    if crashed or runner.failed:
        results["honesty"]["pass"] = False
    out = args.json_out or RESULTS / f"{profile.name}-{stamp}.json"
    report.write_json(results, out)
    log("")
    log(report.render(results))
    if crashed:
        log("FAIL: the run crashed:\n" + crashed)
    for name, error in runner.failed.items():
        log(f"FAIL: the {name} row raised: {error}")
    log(f"\nJSON: {out}  ({meta['seconds']:.0f} s)")
    return 0 if results["honesty"]["pass"] else 1


def prune_run_dirs(profile: str, keep: int = 5) -> None:
    """Each run keeps its processes' logs under var/bench/<profile>-<time>/; keep the latest few."""
    runs = sorted((ROOT / "var" / "bench").glob(f"{profile}-*"))
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _items(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for name, value in results.items():
        if isinstance(value, dict):
            out.append((name, value))
        elif isinstance(value, list):
            out.extend((name, v) for v in value if isinstance(v, dict))
    return out


if __name__ == "__main__":
    sys.exit(main())
