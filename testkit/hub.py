"""A hub to run against, started the ways users and production start it: `manage.py runhub` (web +
Celery worker + beat in one command, as `make run` does) or gunicorn alone; its environment, its
database and API key, readiness on its health endpoint, its log, and a stop that leaves nothing
running. Used by the end-to-end tests, `make demo`, the chaos run and the benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testkit import services
from testkit.ports import free_port
from testkit.processes import ROOT, Process
from testkit.waiting import wait_for

PYTHON = sys.executable
# Anything that could point a hub or a unit at a shared database, cache or broker, or change its knobs.
SCRUBBED_PREFIXES = ("DB_", "REDIS_", "CELERY_", "SQLITE_", "TASKHUB_", "DJANGO_", "UNIT_", "TASK_", "API_")
ALL_SCOPES = "tasks:read,tasks:write,units:read,units:write,units:register"
# What the harnesses run gunicorn with when they do not use the production config. The server is
# production's (taskhub/gunicorn.conf.py, WEB_WORKER=asgi): uvicorn workers serving taskhub.asgi, so
# long-poll claims and result waits hold no thread (under gthread a claim answers at once, see
# taskhub.api.views.units._served_by_a_threaded_wsgi_server). Sync views run on WEB_THREADS threads.
GUNICORN_OPTIONS = ("--workers", "2", "--timeout", "60", "--graceful-timeout", "5")
GUNICORN_WORKERS = {
    "asgi": ("taskhub.asgi:application", "--worker-class", "taskhub.uvicorn_worker.Worker"),
    "wsgi": ("taskhub.wsgi:application", "--worker-class", "gthread", "--threads", "4"),
}
# Liveness in seconds rather than tens of them: a test sees a failover while it waits.
# HUB_OUTAGE_GRACE: a test hub's lone unit that falls silent is failed over seconds later, not after
# 10 timeouts (units.hearing cannot tell it from the hub's own outage).
QUICK_LIVENESS = {
    "UNIT_HEARTBEAT_TIMEOUT": "2",
    "UNIT_HEARTBEAT_INTERVAL": "0.5",
    "SWEEP_INTERVAL": "1",
    "HUB_OUTAGE_GRACE": "2",
}


class HubError(RuntimeError):
    """A command of the hub failed, or its process exited before it was ready."""


def scrubbed_environ(prefixes: Sequence[str] = SCRUBBED_PREFIXES) -> dict[str, str]:
    """This process's environment without the variables that start with `prefixes`."""
    return {k: v for k, v in os.environ.items() if not k.startswith(tuple(prefixes))}


def embedded_env(workdir: Path, **overrides: str) -> dict[str, str]:
    """The embedded default (SQLite, filesystem broker) with every file under `workdir`, and
    nothing from the caller's environment or .env pointing anywhere else."""
    return scrubbed_environ() | {
        # Empty, not unset: a developer's .env must not fill these in either.
        "DB_HOST": "",
        "REDIS_HOST": "",
        "CELERY_BROKER_URL": "",
        "SQLITE_PATH": str(workdir / "hub.sqlite3"),
        "VAR_DIR": str(workdir / "var"),
        "LOG_DIR": str(workdir / "logs"),
        "APP_ENV": "development",
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }


def manage(env: dict[str, str], *args: str, cwd: Path = ROOT, timeout: float = 300) -> str:
    """`manage.py args` with `env`; its standard output. HubError (with both outputs) if it fails."""
    done = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise HubError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def migrate(env: dict[str, str], *, beat: bool = True, reset_beat: bool = False, cwd: Path = ROOT) -> None:
    """Migrate the hub's database and, with `beat`, register the beat jobs (`setup_beat`)."""
    manage(env, "migrate", "--noinput", "-v0", cwd=cwd)
    if beat:
        manage(env, "setup_beat", *(["--reset"] if reset_beat else []), cwd=cwd)


def create_api_key(env: dict[str, str], name: str, scopes: str = ALL_SCOPES, *, cwd: Path = ROOT) -> str:
    """A new API key's secret (the last word `create_api_key` prints)."""
    return manage(env, "create_api_key", name, "--scopes", scopes, cwd=cwd).split()[-1]


def call(
    base: str,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, Any]:
    """(status, JSON body or None) of one request to `base + path`; (0, None) when nothing answered."""
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode() if body is not None else None, method=method
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError):
        return 0, None
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, None


def wait_healthy(
    url: str, process: Process | None = None, timeout: float = 90, ready: Callable[[], bool] | None = None
) -> None:
    """Until GET url answers 200 (and `ready()` holds); HubError at once if `process` exits."""

    def healthy() -> bool:
        if process is not None and not process.running:
            code = process.popen.returncode if process.started else None
            raise HubError(f"{process.name} exited with {code}; see {process.log_path}:\n{process.output()[-3000:]}")
        return call(url, "GET", "", timeout=2)[0] == 200 and (ready is None or ready())

    wait_for(healthy, timeout, f"{url} to answer 200", interval=0.2)


def gunicorn_argv(bind: int | None = None, extra: Sequence[str] = (), *, web_worker: str = "asgi") -> list[str]:
    """gunicorn serving taskhub: on 127.0.0.1:`bind` with GUNICORN_OPTIONS and `web_worker`'s server
    ("asgi", production's default: uvicorn workers; "wsgi": gthread, 4 threads), or (no `bind`) with
    the production config, taskhub/gunicorn.conf.py, which takes HOST, PORT, WEB_WORKER and the rest
    from the environment."""
    if bind is None:
        return [PYTHON, "-m", "gunicorn", "--config", "taskhub/gunicorn.conf.py", *extra]
    if web_worker not in GUNICORN_WORKERS:
        raise ValueError(f"web_worker must be one of {', '.join(GUNICORN_WORKERS)}, got {web_worker!r}")
    return [
        PYTHON,
        "-m",
        "gunicorn",
        *GUNICORN_WORKERS[web_worker],
        "--bind",
        f"127.0.0.1:{bind}",
        *GUNICORN_OPTIONS,
        *extra,
    ]


def unit_argv() -> list[str]:
    """The `taskhub-unit` console script beside this Python (as installed), else the module."""
    script = shutil.which("taskhub-unit", path=str(Path(PYTHON).parent))
    return [script] if script else [PYTHON, "-m", "taskhub_unit"]


def unit_env(server: str, enroll_key: str, unit_id: str, unit_type: str, capacity: int, **extra: str) -> dict[str, str]:
    """A `taskhub-unit` process's environment: nothing of the caller's TASKHUB_* (or any service
    setting), the enrolment key from the environment as docs/agent.md recommends, the sleep handler."""
    return scrubbed_environ() | {
        "TASKHUB_SERVER": server,
        "TASKHUB_ENROLL_KEY": enroll_key,
        "TASKHUB_UNIT_ID": unit_id,
        "TASKHUB_UNIT_TYPE": unit_type,
        "TASKHUB_CAPACITY": str(capacity),
        "TASKHUB_HANDLER": "sleep",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


class Hub:
    """`manage.py runhub` on a migrated database (the embedded default under `workdir` unless `env`
    says otherwise), with beat jobs registered and an API key (`key`) holding `scopes`."""

    def __init__(
        self,
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        key_name: str = "e2e",
        scopes: str = ALL_SCOPES,
        log_name: str = "runhub.log",
    ) -> None:
        self.workdir = workdir
        self.env = embedded_env(workdir) if env is None else env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = f"{self.url}/api/v1"
        self.key_name, self.scopes = key_name, scopes
        self.key = ""
        argv = [PYTHON, "manage.py", "runhub", "--port", str(self.port)]
        self.process = Process("runhub", argv, env=self.env, log_path=workdir / log_name)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The runhub process, once started."""
        return self.process.popen

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def manage(self, *args: str) -> str:
        return manage(self.env, *args, timeout=120)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer to one call with the hub's API key; HubError unless it is a 2xx."""
        status, answer = call(self.base, method, path, self.key, body)
        if not 200 <= status < 300:
            raise HubError(f"{method} {path}: {status} {answer}")
        return answer

    def start(self, timeout: float = 90) -> Hub:
        migrate(self.env)
        self.key = create_api_key(self.env, self.key_name, self.scopes)
        self.process.start()
        wait_healthy(f"{self.base}/health", self.process, timeout)
        return self

    def stop(self, grace: float = 5) -> None:
        """SIGTERM: runhub stops web, worker and beat; past `grace` seconds (its data is thrown away:
        no need to sit through a slow Celery warm shutdown) it and whatever it started are killed."""
        self.process.stop(grace)

    def output(self) -> str:
        return self.process.output()

    def lines(self) -> list[str]:
        return self.process.lines()

    def wait_for_line(self, text: str, timeout: float = 90) -> int:
        """The index of the first output line containing text."""
        return self.process.wait_for_line(text, timeout)


BACKENDS = ("embedded", "mariadb")


def service_env(database: str) -> dict[str, str]:
    """What points a hub at MariaDB (`database` on the server this process's DB_* name) and at Redis
    (this process's REDIS_HOST, REDIS_PORT and REDIS_DB: a run's own DB number), with a cache key
    prefix of its own."""
    return {
        "DB_HOST": os.environ["DB_HOST"],
        "DB_PORT": os.environ.get("DB_PORT", "3306"),
        "DB_USERNAME": os.environ.get("DB_USERNAME", "taskhub"),
        "DB_PASSWORD": os.environ.get("DB_PASSWORD", ""),
        "DB_DATABASE": database,
        "REDIS_HOST": os.environ["REDIS_HOST"],
        "REDIS_PORT": os.environ.get("REDIS_PORT", "6379"),
        "REDIS_DB": os.environ.get("REDIS_DB", "0"),
        "CACHE_KEY_PREFIX": f"{database}-{os.getpid()}",
    }


def _server(env: dict[str, str]) -> dict[str, Any]:
    return {
        "host": env["DB_HOST"],
        "port": int(env["DB_PORT"]),
        "user": env["DB_USERNAME"],
        "password": env["DB_PASSWORD"],
    }


@contextmanager
def running_hub(workdir: Path, backend: str = "embedded", **env: str) -> Iterator[Hub]:
    """A started Hub with QUICK_LIVENESS (and `env`), stopped afterwards; the end of its output is
    printed (pytest shows it on failure). `backend` "embedded": the embedded default under `workdir`
    (SQLite, the doorbells on Unix sockets); "mariadb": MariaDB, in a database of its own made fresh
    and dropped afterwards (named after DB_TEST_NAME, never the test process's own), + Redis
    (service_env: the doorbells on Redis pub/sub)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    hub_env = embedded_env(workdir, **QUICK_LIVENESS)
    database = ""
    if backend == "mariadb":
        database = f"{os.environ.get('DB_TEST_NAME') or 'test_taskhub'}_hub"[:60]
        hub_env |= service_env(database)
        services.recreate_database(**_server(hub_env), name=database)
    hub = Hub(workdir, env=hub_env | env)
    try:
        yield hub.start()
    finally:
        hub.stop()
        print(hub.output()[-3000:])
        if database:
            services.drop_database(**_server(hub_env), name=database)
