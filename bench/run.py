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
from pathlib import Path
from typing import Any

from bench import failover, http_scenarios, lifecycle, raw, report, scale, seed
from bench.stack import NCPU, ROOT, CpuMeter, Db, Stack, memory_kb, pids_named

RESULTS = ROOT / "bench" / "results"
ALL_SCOPES = "tasks:read,tasks:write,units:read,units:write,units:register"
PACKAGES = ("Django", "djangorestframework", "celery", "kombu", "gunicorn", "mysqlclient", "redis", "django-redis")
SCENARIOS = ("queries", "raw", "floor", "heartbeat", "claim", "lifecycle", "failover", "scale")


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
    failover: tuple[int, int, int] = (40, 5, 2)  # victims, tasks each, rescuers
    knobs: dict[str, str] = field(default_factory=dict)
    scale_tasks: int = 1_000_000
    scale_fleet: tuple[int, int, int] = (10_000, 100_000, 1_000)  # units, RUNNING tasks, dead units
    list_repeat: int = 50
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
        scenarios=("queries", "raw", "floor", "heartbeat", "claim", "lifecycle", "failover", "queues"),
        knobs={"UNIT_HEARTBEAT_TIMEOUT": "30", "SWEEP_INTERVAL": "5"},
    ),
    "smoke": Profile(
        "smoke",
        redis_db=4,
        scenarios=("queries", "raw", "floor", "heartbeat", "claim", "lifecycle", "failover"),
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
        knobs={"UNIT_HEARTBEAT_TIMEOUT": "2", "SWEEP_INTERVAL": "1"},
    ),
    "scale": Profile(
        "scale",
        redis_db=6,
        scenarios=("scale",),
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
            self.results["queues"] = self.stack.probe("bench.queue_probe")
            q = self.results["queues"]
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
            m, k, producers, batch = p.lifecycle
            claim_max, create_batch = p.lifecycle_batch
            self.log(f"5 lifecycle: {m} tasks created, claimed, logged, completed over HTTP; then Celery")
            runs: tuple[tuple[str, str, dict[str, Any]], ...] = (
                (
                    "lifecycle",
                    f"taskhub, batch forms (create {create_batch}/request, claim {{max: {claim_max}}}, 1 report/claim)",
                    {"mode": "batch", "batch": claim_max, "create_batch": create_batch},
                ),
                (
                    "lifecycleSingle",
                    f"taskhub, one request per step (claim {{max: {batch}}})",
                    {"mode": "single", "batch": batch},
                ),
            )
            for name, label, how in runs:
                self.fresh()

                def run(how: dict[str, Any] = how) -> dict[str, Any]:
                    return lifecycle.taskhub(
                        stack.db,
                        port,
                        self.key,
                        self.owner,
                        tasks=m,
                        units=k,
                        producers=producers,
                        meter=self.meter(),
                        **how,
                    )

                self.results[name] = self.step(label, run)
            self.results["celery"] = self.step(
                "celery",
                lambda: lifecycle.celery(
                    stack,
                    tasks=m,
                    producers=producers,
                    meter_groups={"mariadb": pids_named("mariadbd"), "redis": pids_named("redis-server")},
                ),
            )
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
        if "scale" in p.scenarios:
            self.run_scale()
        self.results["memory"] = {**self.results.get("memory", {}), **self._web_memory()}
        return self.results

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
        stack = Stack(
            db=db, redis_db=redis_db, run_dir=run_dir, knobs=dict(profile.knobs), app_dir=args.app_dir.resolve()
        )
        runner = Runner(profile, stack, log)
        runner.gunicorn_extra = args.gunicorn_arg
        meta: dict[str, Any] = {
            "profile": profile.name,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(db),
            "gunicorn": {
                "config": "taskhub/gunicorn.conf.py",
                "workers": profile.workers,
                "threads": profile.threads,
                "workerClass": "gthread" if profile.threads > 1 else "sync",
                "extra": args.gunicorn_arg,
            },
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
    results["table"] = report.rows(results)
    results["honesty"] = report.honesty(results)
    if crashed:
        results["honesty"]["pass"] = False
    out = args.json_out or RESULTS / f"{profile.name}-{stamp}.json"
    report.write_json(results, out)
    log("")
    log(report.render(results))
    if crashed:
        log("FAIL: the run crashed:\n" + crashed)
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
