"""The hub under test, as production runs it: gunicorn with uvicorn workers serving taskhub.asgi
(WEB_WORKER=asgi, so the units' long-poll claims really wait), a Celery worker and Celery beat
(database scheduler) on MariaDB and Redis; and the `taskhub-unit` processes (long-poll claims, their
default). A supervisor thread restarts
any hub process that dies on its own (as systemd or compose would) and counts it."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.hub import call, create_api_key, gunicorn_argv, migrate, wait_healthy
from testkit.processes import Process

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLAIM_WAIT = 20
WORKER = ("--concurrency", "2", "--hostname", "chaos-worker@%h")
BEAT = ("--scheduler", "django_celery_beat.schedulers:DatabaseScheduler", "--pidfile", "", "--max-interval", "1")


def api(base: str, method: str, path: str, token: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    """(status, JSON body) of one call; status 0 when the hub did not answer."""
    return call(f"{base}/api/v1", method, path, token, body, headers, timeout=15)


class Proc(Process):
    """A hub process the supervisor restarts when it dies while not `expected_down`."""

    expected_down = False


@dataclass
class Hub:
    env: dict[str, str]
    workdir: Path
    port: int
    procs: dict[str, Proc] = field(default_factory=dict)
    restarts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> str:
        """Migrate, register the beat jobs, make the API key. Returns the key."""
        migrate(self.env, reset_beat=True)
        return create_api_key(self.env, "chaos")

    def start(self) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        celery = [PY, "-m", "celery", "-A", "taskhub"]
        commands = {
            "web": gunicorn_argv(self.port),
            "worker": [*celery, "worker", "--loglevel", "WARNING", *WORKER],
            "beat": [*celery, "beat", "--loglevel", "WARNING", *BEAT],
        }
        self.procs = {
            name: Proc(name, argv, env=self.env, log_path=logs / f"{name}.log") for name, argv in commands.items()
        }
        for proc in self.procs.values():
            proc.start()
        self.wait_web()
        threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True).start()

    def wait_web(self, timeout: float = 90) -> None:
        # Not failing when the process exits: the supervisor may be starting it again meanwhile.
        wait_healthy(f"{self.base}/api/v1/health/database", timeout=timeout)

    def restart_web(self, sig: int) -> None:
        web = self.procs["web"]
        with self.lock:
            web.expected_down = True
        try:
            web.stop(grace=20, sig=sig)
            web.start()
            self.wait_web()
        finally:
            with self.lock:
                web.expected_down = False

    def outage(self, how: str, down_for: float, rng: random.Random) -> None:
        """The hub down for `down_for` seconds: "web" (the worker and beat go on), "full" (web,
        worker and beat, all back at once), "beat-first" (all down; the worker and beat back a few
        seconds before the web)."""
        names = ["web"] if how == "web" else ["web", "worker", "beat"]
        with self.lock:
            for name in names:
                self.procs[name].expected_down = True
        try:
            for name in names:
                self.procs[name].stop(grace=20, sig=rng.choice([signal.SIGKILL, signal.SIGTERM]))
            time.sleep(down_for)
            if how == "beat-first":
                for name in ("worker", "beat"):
                    self.procs[name].start()
                time.sleep(rng.uniform(2.0, 4.0))
                self.procs["web"].start()
            else:
                for name in names:
                    self.procs[name].start()
            self.wait_web()
        finally:
            with self.lock:
                for name in names:
                    self.procs[name].expected_down = False

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            for proc in self.procs.values():
                with self.lock:
                    if proc.expected_down or proc.running or self._stop.is_set():
                        continue
                    self.restarts[proc.name] += 1
                    proc.start()

    def stop(self) -> None:
        self._stop.set()
        for proc in self.procs.values():
            proc.stop()


@dataclass
class Unit:
    unit_id: str
    command: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    data_dir: Path = Path()
    stopped: bool = False  # SIGSTOPped (a zombie in the making)
    killed: bool = False  # SIGKILLed and not started again yet

    def start(self, env: dict[str, str]) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.killed = False

    def send(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self) -> None:
        if self.popen is None:
            return
        self.send(signal.SIGCONT)
        self.send(signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait(timeout=10)


def unit_fleet(n: int, *, server: str, key: str, workdir: Path, capacity: int, task_type: str) -> list[Unit]:
    units = []
    for i in range(n):
        unit_id = f"chaos-unit-{i + 1}"
        data = workdir / "units" / unit_id
        data.mkdir(parents=True, exist_ok=True)
        command = [str(Path(PY).with_name("taskhub-unit")), "--server", server, "--enroll-key", key, "--id", unit_id]
        command += ["--type", task_type, "--capacity", str(capacity), "--handler", "sleep", "--poll-interval", "0.3"]
        command += ["--claim-wait", str(CLAIM_WAIT)]  # long-poll claims (the agent's default), said out loud
        command += ["--drain-timeout", "5", "--request-timeout", "10", "--retry-max", "2", "--data-dir", str(data)]
        # The kill-unit fault restarts a unit as its supervisor would, within seconds: without
        # --replace the new process would find the killed one still live and stop (exit 4).
        command += ["--replace"]
        units.append(Unit(unit_id, command, workdir / "logs" / f"{unit_id}.log", data_dir=data))
    return units
