"""The rows of issue 14 (push-speed dispatch) and issue 15 (queue control) in `python -m bench`: each
calls the measuring module's own functions, so `make bench` and the module run by hand measure the
same thing.

- dispatch, waiters, fleet: bench.dispatch, on the run's web (gunicorn + uvicorn workers) restarted
  with one Prometheus directory for both workers (the claim counter the waiters row reads), a
  metrics token, as production runs it, and bench/sqlcount's statement counter; the Celery + Redis
  peer from bench.celery_peer.
- results: bench.results (producer wait, SSE, webhooks with a 20 %-failing receiver) on a hub of
  its own (`manage.py runhub`: web, Celery worker, beat) on a database of its own beside the run's.
- queues, schedules, prune: bench.queue_probe and bench.queue_upkeep, run as subprocesses with the
  run's database environment.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import dispatch, results
from bench.stack import Db, Stack
from testkit.hub import Hub


def raise_open_files() -> int:
    """The soft limit of open files up to the hard one (the idle fleet holds two connections a unit,
    here and in the hub's workers, which inherit it). Returns the new limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def metrics_knobs(run_dir: Path) -> dict[str, str]:
    """What the web needs for bench.dispatch.hub_counters: its token, one multiprocess directory,
    the statement counter (bench/sqlcount)."""
    return dispatch.hub_knobs(run_dir)


def dispatch_rows(stack: Stack, key: str, units: int, tasks: int) -> dict[str, Any]:
    """Real long-poll taskhub-unit processes against the Celery + Redis peer, in the same run."""
    taskhub = dispatch.dispatch_latency(stack, key, units, tasks)
    celery = dispatch.celery_latency(stack, tasks)
    ratio = taskhub["p99ms"] / celery["p99ms"] if celery.get("p99ms") else 0.0
    return {"taskhub": taskhub, "celery": celery, "p99Ratio": round(ratio, 2)}


def fleet_rows(stack: Stack, owner: int, sizes: tuple[int, ...], seconds: float, wait: float) -> list[dict[str, Any]]:
    return [dispatch.fleet(stack, owner, n, seconds, wait) for n in sizes]


def results_rows(stack: Stack, waits: int, events: int, webhooks: int, seed: int = 14) -> dict[str, Any]:
    """bench.results on its own runhub and database (`<run database>_results`, dropped afterwards),
    on the run's Redis DB number (emptied first: nothing queued by earlier rows reaches its worker)."""
    db = Db(stack.db.host, stack.db.port, stack.db.user, stack.db.password, f"{stack.db.name}_results")
    db.create()
    stack.flush_redis()
    workdir = stack.run_dir / "results"
    workdir.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(embedded=False, db_name=db.name, redis_db=stack.redis_db)
    env = results._env(args, workdir) | {"DB_HOST": db.host, "DB_PORT": str(db.port)}
    env |= {"DB_USERNAME": db.user, "DB_PASSWORD": db.password}
    hub = Hub(workdir, env=env, key_name="bench-results")
    try:
        hub.start()
        wait_ms = results.bench_wait(hub, waits)
        sse_ms = results.bench_sse(hub, events)
        hooks = results.bench_webhooks(hub, webhooks, seed)
    finally:
        hub.stop()
        with contextlib.suppress(Exception):
            db.drop()
    delivered = hooks["events"] if hooks["every_event_delivered"] else 0
    return {
        "wait": latency_summary(wait_ms),
        "sse": latency_summary(sse_ms),
        "webhooks": {
            **{k: v for k, v in hooks.items() if k != "latency_ms"},
            "latency": latency_summary(hooks["latency_ms"]),
            # Honesty: every event delivered, none answered 2xx twice.
            "lost": hooks["events"] - delivered,
            "double": hooks["delivered_twice"],
        },
    }


def latency_summary(values_ms: list[float]) -> dict[str, float]:
    from bench.load import percentile

    out = {f"p{q}ms": round(percentile(values_ms, q), 1) for q in (50, 90, 99)}
    return out | {"maxms": round(max(values_ms, default=0.0), 1), "n": len(values_ms)}


def queue_limits_row(stack: Stack, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = stack.probe("bench.queue_probe", str(seconds))
    return out


def schedules_row(stack: Stack, count: int) -> dict[str, Any]:
    out = stack.probe("bench.queue_upkeep", "--only", "schedules", "--schedules", str(count), timeout=300)
    row: dict[str, Any] = out["schedules"]
    # Honesty: every schedule fired once for the minute, none twice.
    row["double"] = row["fires"] - row["distinctSchedulesFired"]
    row["lost"] = row["schedules"] - row["distinctSchedulesFired"]
    return row


def prune_row(stack: Stack, rows: int, phase: float) -> dict[str, Any]:
    argv = ("--only", "prune", "--rows", str(rows), "--phase", str(phase))
    out = stack.probe("bench.queue_upkeep", *argv, timeout=1800)
    row: dict[str, Any] = out["prune"]
    row["requestedRows"] = rows
    return row


def guarded(log: Callable[[str], None], fn: Callable[[], Any]) -> tuple[Any, str]:
    """(fn(), "") or (None, the error) when it raised: one row failing leaves the others measured."""
    try:
        return fn(), ""
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        log(f"  FAILED: {text[:2000]}")
        return None, text[:3000]
