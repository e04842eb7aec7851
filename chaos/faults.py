"""The fault injector: on a fixed seed, a shuffled list of faults, each kind N times, injected one
after another at random gaps while work flows. Every fault is logged with its time, so the checks
can tell a unit that was silenced from one that was not (I5, I6)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.hub import ROOT, Hub, Unit, api
from chaos.proxy import ReportProxy
from taskhub_unit.spool import unseal
from testkit import services

# Issue 18's faults: the hub's own outages longer than the heartbeat timeout (web only; web, worker
# and beat; all, with the worker and beat back first), a unit's reports naming other units' tasks,
# a second process under a live unit's id, a unit whose token is throttled, and a unit killed right
# after a handler returned (its result spooled, not yet reported).
HUB_OUTAGES = ("outage-web", "outage-full", "outage-beat-first")
KINDS = (
    "kill-unit",
    "zombie-unit",
    "restart-web",
    "resend-reports",
    "restart-mariadb",
    "restart-redis",
    *HUB_OUTAGES,
    "foreign-reports",
    "duplicate-ids",
    "throttled-unit",
    "crash-after-handler",
)
SERVICE_KINDS = ("restart-mariadb", "restart-redis")
FOREIGN_UNIT = "chaos-foreign"
# The pause between a handler's return and its report (taskhub_unit.agent, tests only) that the
# crash-after-handler fault kills units in.
PAUSE_AFTER_HANDLER = "0.4"
# The unit rate the throttled-unit fault runs the hub with: ~3x what a chaos unit sends.
THROTTLED_UNIT_RATE = "900/min"


@dataclass
class FaultLog:
    injected: Counter[str] = field(default_factory=Counter)
    # (unit id, silent from, silent until): a SIGKILL until the unit's restart, a SIGSTOP until SIGCONT
    silences: list[tuple[str, float, float | None]] = field(default_factory=list)
    # (what, from, until): hub-side outages (web, MariaDB, Redis)
    outages: list[tuple[str, float, float]] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    # What the checks need of the new faults: foreign report items the hub accepted, second
    # processes under a live id that did not stop, (task, attempt) whose result was spooled when
    # its unit was killed.
    foreign_accepted: int = 0
    duplicates_kept: list[str] = field(default_factory=list)
    spooled_at_kill: list[tuple[int, int]] = field(default_factory=list)
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
        key: str = "",
    ) -> None:
        self.hub, self.units, self.proxy, self.unit_env = hub, units, proxy, unit_env
        self.key = key
        self._foreign_token = ""
        self._duplicates = 0
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
            "outage-web": lambda: self.hub_outage("web"),
            "outage-full": lambda: self.hub_outage("full"),
            "outage-beat-first": lambda: self.hub_outage("beat-first"),
            "foreign-reports": self.foreign_reports,
            "duplicate-ids": self.duplicate_ids,
            "throttled-unit": self.throttled_unit,
            "crash-after-handler": self.crash_after_handler,
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

    # --- issue 18 ---------------------------------------------------------------------------------

    def hub_outage(self, how: str) -> None:
        """The hub down for longer than the heartbeat timeout while every unit lives: no unit's
        work may fail over (I6), nothing is lost (I1)."""
        down_for = self.heartbeat_timeout + self.rng.uniform(2.0, 5.0)
        started = time.time()
        self.hub.outage(how, down_for, self.rng)
        self.log.outages.append((f"hub-{how}", started, time.time()))
        self.log.note(f"outage-{how}", f"{time.time() - started:.1f}s down (planned {down_for:.1f}s)")

    def _register_foreign(self) -> str:
        if not self._foreign_token:
            body = {"id": FOREIGN_UNIT, "unitType": "CHAOS_FOREIGN", "unitName": "foreign", "capacity": 1}
            status, reply = api(self.hub.base, "POST", "/execution-units/register", self.key, body)
            if status in (200, 201) and isinstance(reply, dict):
                self._foreign_token = str(reply["token"])
        return self._foreign_token

    def foreign_reports(self) -> None:
        """A live unit of another type sends batches naming other units' running tasks: every item
        refused (I2), and, since they lock no other unit's rows, no sweep or claim held up."""
        token = self._register_foreign()
        status, page = api(self.hub.base, "GET", "/tasks?status=RUNNING&limit=50", self.key)
        items = page.get("items", []) if status == 200 and isinstance(page, dict) else []
        sent = accepted = 0
        for _ in range(self.rng.randint(3, 6)):
            api(self.hub.base, "POST", f"/execution-units/{FOREIGN_UNIT}/heartbeat", token, {"currentLoad": 0})
            if not items:
                break
            reports = []
            for task in self.rng.sample(items, min(len(items), 20)):
                outcome = self.rng.choice(["complete", "fail", "progress"])
                item: dict[str, Any] = {"taskId": task["id"], "attempt": task["attempt"], "outcome": outcome}
                if outcome == "complete":
                    item["result"] = {"foreign": True}
                elif outcome == "progress":
                    item["progress"] = 99
                else:
                    item |= {"error": "foreign", "retryable": False}
                reports.append(item)
            code, reply = api(self.hub.base, "POST", "/tasks/reports", token, {"reports": reports})
            sent += len(reports)
            if code == 200 and isinstance(reply, dict):
                accepted += sum(1 for answer in reply.get("items", []) if answer.get("accepted"))
        with self.log.lock:
            self.log.foreign_accepted += accepted
        self.log.note("foreign-reports", f"{sent} items on others' tasks, {accepted} accepted")

    def duplicate_ids(self) -> None:
        """A second process (another machine: its own data dir) started with a live unit's id and
        no --replace: it must exit (code 4) and take nothing from the first (I6)."""
        unit = self._pick_unit()
        if unit is None:
            return
        self._duplicates += 1
        data = Path(unit.log).parent.parent / "units" / f"{unit.unit_id}-dup-{self._duplicates}"
        data.mkdir(parents=True, exist_ok=True)
        command = [arg for arg in unit.command if arg != "--replace"]
        command[command.index("--data-dir") + 1] = str(data)
        log_path = Path(unit.log).with_name(f"{unit.unit_id}-dup-{self._duplicates}.log")
        with open(log_path, "ab") as out:
            dup = subprocess.Popen(command, cwd=ROOT, env=self.unit_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code: int | None = dup.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
            dup.kill()
            dup.wait(timeout=10)
            with self.log.lock:
                self.log.duplicates_kept.append(f"a second {unit.unit_id} kept running for 30s")
        self.log.note("duplicate-ids", f"second {unit.unit_id}: exit {code}")

    def throttled_unit(self) -> None:
        """Use up a unit's request rate (its own token, unsealed from its spool with the enrolment
        key the harness gave it): its heartbeats must
        not be throttled into a failover (I6). Fails until heartbeats have a bucket of their own."""
        unit = self._pick_unit()
        if unit is None:
            return
        state = Path(unit.data_dir) / ".taskhub-unit" / unit.unit_id / "state.json"

        def token() -> str:
            try:
                return unseal(str(json.loads(state.read_text())["sealedToken"]), self.key)
            except (OSError, ValueError, KeyError):
                return ""

        current, throttled, refused = token(), 0, 0
        for _ in range(int(THROTTLED_UNIT_RATE.split("/")[0]) + 50):
            code, _ = api(self.hub.base, "GET", f"/execution-units/{unit.unit_id}", current)
            throttled += code == 429
            if code == 401:  # the unit registered again meanwhile (a restart): its new token
                refused += 1
                if refused > 20:
                    break
                time.sleep(0.2)
                current = token()
            if throttled >= 20:
                break
        self.log.note("throttled-unit", f"{unit.unit_id}: {throttled} requests throttled")

    def crash_after_handler(self) -> None:
        """SIGKILL a unit in the moment after a handler returned (its outcome spooled, not yet
        reported), then restart it: the next process replays the result (R14), the handler does
        not run again (D)."""
        unit = self._pick_unit()
        if unit is None:
            return
        spool = Path(unit.data_dir) / ".taskhub-unit" / unit.unit_id
        deadline = time.monotonic() + 15
        found: list[Path] = []
        while time.monotonic() < deadline and not found:
            found = sorted(spool.glob("outcome-*.json"))
            if not found:
                time.sleep(0.02)
        with self.units_lock:
            if unit.stopped or unit.killed:
                return
            unit.send(signal.SIGKILL)
            unit.killed = True
        index = self.log.silence(unit.unit_id, time.time())
        spooled = []
        for path in found:
            _, task_id, attempt = path.stem.split("-")
            spooled.append((int(task_id), int(attempt)))
        with self.log.lock:
            self.log.spooled_at_kill.extend(spooled)
        self.log.note("crash-after-handler", f"{unit.unit_id}: killed with {len(spooled)} result(s) spooled")

        def restart() -> None:
            with self.units_lock:
                if unit.popen is not None:
                    unit.popen.wait(timeout=10)
                unit.start(self.unit_env)
            self.log.unsilence(index, time.time())

        self._later(self.rng.uniform(0.3, 2.0), restart)

    def settle(self, *, force: bool = False) -> None:
        """Wait for every pending restart/resume (force: make them happen now)."""
        for timer, run_once in self.timers:
            if force:
                timer.cancel()
                run_once()
            timer.join(timeout=60)

    def describe(self) -> dict[str, Any]:
        return {"injected": dict(self.log.injected), "events": len(self.log.events)}
