"""A real `manage.py runhub` for the end-to-end tests: a temporary SQLite file and broker folders,
a free port, its terminal output in a file, and what is needed to watch its process tree."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
SCRUBBED_PREFIXES = ("DB_", "REDIS_", "CELERY_", "SQLITE_", "TASKHUB_", "DJANGO_", "UNIT_", "TASK_", "API_")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def call(base: str, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def descendants(pid: int) -> list[int]:
    """Processes below pid at any depth, from /proc (runhub's children run in sessions of their own)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


def alive(pids: list[int]) -> list[int]:
    """Those of pids still running (a zombie has ended: only its parent's wait is missing)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            running.append(pid)
    return running


def hub_env(tmp: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env |= {
        # Empty, not unset: a developer's .env must not fill these in either.
        "DB_HOST": "",
        "REDIS_HOST": "",
        "CELERY_BROKER_URL": "",
        "VAR_DIR": str(tmp / "var"),
        "LOG_DIR": str(tmp / "logs"),
        "SQLITE_PATH": str(tmp / "hub.sqlite3"),
        "UNIT_HEARTBEAT_TIMEOUT": "2",
        "UNIT_HEARTBEAT_INTERVAL": "0.5",
        "SWEEP_INTERVAL": "1",
        "APP_ENV": "development",
        "PYTHONUNBUFFERED": "1",
    }
    return env | overrides


class Hub:
    """`manage.py runhub` on a migrated temporary database, with an API key holding every scope."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.env = hub_env(tmp, **env)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/api/v1"
        self.log_path = tmp / "runhub.log"
        self.key = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self) -> Hub:
        self.manage("migrate", "--noinput", "-v0")
        self.manage("setup_beat")
        scopes = "tasks:read,tasks:write,units:read,units:write,units:register"
        self.key = self.manage("create_api_key", "e2e", "--scopes", scopes).split()[-1]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "runhub", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._healthy, 90, "the web server")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"runhub exited:\n{self.output()}"
        return port_open(self.port) and call(self.base, "GET", "/health")[0] == 200

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def wait_for_line(self, text: str, timeout: float = 90) -> int:
        """The index of the first output line containing text."""
        return (
            wait_for(
                lambda: next((i + 1 for i, line in enumerate(self.lines()) if text in line), 0), timeout, repr(text)
            )
            - 1
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        tree = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in alive(tree):  # whatever a failed test left behind
            os.kill(pid, signal.SIGKILL)


@contextmanager
def running_hub(tmp: Path, **env: str) -> Iterator[Hub]:
    """A started Hub, stopped afterwards; the end of its output is printed (pytest shows it on failure)."""
    hub = Hub(tmp, **env)
    try:
        yield hub.start()
    finally:
        hub.stop()
        print(hub.output()[-3000:])
