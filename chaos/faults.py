"""The fault injector: on a fixed seed, a shuffled list of faults, each kind N times, injected one
after another at random gaps while work flows. Every fault is logged with its time, so the checks
can tell a unit that was silenced from one that was not (I5, I6)."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaos.hub import Hub, Unit
from chaos.proxy import ReportProxy
from testkit import services

KINDS = ("kill-unit", "zombie-unit", "restart-web", "resend-reports", "restart-mariadb", "restart-redis")
SERVICE_KINDS = ("restart-mariadb", "restart-redis")


@dataclass
class FaultLog:
    injected: Counter[str] = field(default_factory=Counter)
    # (unit id, silent from, silent until): a SIGKILL until the unit's restart, a SIGSTOP until SIGCONT
    silences: list[tuple[str, float, float | None]] = field(default_factory=list)
    # (what, from, until): hub-side outages (web, MariaDB, Redis)
    outages: list[tuple[str, float, float]] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, detail: str) -> None:
        with self.lock:
            self.injected[kind] += 1
            self.events.append((time.time(), kind, detail))

    def silence(self, unit_id: str, since: float) -> int:
        with self.lock:
            self.silences.append((unit_id, since, None))
            return len(self.silences) - 1

    def unsilence(self, index: int, until: float) -> None:
        with self.lock:
            unit_id, since, _ = self.silences[index]
            self.silences[index] = (unit_id, since, until)


class Injector:
    def __init__(
        self,
        *,
        hub: Hub,
        units: list[Unit],
        proxy: ReportProxy,
        unit_env: dict[str, str],
        redis_port: int,
        heartbeat_timeout: float,
        rng: random.Random,
        log: FaultLog,
    ) -> None:
        self.hub, self.units, self.proxy, self.unit_env = hub, units, proxy, unit_env
        self.redis_port = redis_port
        self.heartbeat_timeout = heartbeat_timeout
        self.rng = rng
        self.log = log
        self.timers: list[tuple[threading.Timer, Callable[[], None]]] = []
        self.units_lock = threading.Lock()

    def plan(self, kinds: list[str], per_kind: int) -> list[str]:
        faults = [kind for kind in kinds for _ in range(per_kind)]
        self.rng.shuffle(faults)
        return faults

    def inject(self, kind: str) -> None:
        actions: dict[str, Callable[[], None]] = {
            "kill-unit": self.kill_unit,
            "zombie-unit": self.zombie_unit,
            "restart-web": self.restart_web,
            "resend-reports": self.resend_reports,
            "restart-mariadb": self.restart_mariadb,
            "restart-redis": self.restart_redis,
        }
        actions[kind]()

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        """Run `action` once, after `delay` or at `settle()`, whichever comes first."""
        once = threading.Lock()

        def run_once() -> None:
            if once.acquire(blocking=False):
                action()

        timer = threading.Timer(delay, run_once)
        timer.daemon = True
        self.timers.append((timer, run_once))
        timer.start()

    def _pick_unit(self) -> Unit | None:
        with self.units_lock:
            candidates = [u for u in self.units if not u.stopped and not u.killed]
            return self.rng.choice(candidates) if candidates else None

    def kill_unit(self) -> None:
        unit = self._pick_unit()
        if unit is None:
            return
        with self.units_lock:
            unit.send(signal.SIGKILL)
            unit.killed = True
        index = self.log.silence(unit.unit_id, time.time())
        self.log.note("kill-unit", unit.unit_id)

        def restart() -> None:
            with self.units_lock:
                if unit.popen is not None:
                    unit.popen.wait(timeout=10)
                unit.start(self.unit_env)
            self.log.unsilence(index, time.time())

        self._later(self.rng.uniform(0.5, 3.0), restart)

    def zombie_unit(self) -> None:
        """Freeze a unit past the heartbeat timeout, then let it go on as if nothing happened."""
        unit = self._pick_unit()
        if unit is None:
            return
        with self.units_lock:
            unit.send(signal.SIGSTOP)
            unit.stopped = True
        index = self.log.silence(unit.unit_id, time.time())
        self.log.note("zombie-unit", unit.unit_id)

        def resume() -> None:
            with self.units_lock:
                unit.send(signal.SIGCONT)
                unit.stopped = False
            self.log.unsilence(index, time.time())

        self._later(self.heartbeat_timeout + self.rng.uniform(2.0, 5.0), resume)

    def restart_web(self) -> None:
        sig = self.rng.choice([signal.SIGKILL, signal.SIGTERM])
        started = time.time()
        self.hub.restart_web(sig)
        self.log.outages.append(("web", started, time.time()))
        self.log.note("restart-web", signal.Signals(sig).name)

    def resend_reports(self) -> None:
        lost, replayed = self.rng.randint(1, 3), self.rng.randint(1, 4)
        self.proxy.lose_replies(lost)
        self.proxy.replay(replayed, self.rng.choice)
        self.log.note("resend-reports", f"lose {lost} replies, replay {replayed}")

    def restart_mariadb(self) -> None:
        started = time.time()
        try:
            services.stop_mariadb()
            time.sleep(self.rng.uniform(0.5, 2.0))
        finally:
            services.start_mariadb()
        self.log.outages.append(("mariadb", started, time.time()))
        self.log.note("restart-mariadb", f"{time.time() - started:.1f}s down")

    def restart_redis(self) -> None:
        started = time.time()
        try:
            services.stop_redis(self.redis_port)
            time.sleep(self.rng.uniform(0.5, 3.0))
        finally:
            services.start_redis(self.redis_port)
        self.log.outages.append(("redis", started, time.time()))
        self.log.note("restart-redis", f"{time.time() - started:.1f}s down")

    def settle(self, *, force: bool = False) -> None:
        """Wait for every pending restart/resume (force: make them happen now)."""
        for timer, run_once in self.timers:
            if force:
                timer.cancel()
                run_once()
            timer.join(timeout=60)

    def describe(self) -> dict[str, Any]:
        return {"injected": dict(self.log.injected), "events": len(self.log.events)}
