"""`python -m bench.results`: results that come to the client, on a real hub (runhub: gunicorn +
Celery worker + beat) on MariaDB + Redis (or the embedded default with --embedded).

- wait:    a producer holds GET /tasks/{id}?waitFor=terminal; a unit completes the task; the time
           from the unit's complete call returning to the producer's answer arriving.
- sse:     one GET /api/v1/events stream on the task type; the time from the complete call
           returning to the stream delivering the COMPLETED event.
- webhook: a subscription on PENDING; N tasks created in batches; a local receiver failing 20 % of
           requests (seeded); the time from the creating call returning to the event's first 2xx
           delivery, throughput, and the honesty checks: every event delivered, none answered 2xx twice.

Both waiting endpoints read again when the results doorbell rings for the task's committed change
(taskhub.base.historybell: Redis pub/sub, or Unix sockets with --embedded); RESULTS_POLL_INTERVAL
(2 s) is only their safety net. Targets are not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import percentile
from testkit.hub import Hub, call, embedded_env, scrubbed_environ
from testkit.waiting import wait_for
from tests.webhook_receiver import receiver

ROOT = Path(__file__).resolve().parent.parent


def _env(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    knobs = {"WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_BACKOFF_BASE": "0.2", "WEBHOOK_BACKOFF_MAX": "2"}
    if args.embedded:
        return embedded_env(workdir, **knobs)
    return scrubbed_environ() | {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": "3306",
        "DB_USERNAME": "taskhub",
        "DB_PASSWORD": "taskhub",
        "DB_DATABASE": args.db_name,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": "6379",
        "REDIS_DB": str(args.redis_db),
        "CACHE_KEY_PREFIX": f"bench-results-{os.getpid()}",
        "APP_ENV": "development",
        "DEBUG": "false",
        "LOG_DIR": str(workdir / "logs"),
        "VAR_DIR": str(workdir / "var"),
        "PYTHONUNBUFFERED": "1",
        **knobs,
    }


class Unit:
    def __init__(self, hub: Hub, unit_id: str, unit_type: str) -> None:
        body = {"id": unit_id, "unitType": unit_type, "unitName": unit_id, "capacity": 50}
        status, reply = call(hub.base, "POST", "/execution-units/register", hub.key, body)
        assert status in (200, 201), reply
        self.base, self.token, self.id = hub.base, reply["token"], unit_id

    def claim_one(self) -> dict[str, Any]:
        while True:
            status, reply = call(self.base, "POST", f"/execution-units/{self.id}/claim", self.token, {"max": 1})
            assert status == 200, reply
            if reply["items"]:
                return dict(reply["items"][0])
            time.sleep(0.01)

    def complete(self, task: dict[str, Any]) -> float:
        body = {"attempt": task["attempt"], "result": {}}
        status, reply = call(self.base, "POST", f"/tasks/{task['id']}/complete", self.token, body)
        assert status == 200 and reply["accepted"], reply
        return time.perf_counter()


def bench_wait(hub: Hub, n: int) -> list[float]:
    unit = Unit(hub, f"bench-wait-{os.getpid()}", "BENCH_WAIT")
    latencies = []
    for i in range(n):
        task = hub.api("POST", "/tasks", {"name": f"w{i}", "taskType": "BENCH_WAIT"})
        claimed = unit.claim_one()
        seen: dict[str, float] = {}

        def waiter(task_id: int = task["id"], seen: dict[str, float] = seen) -> None:
            status, body = call(
                hub.base, "GET", f"/tasks/{task_id}?waitFor=terminal&waitSeconds=20", hub.key, timeout=30
            )
            assert status == 200 and body["status"] == "COMPLETED", body
            seen["at"] = time.perf_counter()

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1 + random.random() * 0.25)  # the waiter is held; complete at a random phase of its polls
        done_at = unit.complete(claimed)
        thread.join(30)
        latencies.append((seen["at"] - done_at) * 1000)
    return latencies


def bench_sse(hub: Hub, n: int) -> list[float]:
    unit = Unit(hub, f"bench-sse-{os.getpid()}", "BENCH_SSE")
    request = urllib.request.Request(f"{hub.base}/events?taskType=BENCH_SSE")
    request.add_header("Authorization", f"Bearer {hub.key}")
    stream = urllib.request.urlopen(request, timeout=60)
    seen: dict[int, float] = {}
    ready = threading.Event()

    def follow() -> None:
        for line in stream:
            ready.set()
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event["toStatus"] == "COMPLETED":
                    seen[event["taskId"]] = time.perf_counter()
                    if len(seen) >= n:
                        return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert ready.wait(30)
    done: dict[int, float] = {}
    for i in range(n):
        task = hub.api("POST", "/tasks", {"name": f"s{i}", "taskType": "BENCH_SSE"})
        claimed = unit.claim_one()
        time.sleep(random.random() * 0.25)
        done[task["id"]] = unit.complete(claimed)
        task_id: int = task["id"]
        wait_for(lambda: task_id in seen, 30, "the stream to deliver the completion")  # noqa: B023
    stream.close()
    return [(seen[t] - done[t]) * 1000 for t in done]


def bench_webhooks(hub: Hub, n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with receiver(lambda k: 500 if rng.random() < 0.2 else 200) as hook_receiver:
        hub.api("POST", "/webhooks", {"url": hook_receiver.url, "events": ["PENDING"], "taskType": "BENCH_HOOK"})
        time.sleep(2.5)  # WEBHOOK_SUBSCRIPTIONS_TTL: every web worker sees the new subscription
        created: dict[int, float] = {}
        started = time.perf_counter()
        for start in range(0, n, 50):
            body = {"tasks": [{"name": f"h{i}", "taskType": "BENCH_HOOK"} for i in range(start, min(n, start + 50))]}
            status, reply = call(hub.base, "POST", "/tasks/batch", hub.key, body, timeout=30)
            assert status == 201, reply
            at = time.perf_counter()
            for item in reply["items"]:
                created[item["id"]] = at

        def delivered() -> dict[int, list[float]]:
            ok: dict[int, list[float]] = {}
            with hook_receiver.lock:
                for r in hook_receiver.requests:
                    if r.status == 200:
                        ok.setdefault(json.loads(r.body)["taskId"], []).append(r.at)
            return ok

        wait_for(lambda: set(delivered()) >= set(created), 120, "every event delivered", interval=0.2)
        time.sleep(1.0)  # anything sent twice would arrive by now
        ok = delivered()
        latencies = [(min(ok[t]) - created[t]) * 1000 for t in created]
        last = max(min(v) for v in ok.values())
        with hook_receiver.lock:
            failed = sum(1 for r in hook_receiver.requests if r.status != 200)
            total = len(hook_receiver.requests)
    return {
        "events": n,
        "requests": total,
        "failed_requests": failed,
        "every_event_delivered": set(ok) >= set(created),
        "delivered_twice": sum(1 for v in ok.values() if len(v) > 1),
        "throughput_per_s": round(n / (last - started), 1),
        "latency_ms": latencies,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", action="store_true", help="SQLite + filesystem broker instead of MariaDB + Redis")
    parser.add_argument("--db-name", default="th_i14_results")
    parser.add_argument("--redis-db", type=int, default=8)
    parser.add_argument("--waits", type=int, default=60)
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--webhooks", type=int, default=500)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    workdir = Path(args.workdir or f"/tmp/bench-results-{os.getpid()}")
    workdir.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    hub = Hub(workdir, env=_env(args, workdir), key_name=f"bench-results-{os.getpid()}")
    hub.start()
    try:
        waits = bench_wait(hub, args.waits)
        sse = bench_sse(hub, args.events)
        hooks = bench_webhooks(hub, args.webhooks, args.seed)
    finally:
        hub.stop()
    rows = [
        ("producer wait: completion -> answer", waits),
        ("SSE: completion -> event", sse),
        ("webhook: commit -> first 2xx (20% failing)", hooks["latency_ms"]),
    ]
    backend = "SQLite (embedded)" if args.embedded else "MariaDB + Redis"
    print(f"\nresults that come to the client — {backend}, runhub (gunicorn + uvicorn 2 + Celery 2 + beat)")
    print(f"{'row':48} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in rows:
        print(
            f"{name:48} {len(values):>5} {percentile(values, 50):>8.1f} {percentile(values, 90):>8.1f} "
            f"{percentile(values, 99):>8.1f} {max(values):>8.1f}"
        )
    print(
        f"webhooks: {hooks['events']} events, {hooks['requests']} requests ({hooks['failed_requests']} answered 500), "
        f"{hooks['throughput_per_s']} events/s delivered; every event delivered: {hooks['every_event_delivered']}; "
        f"events answered 2xx twice: {hooks['delivered_twice']}"
    )
    out = ROOT / "bench" / "results" / f"results-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"backend": backend, "wait_ms": waits, "sse_ms": sse, "webhooks": hooks}, indent=1))
    honest = hooks["every_event_delivered"] and hooks["delivered_twice"] == 0
    print("honesty:", "ok" if honest else "FAIL")
    return 0 if honest else 1


if __name__ == "__main__":
    sys.exit(main())
