"""The hub under test, as production runs it: gunicorn, a Celery worker and Celery beat (database
scheduler) on MariaDB and Redis; and the `taskhub-unit` processes. A supervisor thread restarts
any hub process that dies on its own (as systemd or compose would) and counts it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
GUNICORN = ("--workers", "2", "--threads", "4", "--timeout", "60", "--graceful-timeout", "5")
BEAT = ("--scheduler", "django_celery_beat.schedulers:DatabaseScheduler", "--pidfile", "", "--max-interval", "1")


def api(base: str, method: str, path: str, token: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    """(status, JSON body) of one call; status 0 when the hub did not answer."""
    request = urllib.request.Request(
        f"{base}/api/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


@dataclass
class Proc:
    name: str
    command: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    expected_down: bool = False

    def start(self, env: dict[str, str]) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        if self.popen is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(timeout=10)


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

    def manage(self, *args: str, timeout: float = 600) -> str:
        out = subprocess.run(
            [PY, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if out.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def prepare(self) -> str:
        """Migrate, register the beat jobs, make the API key. Returns the key."""
        self.manage("migrate", "--noinput", "-v0")
        self.manage("setup_beat", "--reset")
        scopes = "tasks:read,tasks:write,units:read,units:write,units:register"
        return self.manage("create_api_key", "chaos", "--scopes", scopes).strip().splitlines()[-1]

    def start(self) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        celery = [PY, "-m", "celery", "-A", "taskhub"]
        self.procs = {
            "web": Proc(
                "web",
                [PY, "-m", "gunicorn", "taskhub.wsgi:application", "--bind", f"127.0.0.1:{self.port}", *GUNICORN],
                logs / "web.log",
            ),
            "worker": Proc(
                "worker",
                [*celery, "worker", "--loglevel", "WARNING", "--concurrency", "2", "--hostname", "chaos-worker@%h"],
                logs / "worker.log",
            ),
            "beat": Proc(
                "beat",
                [*celery, "beat", "--loglevel", "WARNING", *BEAT],
                logs / "beat.log",
            ),
        }
        for proc in self.procs.values():
            proc.start(self.env)
        self.wait_web()
        threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True).start()

    def wait_web(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = api(self.base, "GET", "/health/database", "")
            if status == 200:
                return
            time.sleep(0.25)
        raise RuntimeError(f"the web server did not come up; see {self.procs['web'].log}")

    def restart_web(self, sig: int) -> None:
        web = self.procs["web"]
        with self.lock:
            web.expected_down = True
        try:
            web.signal_group(sig)
            if web.popen is not None:
                try:
                    web.popen.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    web.signal_group(signal.SIGKILL)
                    web.popen.wait(timeout=10)
            web.start(self.env)
            self.wait_web()
        finally:
            with self.lock:
                web.expected_down = False

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            for proc in self.procs.values():
                with self.lock:
                    if proc.expected_down or proc.alive or self._stop.is_set():
                        continue
                    self.restarts[proc.name] += 1
                    proc.start(self.env)

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
        command += ["--drain-timeout", "5", "--request-timeout", "10", "--retry-max", "2", "--data-dir", str(data)]
        # The kill-unit fault restarts a unit as its supervisor would, within seconds: without
        # --replace the new process would find the killed one still live and stop (exit 4).
        command += ["--replace"]
        units.append(Unit(unit_id, command, workdir / "logs" / f"{unit_id}.log"))
    return units
