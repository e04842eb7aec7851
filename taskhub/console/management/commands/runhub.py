"""Start the whole hub in one command: web server (gunicorn + uvicorn workers on taskhub.asgi, as in
production), Celery worker and Celery beat.

Ctrl-C, SIGTERM and SIGHUP (the terminal that ran `make run` closing) stop all three; if one of them
dies, the others are stopped too, so a half-running hub never hides behind a live web server. If
runhub itself dies without stopping them (SIGKILL), the kernel sends each child SIGTERM
(PR_SET_PDEATHSIG), and each stops its own worker processes as on any SIGTERM.

The terminal stays readable: Celery logs at WARNING (our own loggers keep INFO, so a job that changed
something still says so), each request is in logs/access.log and only a 4xx/5xx reaches the terminal,
once (django.request). `--verbose` brings back Celery's INFO lines and the web server's access log.
The banner is printed again once the web server answers /api/v1/health and the worker and beat are up.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from taskhub.apikeys.models import ALL_SCOPES
from taskhub.celery import READY_DIR_ENV

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_SECONDS = 15
NOT_READY_NOTICE_SECONDS = 60


class Command(BaseCommand):
    help = "Run web + Celery worker + Celery beat together (one Ctrl-C stops all)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--web", choices=("gunicorn", "runserver"), default="gunicorn")
        parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
        parser.add_argument(
            "--verbose", action="store_true", help="Celery at INFO (every job run) and the web server's access log"
        )

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        if _port_taken(host, port):
            self.stderr.write(
                f"taskhub: port {port} on {host} is already in use (another taskhub still running?); "
                f"stop it or choose another port: make run PORT={port + 1}"
            )
            raise SystemExit(1)
        ready_dir = Path(tempfile.mkdtemp(prefix="taskhub-ready-"))
        env = dict(os.environ) | {READY_DIR_ENV: str(ready_dir)}
        if "PROMETHEUS_MULTIPROC_DIR" not in env:
            # One metrics directory for web and Celery processes, so /metrics sums them all
            # (job durations, failovers and retries are counted in the Celery worker).
            metrics_dir = Path(settings.VAR_DIR) / "metrics"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        commands = _commands(host, port, options["web"], options["workers"], options["verbose"])
        web_name = "runserver" if "runserver" in commands["web"] else "gunicorn"
        self.say(f"taskhub is starting: web ({web_name}), Celery worker and beat on {_base_url(host, port)} ...")
        probe_host = _probe_host()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        stop_requests: list[int] = []

        def request_stop(signum: int, _frame: Any) -> None:
            stop_requests.append(signum)
            if len(stop_requests) > 1:  # a second Ctrl-C: do not wait for a graceful stop
                _kill_groups(procs)

        for signum in STOP_SIGNALS:
            signal.signal(signum, request_stop)
        # Each child in a session of its own: the terminal's Ctrl-C reaches runhub alone, which stops
        # the children in order (a second SIGINT straight to Celery would make it a cold shutdown).
        for name, cmd in commands.items():
            procs[name] = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent())
        exit_code, reason = 0, ""
        started, ready, noticed = time.monotonic(), False, False
        try:
            while not stop_requests:
                dead = next(((name, proc) for name, proc in procs.items() if proc.poll() is not None), None)
                if dead is not None:
                    name, proc = dead
                    reason = f"{name} exited with {proc.returncode}"
                    self.stderr.write(f"taskhub: {reason}; stopping the hub")
                    exit_code = proc.returncode or 1
                    break
                if not ready:
                    waiting = _not_ready(ready_dir, host, port, probe_host)
                    if not waiting:
                        ready = True
                        self.banner(host, port, f"taskhub is ready ({web_name} + Celery worker + beat):")
                    elif not noticed and time.monotonic() - started > NOT_READY_NOTICE_SECONDS:
                        noticed = True
                        self.stderr.write(f"taskhub: still waiting for {', '.join(waiting)} (see above)")
                time.sleep(0.2 if not ready else 0.5)
            self.say("taskhub: stopping web, worker and beat ...")
            _stop(procs)
        finally:
            _kill_groups(procs)
            _reap(procs)
            shutil.rmtree(ready_dir, ignore_errors=True)
        self.say(f"taskhub stopped ({reason})" if reason else "taskhub stopped")
        if exit_code:
            raise SystemExit(exit_code)

    def banner(self, host: str, port: int, title: str) -> None:
        base = _base_url(host, port)
        self.say(self.style.SUCCESS(title))
        self.say(f"  API      {base}/api/v1")
        self.say(f"  Docs     {base}/api-docs")
        self.say(f"  Health   {base}/api/v1/health")
        self.say(f"  Admin    {base}/admin/   (create a login: .venv/bin/python manage.py createsuperuser)")
        self.say(f"  API key  .venv/bin/python manage.py create_api_key NAME --scopes {','.join(ALL_SCOPES)}")
        self.say(
            f"  Backend  {str(settings.DATABASES['default']['ENGINE']).rsplit('.', 1)[-1]}, "
            f"broker {settings.CELERY_BROKER_URL.split('@')[-1]}"
        )
        self.say(f"  Logs     {settings.LOG_DIR}/ (app.log, error.log, access.log)")
        self.say("Press Ctrl-C to stop all.")


def _commands(host: str, port: int, web: str, workers: int, verbose: bool) -> dict[str, list[str]]:
    python = sys.executable
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    runserver = [python, "manage.py", "runserver", bind, "--noreload"]
    # gunicorn with uvicorn workers serving taskhub.asgi, as in production: long-poll claims wait
    # in the event loop without a thread; sync views run on WEB_THREADS threads per worker. Static
    # files come through WhiteNoise (from the apps' folders as they change under DEBUG).
    gunicorn = [
        *(python, "-m", "gunicorn", "taskhub.asgi:application", "--bind", bind),
        *("--worker-class", "taskhub.uvicorn_worker.Worker", "--workers", str(workers)),
        *("--graceful-timeout", "10", "--keep-alive", "75"),
        *(("--access-logfile", "-") if verbose else ("--log-level", "warning")),
    ]
    # `--web runserver`: Django's development server (WSGI: a long-poll claim holds a thread there).
    celery = [python, "-m", "celery", "-A", "taskhub", "--quiet"]
    loglevel = "INFO" if verbose else "WARNING"
    return {
        "web": gunicorn if web == "gunicorn" else runserver,
        "worker": [
            *celery,
            *("worker", "--loglevel", loglevel, "--concurrency", "2"),
            *("--hostname", f"taskhub-worker-{os.getpid()}@%h"),
        ],
        "beat": [
            *celery,
            *("beat", "--loglevel", loglevel),
            *("--scheduler", "django_celery_beat.schedulers:DatabaseScheduler", "--pidfile", ""),
        ],
    }


def _port_taken(host: str, port: int) -> bool:
    """Whether something listens on host:port already (SO_REUSEADDR, as the servers bind: a port
    left in TIME_WAIT by the last run is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when runhub dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # looked up now: nothing to load between fork and exec
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # runhub died before prctl: no signal would ever come
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _not_ready(ready_dir: Path, host: str, port: int, probe_host: str) -> list[str]:
    """What is not up yet: the worker and beat mark themselves ready (taskhub/celery.py); the web
    server is up when /api/v1/health answers 200."""
    waiting = [role for role in ("worker", "beat") if not (ready_dir / role).exists()]
    if not _healthy(host, port, probe_host):
        waiting.insert(0, "web")
    return waiting


def _healthy(host: str, port: int, probe_host: str) -> bool:
    # The same Host header and scheme as the container health check, so production settings
    # (ALLOWED_HOSTS, the HTTPS redirect) accept the probe.
    request = urllib.request.Request(
        f"{_base_url(host, port, probe=True)}/api/v1/health",
        headers={"Host": probe_host, "X-Forwarded-Proto": "https"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # refused, timed out, or an HTTP error status (HTTPError is an OSError)
        return False


def _probe_host() -> str:
    """The container health check's choice of Host header (docker/healthcheck.py: standard library
    only, not a package), for the ALLOWED_HOSTS in force."""
    path = Path(settings.BASE_DIR) / "docker" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("taskhub_healthcheck", path)
    if spec is None or spec.loader is None:
        return "localhost"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.probe_host(",".join(settings.ALLOWED_HOSTS)))


def _base_url(host: str, port: int, probe: bool = False) -> str:
    if probe and host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each main process, which stops its own workers (gunicorn's, Celery's pool)."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))


def _kill_groups(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGKILL whatever is left of each child's process group (a main process past the grace period,
    or a worker process that outlived its main one)."""
    for proc in procs.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _reap(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
