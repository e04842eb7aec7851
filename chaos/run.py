"""The chaos run: a real hub on MariaDB and Redis, `taskhub-unit` processes, a stream of tasks,
and faults on a fixed seed; then the invariants I1-I7, checked from the database.

    python -m chaos                         # the full run: every fault kind 10 times
    python -m chaos --per-kind 2 --tasks 120  # a small one (CI runs this size)
    python -m chaos --no-service-restarts   # leave the shared MariaDB and Redis alone

Exit status 0 when every invariant held and every fault kind was injected --per-kind times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.faults import HUB_OUTAGES, KINDS, PAUSE_AFTER_HANDLER, SERVICE_KINDS, THROTTLED_UNIT_RATE, FaultLog, Injector
from chaos.hub import PY, ROOT, Hub, api, unit_fleet
from chaos.proxy import ReportProxy
from testkit import services
from testkit.ports import free_port

TASK_TYPE = "CHAOS"
ACCESS_LINE = re.compile(r" (?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) \S+ (\d{3}) ")
INVARIANTS = {
    "I1": "nothing lost",
    "I2": "one live attempt",
    "I3": "one accepted result",
    "I4": "retries, failovers capped",
    "I5": "failover within bound",
    "I6": "none taken from live unit",
    "I7": "gap-free history",
    "D": "no lease run twice",
    "R14": "no spooled result lost",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "8")))
    p.add_argument(
        "--per-kind", type=int, default=int(os.environ.get("CHAOS_PER_KIND", "10")), help="faults of each kind"
    )
    p.add_argument("--tasks", type=int, default=int(os.environ.get("CHAOS_TASKS", "400")))
    p.add_argument("--units", type=int, default=4)
    p.add_argument("--capacity", type=int, default=3)
    p.add_argument("--gap", type=float, default=1.5, help="mean seconds between two faults")
    p.add_argument("--faults", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--no-service-restarts", action="store_true", help="skip restart-mariadb and restart-redis")
    p.add_argument("--db-name", default=os.environ.get("CHAOS_DB", "taskhub_chaos"))
    p.add_argument("--redis-db", type=int, default=int(os.environ.get("CHAOS_REDIS_DB", "5")))
    p.add_argument("--drain-timeout", type=float, default=240)
    p.add_argument("--workdir", type=Path, default=None, help="logs and unit data (default: a temp dir)")
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("CHAOS_PORT", "0")),
        help="the hub's port, the units' proxy on the next one (default: free ports the kernel picks)",
    )
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    if args.no_service_restarts:
        kinds = [k for k in kinds if k not in SERVICE_KINDS]
    args.kinds = kinds
    return args


def hub_env(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    keep = {
        k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "CELERY_", "TASK_", "UNIT_", "API_"))
    }
    return keep | {
        "DB_HOST": os.environ.get("CHAOS_DB_HOST", "127.0.0.1"),
        "DB_PORT": os.environ.get("CHAOS_DB_PORT", "3306"),
        "DB_USERNAME": os.environ.get("CHAOS_DB_USER", "taskhub"),
        "DB_PASSWORD": os.environ.get("CHAOS_DB_PASSWORD", "taskhub"),
        "DB_DATABASE": args.db_name,
        "DB_CONNECT_TIMEOUT": "2",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": os.environ.get("CHAOS_REDIS_PORT", "6379"),
        "REDIS_DB": str(args.redis_db),
        "CACHE_KEY_PREFIX": f"chaos{args.redis_db}",
        "APP_ENV": "development",
        "DEBUG": "false",
        "LOG_LEVEL": "warn",
        "LOG_DIR": str(workdir / "logs"),
        "VAR_DIR": str(workdir / "var"),
        "UNIT_HEARTBEAT_TIMEOUT": "8",
        "UNIT_HEARTBEAT_INTERVAL": "1.5",
        "SWEEP_INTERVAL": "1",
        "TASK_MAX_RETRY_COUNT": "2",
        "TASK_RETRY_BACKOFF_BASE": "0.5",
        "TASK_RETRY_BACKOFF_MAX": "2",
        "TASK_MAX_FAILOVER_COUNT": "10",
        "API_THROTTLE_CLIENT": "1000000/min",
        # The throttled-unit fault needs a rate a unit can use up; the other faults none.
        "API_THROTTLE_UNIT": THROTTLED_UNIT_RATE if "throttled-unit" in args.kinds else "1000000/min",
        "API_THROTTLE_ANON": "1000000/min",
    }


class Submitter:
    """Submits the task stream, each task with its own Idempotency-Key, retried until the hub
    acknowledges it (so an outage never loses a submission, and a retry never doubles one)."""

    def __init__(self, base: str, key: str, n: int, duration: float, rng: random.Random) -> None:
        self.base, self.key, self.n, self.duration, self.rng = base, key, n, duration, rng
        self.acked: list[int] = []
        self.gave_up = 0
        self.cancelled = 0
        self.retried_submissions = 0
        self.thread = threading.Thread(target=self._run, name="chaos-submitter", daemon=True)

    def _config(self) -> dict[str, Any]:
        roll = self.rng.random()
        config: dict[str, Any] = {"seconds": round(self.rng.uniform(0.2, 2.5), 2), "steps": 4}
        if roll < 0.10:
            config["failAttempts"] = 1  # fails once, then succeeds on retry
        elif roll < 0.13:
            config["fail"] = "retryable"  # uses up its retries: the dead set
        elif roll < 0.15:
            config["fail"] = "permanent"
        return config

    def _submit(self, i: int) -> None:
        body = {
            "name": f"chaos {i}",
            "taskType": TASK_TYPE,
            "priority": self.rng.randint(0, 3),
            "config": self._config(),
        }
        headers = {"Idempotency-Key": f"chaos-{i}-{uuid.uuid4().hex[:8]}"}
        deadline = time.monotonic() + 120
        tries = 0
        while time.monotonic() < deadline:
            tries += 1
            status, reply = api(self.base, "POST", "/tasks", self.key, body, headers)
            if status in (200, 201) and isinstance(reply, dict):
                self.acked.append(int(reply["id"]))
                self.retried_submissions += tries > 1
                return
            time.sleep(min(0.2 * tries, 2.0))
        self.gave_up += 1

    def _run(self) -> None:
        pause = self.duration / max(self.n, 1)
        for i in range(self.n):
            self._submit(i)
            if self.acked and self.rng.random() < 0.03:  # a client changes its mind
                status, _ = api(
                    self.base, "PUT", f"/tasks/{self.rng.choice(self.acked)}/status", self.key, {"status": "CANCELLED"}
                )
                self.cancelled += status == 200
            time.sleep(self.rng.uniform(0, 2 * pause))


def drain(base: str, key: str, timeout: float) -> tuple[bool, float, dict[str, Any]]:
    """Wait until nothing is pending, running or waiting for a retry."""
    started = time.monotonic()
    stats: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        status, stats = api(base, "GET", "/tasks/stats", key)
        if status == 200:
            by = stats["byStatus"]
            if by["PENDING"] == 0 and by["RUNNING"] == 0 and by["PAUSED"] == 0 and stats["waitingRetry"] == 0:
                return True, time.monotonic() - started, stats
        time.sleep(1.0)
    return False, time.monotonic() - started, stats


def response_statuses(logs: Path) -> Counter[str]:
    """HTTP statuses the hub answered, from its access log (rotated files included)."""
    counts: Counter[str] = Counter()
    for path in sorted(logs.glob("access.log*")):
        for line in path.read_text(errors="replace").splitlines():
            match = ACCESS_LINE.search(line)
            if match:
                counts[match.group(1)] += 1
    return counts


def table(args: argparse.Namespace, result: dict[str, Any], faults: FaultLog, extra: dict[str, Any]) -> str:
    lines = [
        "",
        f"taskhub chaos run: seed {args.seed}, {args.units} taskhub-unit processes x capacity {args.capacity}, "
        f"{extra['elapsed']:.0f}s",
        "",
        f"{'tasks':<34}{'':>8}",
        f"  {'submitted (acknowledged)':<32}{result['acked']:>8}",
        f"  {'stored':<32}{result['tasks']:>8}",
    ]
    for key, value in sorted(result["stats"].items()):
        if key.startswith("status:"):
            lines.append(f"  {key[7:]:<32}{value:>8}")
    for key in (
        "attempts",
        "automatic retries",
        "failovers",
        "sweeper failovers",
        "poisoned",
        "history rows",
        "log lines",
    ):
        lines.append(f"  {key:<32}{result['stats'].get(key, 0):>8}")
    lines.append(f"  {'cancelled by the client':<32}{extra['cancelled']:>8}")
    lines.append(f"  {'drained in (s)':<32}{extra['drain']:>8.1f}")
    lines += ["", f"{'faults injected':<34}"]
    for kind in KINDS:
        wanted = args.per_kind if kind in args.kinds else 0
        lines.append(f"  {kind:<32}{faults.injected.get(kind, 0):>8}   (planned {wanted})")
    proxy = extra["proxy"]
    replayed = sum(v for k, v in proxy.items() if k.startswith("replayed:") and k[9:].isdigit())
    refused = proxy.get("unit:409", 0) + proxy.get("replayed:409", 0)
    repeats = proxy.get("unit:accepted=False", 0) + proxy.get("replayed:accepted=False", 0)
    restarts = extra["restarts"]
    lines.append(f"  {'  replies lost / reports replayed':<32}{proxy.get('replies-lost', 0):>5} / {replayed}")
    lines.append(f"  {'  stale reports refused (409)':<32}{refused:>8}")
    lines.append(f"  {'  repeats answered accepted=false':<32}{repeats:>8}")
    lines.append(f"  {'hub processes restarted by supervisor':<32}{sum(restarts.values()):>5}  {dict(restarts) or ''}")
    statuses = extra["statuses"]
    lines.append("")
    lines.append(f"{'hub responses':<34}" + "  ".join(f"{code}: {n}" for code, n in sorted(statuses.items())))
    lines.append(f"  {'server errors (500)':<32}{statuses.get('500', 0):>8}")
    lines += ["", "invariants"]
    for key, name in INVARIANTS.items():
        count = result["counts"][key]
        verdict = "held" if count == 0 else f"VIOLATED ({count})"
        note = ""
        if key == "I5":
            note = f"  worst {result['worstI5']:.1f}s beyond silence (timeout + sweep = {result['boundI5']:.0f}s)"
        lines.append(f"  {key} {name:<30}{verdict}{note}")
        for problem in result["problems"][key][:5]:
            lines.append(f"       - {problem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="taskhub-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    env = hub_env(args, workdir)
    redis_port = int(env["REDIS_PORT"])
    print(
        f"chaos: seed {args.seed}, faults {args.kinds} x{args.per_kind}, {args.tasks} tasks; logs in {workdir}",
        flush=True,
    )
    services.start_mariadb()
    services.start_redis(redis_port)
    services.recreate_database(
        host=env["DB_HOST"],
        port=int(env["DB_PORT"]),
        user=env["DB_USERNAME"],
        password=env["DB_PASSWORD"],
        name=args.db_name,
    )
    services.flush_redis_db(host=env["REDIS_HOST"], port=redis_port, db=args.redis_db)
    hub = Hub(env=env, workdir=workdir, port=args.port or free_port())
    key = hub.prepare()
    proxy = ReportProxy(hub.port, port=args.port + 1 if args.port else 0)
    faults = FaultLog()
    units = unit_fleet(
        args.units,
        server=f"http://127.0.0.1:{proxy.port}",
        key=key,
        workdir=workdir,
        capacity=args.capacity,
        task_type=TASK_TYPE,
    )
    unit_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKHUB_")}
    if "crash-after-handler" in args.kinds:  # a window to kill units in, after a handler returned
        unit_env["TASKHUB_UNIT_TEST_PAUSE_AFTER_HANDLER"] = PAUSE_AFTER_HANDLER
    injector = Injector(
        hub=hub,
        units=units,
        proxy=proxy,
        unit_env=unit_env,
        redis_port=redis_port,
        heartbeat_timeout=float(env["UNIT_HEARTBEAT_TIMEOUT"]),
        rng=rng,
        log=faults,
        key=key,
    )
    plan = injector.plan(args.kinds, args.per_kind)
    started = time.monotonic()
    stop_requested = threading.Event()

    def on_signal(signum: int, _: Any) -> None:
        stop_requested.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    result: dict[str, Any] | None = None
    submitter: Submitter | None = None
    drained, drain_time = False, 0.0
    try:
        hub.start()
        proxy.start()
        for unit in units:
            unit.start(unit_env)
        # The hub outages block the injector for about timeout + 8 s each: the stream lasts that
        # much longer, so the later faults still meet running work.
        outages = sum(1 for kind in plan if kind in HUB_OUTAGES)
        duration = max(len(plan) * args.gap * 1.3 + outages * (float(env["UNIT_HEARTBEAT_TIMEOUT"]) + 8), 20.0)
        submitter = Submitter(hub.base, key, args.tasks, duration, random.Random(args.seed + 1))
        submitter.thread.start()
        for i, kind in enumerate(plan, 1):
            if stop_requested.is_set():
                break
            time.sleep(rng.expovariate(1 / args.gap))
            print(f"  fault {i}/{len(plan)}: {kind}", flush=True)
            injector.inject(kind)
        injector.settle()
        submitter.thread.join(timeout=duration + 300)
        print("chaos: faults done; draining", flush=True)
        drained, drain_time, _ = drain(hub.base, key, args.drain_timeout)
    finally:
        injector.settle(force=True)
        for unit in units:
            unit.send(signal.SIGCONT)
        services.start_mariadb()
        services.start_redis(redis_port)
        for unit in units:
            unit.stop()
        hub.stop()
        proxy.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    facts = {
        "acked": submitter.acked if submitter else [],
        "silences": faults.silences,
        "outages": faults.outages,
        "slack": 3.0,
        "foreignAccepted": faults.foreign_accepted,
        "duplicatesKept": faults.duplicates_kept,
        "spooledAtKill": faults.spooled_at_kill,
    }
    facts_path = workdir / "facts.json"
    facts_path.write_text(json.dumps(facts))
    out = subprocess.run(
        [PY, "-m", "chaos.verify", str(facts_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        print(out.stdout, out.stderr, file=sys.stderr)
        return 2
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not drained:
        result["counts"]["I1"] += 1
        result["problems"]["I1"].insert(0, f"the work did not drain within {args.drain_timeout:.0f}s")
    if submitter and submitter.gave_up:
        result["counts"]["I1"] += 1
        result["problems"]["I1"].insert(0, f"{submitter.gave_up} submissions were never acknowledged")
    statuses = response_statuses(workdir / "logs")
    extra: dict[str, Any] = {
        "elapsed": time.monotonic() - started,
        "drain": drain_time,
        "cancelled": submitter.cancelled if submitter else 0,
        "proxy": dict(proxy.counts),
        "restarts": hub.restarts,
        "statuses": statuses,
    }
    print(table(args, result, faults, extra))
    (workdir / "result.json").write_text(
        json.dumps(
            {
                "result": result,
                "injected": dict(faults.injected),
                **{k: v for k, v in extra.items() if k != "restarts"},
            },
            default=str,
        )
    )
    short = [k for k in args.kinds if faults.injected.get(k, 0) < args.per_kind]
    if short:
        print(f"\nFAILED: fault kinds injected fewer than {args.per_kind} times: {', '.join(short)}")
    violated = [k for k, n in result["counts"].items() if n]
    if statuses.get("500"):
        violated.append("no 500s")
    if violated:
        print(f"\nFAILED: invariants violated: {', '.join(violated)}")
    if not violated and not short:
        print("\nOK: every invariant held.")
    return 1 if violated or short else 0
