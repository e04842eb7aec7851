"""The load generator: closed-loop clients in forked processes, bounded in count and in time.

Each client is one process with one keep-alive HTTP/1.1 connection (stdlib `http.client`, loopback
only). A client function runs until its own work is done or the deadline passes; every request's
latency and status is recorded. The generator's own CPU time is measured, because it shares the
machine's cores with the server.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import resource
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

LOCK_MARKERS = ("1213", "1205", "Deadlock", "Lock wait timeout")
IDLE_RECONNECT = 3.0  # gunicorn's gthread keep-alive is 5 s: reconnect before it closes on us


class Http:
    """One keep-alive connection; records every call. Never retries: a transport error is counted."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", prefix: str = "/api/v1") -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.conn: http.client.HTTPConnection | None = None
        self.last_used = 0.0
        self.latencies: dict[str, array[float]] = {}
        self.statuses: Counter[str] = Counter()
        self.errors: list[str] = []
        self.server_errors = 0
        self.lock_errors = 0
        self.transport_errors = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is not None and time.monotonic() - self.last_used > IDLE_RECONNECT:
            self.conn.close()
            self.conn = None
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return self.conn

    def call(self, op: str, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Host": "127.0.0.1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        started = time.perf_counter()
        try:
            conn.request(method, self.prefix + path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.transport_errors += 1
            self._error(f"{op}: {type(exc).__name__}: {exc}")
            conn.close()
            self.conn = None
            return 0, None
        elapsed = time.perf_counter() - started
        self.last_used = time.monotonic()
        if response.will_close:
            conn.close()
            self.conn = None
        status = response.status
        # A 5xx answered fast is no sample of the operation's latency: keep those apart.
        self.latencies.setdefault(op if status < 500 else f"{op}:5xx", array("d")).append(elapsed)
        self.statuses[f"{op} {status}"] += 1
        if status >= 500:
            self.server_errors += 1
            text = raw[:500].decode(errors="replace")
            if any(marker in text for marker in LOCK_MARKERS):
                self.lock_errors += 1
            self._error(f"{op}: {status} {text}")
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return status, payload

    def _error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


@dataclass
class ClientResult:
    index: int
    started: float
    finished: float
    cpu: float
    latencies: dict[str, array[float]]
    statuses: Counter[str]
    errors: list[str]
    server_errors: int
    lock_errors: int
    transport_errors: int
    extra: dict[str, Any]


@dataclass
class LoadResult:
    clients: list[ClientResult]
    elapsed: float
    cpu: float  # CPU seconds the generator's processes used
    meters: dict[str, float] = field(default_factory=dict)

    def count(self, op: str, *statuses: int) -> int:
        keys = [f"{op} {s}" for s in statuses] if statuses else None
        total = 0
        for client in self.clients:
            for key, n in client.statuses.items():
                if (keys is None and key.rsplit(" ", 1)[0] == op) or (keys is not None and key in keys):
                    total += n
        return total

    def latencies(self, op: str) -> list[float]:
        out: list[float] = []
        for client in self.clients:
            out.extend(client.latencies.get(op, ()))
        return out

    def extras(self, key: str) -> list[Any]:
        out: list[Any] = []
        for client in self.clients:
            value = client.extra.get(key)
            if isinstance(value, list):
                out.extend(value)
            elif value is not None:
                out.append(value)
        return out

    @property
    def server_errors(self) -> int:
        return sum(c.server_errors for c in self.clients)

    @property
    def lock_errors(self) -> int:
        return sum(c.lock_errors for c in self.clients)

    @property
    def transport_errors(self) -> int:
        return sum(c.transport_errors for c in self.clients)

    @property
    def errors(self) -> list[str]:
        return [e for c in self.clients for e in c.errors][:20]

    def cpu_share(self) -> float:
        """The generator's share of the machine's CPU capacity during the run."""
        return self.cpu / (self.elapsed * (os.cpu_count() or 1)) if self.elapsed else 0.0


ClientFn = Callable[[Http, int, Any, float], dict[str, Any]]


def _cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(fn: ClientFn, index: int, arg: Any, port: int, duration: float, barrier: Any, out: Any) -> None:
    http = Http(port)
    extra: dict[str, Any] = {}
    started = finished = time.monotonic()
    cpu0 = _cpu_now()
    try:
        barrier.wait(timeout=120)
        started = time.monotonic()
        cpu0 = _cpu_now()
        extra = fn(http, index, arg, started + duration)
    except Exception:
        http.errors.append(traceback.format_exc()[-2000:])
        http.transport_errors += 1
    finished = time.monotonic()
    cpu = _cpu_now() - cpu0
    out.put(
        ClientResult(
            index,
            started,
            finished,
            cpu,
            http.latencies,
            http.statuses,
            http.errors,
            http.server_errors,
            http.lock_errors,
            http.transport_errors,
            extra,
        )
    )


def run_clients(
    fn: ClientFn,
    args: Sequence[Any],
    *,
    port: int,
    duration: float,
    meter: Callable[[], Any] | None = None,
) -> LoadResult:
    """Run one client process per item of `args`, all starting together; wait for all.

    `fn(http, index, arg, deadline)` does the work and returns extra data (picklable)."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(args) + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(fn, i, arg, port, duration, barrier, out), daemon=True)
        for i, arg in enumerate(args)
    ]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=120)
    started = time.monotonic()
    cpu_meter = meter() if meter is not None else None
    results = []
    hard_deadline = started + duration + 120
    for _ in procs:
        results.append(out.get(timeout=max(hard_deadline - time.monotonic(), 1)))
    meters = cpu_meter.stop() if cpu_meter is not None else {}
    for proc in procs:
        proc.join(timeout=30)
    results.sort(key=lambda r: r.index)
    elapsed = max(r.finished for r in results) - started
    return LoadResult(results, elapsed, sum(r.cpu for r in results), meters)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
