"""The system under test, started the way production runs it, on data of its own.

One MariaDB database and one Redis DB number per profile (created and dropped here), gunicorn with
`taskhub/gunicorn.conf.py`, the real Celery worker and beat: all subprocesses, with DEBUG off and
APP_ENV=production. Every process started here is started in its own session and stopped by its
process-group id, nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import MySQLdb

from testkit import services
from testkit.hub import create_api_key, gunicorn_argv, manage, wait_healthy
from testkit.ports import free_port
from testkit.processes import Process, children

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


@dataclass(frozen=True)
class Db:
    host: str
    port: int
    user: str
    password: str
    name: str

    @classmethod
    def from_env(cls, name: str) -> Db:
        env = os.environ
        return cls(
            host=env.get("BENCH_DB_HOST") or env.get("DB_HOST") or "127.0.0.1",
            port=int(env.get("BENCH_DB_PORT") or env.get("DB_PORT") or 3306),
            user=env.get("BENCH_DB_USERNAME") or env.get("DB_USERNAME") or "taskhub",
            password=env.get("BENCH_DB_PASSWORD") or env.get("DB_PASSWORD") or "taskhub",
            name=name,
        )

    def connect(self, *, database: bool = True, autocommit: bool = True) -> Any:
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "charset": "utf8mb4",
            "connect_timeout": 5,
        }
        if database:
            kwargs["database"] = self.name
        conn = MySQLdb.connect(**kwargs)
        conn.autocommit(autocommit)
        return conn

    def create(self) -> None:
        services.recreate_database(**self._server, name=self.name)

    def drop(self) -> None:
        services.drop_database(**self._server, name=self.name)

    @property
    def _server(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password}


# --- /proc accounting -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak RSS) of a process, in kB."""
    out = {"rss": 0, "peak": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                out["peak"] = int(line.split()[1])
    except OSError:
        pass
    return out


def pids_named(name: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (for "everything else on the machine")."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


class CpuMeter:
    """CPU seconds used by named process groups over a window, plus the machine's total."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}
        self.busy0 = machine_busy_seconds()
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        out = {name: sum(cpu_seconds(p) for p in pids) - self.start[name] for name, pids in self.groups.items()}
        out["machine"] = machine_busy_seconds() - self.busy0
        out["wall"] = wall
        return out


# --- processes --------------------------------------------------------------------------------


@dataclass
class Stack:
    """One profile's database, Redis DB, settings and processes."""

    db: Db
    redis_db: int
    run_dir: Path
    knobs: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Process] = field(default_factory=dict)
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    web_port: int = 0
    # The tree the processes run from: another checkout of taskhub for A/B comparisons.
    app_dir: Path = ROOT

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "API_THROTTLE", "GUNICORN"))}
        env.update(
            {
                "APP_ENV": "production",
                "DEBUG": "false",
                "SECRET_KEY": self.secret_key,
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SECURE_SSL_REDIRECT": "false",
                "SECURE_HSTS_SECONDS": "0",
                "DB_HOST": self.db.host,
                "DB_PORT": str(self.db.port),
                "DB_USERNAME": self.db.user,
                "DB_PASSWORD": self.db.password,
                "DB_DATABASE": self.db.name,
                "DB_CONN_MAX_AGE": "600",
                "REDIS_HOST": os.environ.get("BENCH_REDIS_HOST", "127.0.0.1"),
                "REDIS_PORT": os.environ.get("BENCH_REDIS_PORT", "6379"),
                "REDIS_DB": str(self.redis_db),
                "CACHE_KEY_PREFIX": f"taskhub-bench-{self.redis_db}",
                # Throttling stays in the stack (same code path), with rates that never bind; a one-second
                # window keeps DRF's per-principal request history as short as production's would be.
                "API_THROTTLE_CLIENT": "1000000/s",
                "API_THROTTLE_UNIT": "1000000/s",
                "API_THROTTLE_ANON": "1000000/s",
                "API_THROTTLE_HEARTBEAT": "1000000/s",
                "LOG_DIR": str(self.run_dir / "logs"),
                "VAR_DIR": str(self.run_dir / "var"),
                "LOG_LEVEL": "info",
                "PYTHONUNBUFFERED": "1",
                **self.knobs,
            }
        )
        if self.app_dir != ROOT:  # the app comes from app_dir (first on sys.path); `bench` from here
            env["PYTHONPATH"] = str(ROOT)
        env.pop("CELERY_BROKER_URL", None)
        env.pop("CELERY_TASK_ALWAYS_EAGER", None)
        env.pop("PYTEST_CURRENT_TEST", None)
        env.update(extra)
        return env

    @property
    def redis_url(self) -> str:
        env = self.env()
        return f"redis://{env['REDIS_HOST']}:{env['REDIS_PORT']}/{self.redis_db}"

    def manage(self, *args: str, timeout: float = 300) -> str:
        return manage(self.env(), *args, cwd=self.app_dir, timeout=timeout)

    def setup(self) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "var").mkdir(parents=True, exist_ok=True)
        self.db.create()
        self.manage("migrate", "--noinput", "-v0")
        self.flush_redis()

    def flush_redis(self) -> None:
        env = self.env()
        services.flush_redis_db(host=env["REDIS_HOST"], port=int(env["REDIS_PORT"]), db=self.redis_db)

    def probe(self, module: str, *args: str, timeout: float = 600) -> Any:
        """Run `python -m module args` with this stack's environment; return the JSON it prints last
        (its whole output, or else its last line)."""
        result = subprocess.run(
            [PYTHON, "-m", module, *args],
            cwd=self.app_dir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode:
            raise RuntimeError(f"{module} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        try:
            return json.loads(result.stdout)
        except ValueError:
            return json.loads(result.stdout.strip().splitlines()[-1])

    def api_key(self, name: str, scopes: str) -> str:
        return create_api_key(self.env(), name, scopes, cwd=self.app_dir)

    def start(self, name: str, argv: list[str], **extra_env: str) -> Process:
        log_path = self.run_dir / "logs" / f"{name}.out"
        proc = Process(name, argv, env=self.env(**extra_env), log_path=log_path, cwd=self.app_dir).start()
        self.procs[name] = proc
        return proc

    def start_web(self, *, workers: int, threads: int, extra: list[str] | None = None) -> Process:
        self.web_port = free_port()
        proc = self.start(
            "web",
            gunicorn_argv(extra=extra or []),
            HOST="127.0.0.1",
            PORT=str(self.web_port),
            WEB_CONCURRENCY=str(workers),
            GUNICORN_THREADS=str(threads),
            GUNICORN_ACCESS_LOG="off",
        )
        url = f"http://127.0.0.1:{self.web_port}/api/v1/health"
        wait_healthy(url, proc, timeout=60, ready=lambda: len(children(proc.pid)) >= workers)
        return proc

    def web_workers(self) -> list[int]:
        return children(self.procs["web"].pid)

    def start_celery(self, *, beat: bool) -> None:
        self.start(
            "worker",
            [
                *(PYTHON, "-m", "celery", "-A", "taskhub", "worker", "--loglevel", "INFO", "--concurrency", "2"),
                *("--hostname", f"bench-{self.db.name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"),
            ],
        )
        if beat:
            self.manage("setup_beat", "--reset")
            self.start(
                "beat",
                [
                    *(PYTHON, "-m", "celery", "-A", "taskhub", "beat", "--loglevel", "INFO"),
                    *("--scheduler", "django_celery_beat.schedulers:DatabaseScheduler", "--pidfile", ""),
                ],
            )

    def stop(self, name: str, timeout: float = 15) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop(grace=timeout)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def server_log_text(self) -> str:
        parts = []
        for path in sorted((self.run_dir / "logs").glob("*")):
            if path.is_file():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)
