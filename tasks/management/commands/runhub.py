"""Start the whole hub in one command: web server, Celery worker and Celery beat.

Ctrl-C (or SIGTERM) stops all three; if one of them dies, the others are stopped too, so a
half-running hub never hides behind a live web server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run web + Celery worker + Celery beat together (one Ctrl-C stops all)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--web", choices=("gunicorn", "runserver"), default="gunicorn")
        parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))

    def handle(self, *args: Any, **options: Any) -> None:
        python = sys.executable
        host, port = options["host"], options["port"]
        bind = f"{host}:{port}"
        if options["web"] == "gunicorn":
            web = [
                python,
                "-m",
                "gunicorn",
                "taskhub.wsgi:application",
                "--bind",
                bind,
                "--workers",
                str(options["workers"]),
                "--threads",
                "4",
                "--access-logfile",
                "-",
                "--graceful-timeout",
                "10",
            ]
            if settings.DEBUG:
                # In development runserver serves the apps' static files as they change, with no
                # collectstatic step; production gunicorn serves STATIC_ROOT through WhiteNoise.
                web = [python, "manage.py", "runserver", bind, "--noreload"]
        else:
            web = [python, "manage.py", "runserver", bind, "--noreload"]
        commands = {
            "web": web,
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "taskhub",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--hostname",
                f"taskhub-worker-{os.getpid()}@%h",
            ],
            "beat": [
                python,
                "-m",
                "celery",
                "-A",
                "taskhub",
                "beat",
                "--loglevel",
                "INFO",
                "--scheduler",
                "django_celery_beat.schedulers:DatabaseScheduler",
                "--pidfile",
                "",
            ],
        }
        base = f"http://{host}:{port}"
        self.stdout.write(self.style.SUCCESS("taskhub is starting (web + Celery worker + beat):"))
        self.stdout.write(f"  API      {base}/api/v1")
        self.stdout.write(f"  Docs     {base}/api-docs")
        self.stdout.write(f"  Health   {base}/api/v1/health")
        self.stdout.write(f"  Admin    {base}/admin/   (create a login: .venv/bin/python manage.py createsuperuser)")
        self.stdout.write(
            "  API key  .venv/bin/python manage.py create_api_key NAME --scopes tasks:read,tasks:write,units:register"
        )
        self.stdout.write(
            f"  Backend  {str(settings.DATABASES['default']['ENGINE']).rsplit('.', 1)[-1]}, "
            f"broker {settings.CELERY_BROKER_URL.split('@')[-1]}"
        )
        self.stdout.write("Press Ctrl-C to stop all.\n")
        env = dict(os.environ)
        if "PROMETHEUS_MULTIPROC_DIR" not in env:
            # One metrics directory for web and Celery processes, so /metrics sums them all
            # (job durations, failovers and retries are counted in the Celery worker).
            metrics_dir = Path(settings.VAR_DIR) / "metrics"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        procs = {name: subprocess.Popen(cmd, start_new_session=True, env=env) for name, cmd in commands.items()}
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        try:
            while not stopping:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        self.stderr.write(f"{name} exited with {proc.returncode}; stopping the hub")
                        exit_code = proc.returncode or 1
                        stopping = True
                time.sleep(0.3)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            for proc in procs.values():
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if exit_code:
            raise SystemExit(exit_code)
