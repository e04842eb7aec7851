"""A real hub for the SDK's tests: this repository's `manage.py runhub` (gunicorn + Celery worker
+ beat, as `make run`) on a throwaway SQLite file, run by the hub's own interpreter — the SDK's
tests run in a venv with no Django in it, so nothing of the hub leaks into what they prove.

`TASKHUB_HUB_PYTHON` names that interpreter (default: the repository's .venv). Also here: plain
web processes on the same database with other settings (a low rate limit, an unreachable
database), a unit driven over HTTP to complete or fail tasks, and httpx transports that watch or
drop traffic between the SDK and the real hub.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from taskhub_client.sse import SSEDecoder

ROOT = Path(__file__).resolve().parents[3]
# Anything that could point the hub at a shared database, cache or broker stays out.
SCRUBBED = ("DB_", "REDIS_", "CELERY_", "SQLITE_", "TASKHUB_", "DJANGO_", "UNIT_", "TASK_", "API_", "WEB_")


def hub_python() -> str:
    python = os.environ.get("TASKHUB_HUB_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    probe = subprocess.run([python, "-c", "import django, gunicorn"], capture_output=True, text=True, cwd=ROOT)
    if probe.returncode != 0:
        raise RuntimeError(
            f"the hub's interpreter {python} cannot run the hub (run `make venv` at the repository root, "
            f"or set TASKHUB_HUB_PYTHON): {probe.stderr.strip()[-300:]}"
        )
    return python


def missing_feature(reason: str) -> NoReturn:
    """Skip a test of a hub feature not landed yet; with TASKHUB_SDK_REQUIRE_HUB_FEATURES=1 (once
    it has landed), fail instead."""
    if os.environ.get("TASKHUB_SDK_REQUIRE_HUB_FEATURES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)
    return value


class Hub:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.python = hub_python()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
        self.env.update(
            DB_HOST="",  # empty, not unset: a developer's .env must not fill these in either
            REDIS_HOST="",
            CELERY_BROKER_URL="",
            SQLITE_PATH=str(workdir / "hub.sqlite3"),
            VAR_DIR=str(workdir / "var"),
            LOG_DIR=str(workdir / "logs"),
            APP_ENV="development",
            DEBUG="false",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            WEB_CONCURRENCY="2",
            # The SDK's tests need none of the periodic jobs; beat sending them every 5 s over the
            # filesystem broker can crash the worker (a message read before it is written), and
            # runhub then stops the whole hub.
            SWEEP_INTERVAL="3600",
            # Under gunicorn's threads (WSGI) an event stream holds a thread while it is open; a
            # closed client frees it at the next heartbeat write, and every stream ends (the SDK
            # resumes it) after a while: the tests' streams never starve the hub of threads.
            EVENTS_HEARTBEAT_SECONDS="1",
            EVENTS_STREAM_MAX_SECONDS="30",
            PYTHONUNBUFFERED="1",
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = ""
        self.read_key = ""
        self._procs: list[subprocess.Popen[bytes]] = []

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [self.python, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def create_key(self, scopes: str) -> str:
        return self.manage("create_api_key", f"sdk-{scopes}", "--scopes", scopes).splitlines()[-1]

    def start(self) -> None:
        self.manage("migrate", "--noinput", "-v0")
        self.manage("setup_beat")
        self.key = self.create_key("tasks:read,tasks:write,units:register")
        self.read_key = self.create_key("tasks:read")
        self._spawn("runhub", [self.python, "manage.py", "runhub", "--port", str(self.port)], self.env)
        wait_until(lambda: self._healthy(self.url), 60, "the hub to answer /api/v1/health")

    def web(self, name: str, **settings: str) -> str:
        """Another web process (gunicorn, one worker) on this hub's database, with `settings`."""
        port = free_port()
        command = [self.python, "-m", "gunicorn", "taskhub.wsgi:application", "--bind", f"127.0.0.1:{port}"]
        self._spawn(name, [*command, "--workers", "1", "--threads", "2"], {**self.env, **settings})
        wait_until(lambda: _port_open(port), 60, f"web process {name}")
        return f"http://127.0.0.1:{port}"

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        with (self.workdir / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._procs.append(proc)

    def _healthy(self, url: str) -> bool:
        assert all(proc.poll() is None for proc in self._procs), f"a hub process exited:\n{self.logs()}"
        try:
            return httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        # runhub starts web, worker and beat in sessions of their own and stops them itself
        # (SIGKILL after 15 s): give it the time, then kill whatever of this hub outlived it.
        children = [child for proc in self._procs for child in _children(proc.pid)]
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        mine = f"SQLITE_PATH={self.env['SQLITE_PATH']}".encode()
        for pid in children:
            with contextlib.suppress(OSError):  # gone already, or a pid reused by someone else's process
                if mine in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.workdir.glob("*.log"))

    def schema(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/schema", params={"format": "json"}, timeout=30)
        response.raise_for_status()
        return dict(json.loads(response.text))

    def unit(self, unit_id: str, unit_type: str) -> Unit:
        return Unit(self, unit_id, unit_type)


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Unit:
    """An execution unit driven by hand over HTTP: registered with the hub's key, then its token."""

    def __init__(self, hub: Hub, unit_id: str, unit_type: str) -> None:
        self.http = httpx.Client(base_url=f"{hub.url}/api/v1", timeout=30)
        body = {"id": unit_id, "unitType": unit_type, "unitName": unit_id, "capacity": 10}
        reply = self.http.post("/execution-units/register", json=body, headers={"Authorization": f"Bearer {hub.key}"})
        assert reply.status_code in (200, 201), reply.text
        self.http.headers["Authorization"] = f"Bearer {reply.json()['token']}"
        self.unit_id = unit_id

    def claim(self, count: int = 1) -> list[dict[str, Any]]:
        reply = self.http.post(f"/execution-units/{self.unit_id}/claim", json={"max": count})
        assert reply.status_code == 200, reply.text
        return list(reply.json()["items"])

    def report(self, task: dict[str, Any], outcome: str, **body: Any) -> None:
        reply = self.http.post(f"/tasks/{task['id']}/{outcome}", json={"attempt": task["attempt"], **body})
        assert reply.status_code == 200 and reply.json()["accepted"], reply.text


# --- transports between the SDK and the hub -------------------------------------------------------


class Tap:
    """Sees every request (and can lose the reply to chosen ones), shared by both transports."""

    def __init__(self, drop: Callable[[httpx.Request], bool] | None = None, drops: int = 1) -> None:
        self.requests: list[httpx.Request] = []
        self.replies: list[httpx.Request] = []  # requests whose answer (its headers) came back
        self._drop, self._drops = drop, drops
        self._seen = threading.Condition()

    def saw(self, request: httpx.Request) -> None:
        with self._seen:
            self.requests.append(request)
            self._seen.notify_all()

    def answered(self, request: httpx.Request) -> None:
        with self._seen:
            self.replies.append(request)
            self._seen.notify_all()

    def wait_for_reply(self, path_end: str, count: int = 1, timeout: float = 30) -> None:
        with self._seen:
            done = self._seen.wait_for(
                lambda: sum(r.url.path.endswith(path_end) for r in self.replies) >= count, timeout
            )
            assert done, self.replies

    def lose_reply(self, request: httpx.Request) -> bool:
        if self._drop is None or self._drops == 0 or not self._drop(request):
            return False
        self._drops -= 1
        return True

    def wait_for(self, count: int, timeout: float = 30) -> None:
        with self._seen:
            assert self._seen.wait_for(lambda: len(self.requests) >= count, timeout), self.requests

    def to(self, method: str, path_end: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.endswith(path_end)]


class TapTransport(httpx.BaseTransport):
    """`rewrite` changes what reaches the hub; `cuts` event streams break after their first event."""

    def __init__(
        self, tap: Tap, rewrite: Callable[[httpx.Request], httpx.Request] | None = None, cuts: int = 0
    ) -> None:
        self.tap, self.rewrite, self.inner, self.cuts = tap, rewrite, httpx.HTTPTransport(), cuts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.tap.saw(request)
        response = self.inner.handle_request(self.rewrite(request) if self.rewrite else request)
        if self.tap.lose_reply(request):
            response.read()  # the hub has acted and answered; the answer never arrives
            response.close()
            raise httpx.ReadError("connection reset (reply lost on purpose)", request=request)
        if self.cuts and response.headers.get("Content-Type", "").startswith("text/event-stream"):
            self.cuts -= 1
            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = CutAfterFirstEvent(response.stream, request)
        self.tap.answered(request)
        return response

    def close(self) -> None:
        self.inner.close()


class CutAfterFirstEvent(httpx.SyncByteStream):
    """An event stream whose connection drops right after its first event: what the hub sent
    after it is lost in flight, as in a real drop."""

    def __init__(self, inner: httpx.SyncByteStream, request: httpx.Request) -> None:
        self.inner, self.request = inner, request

    def __iter__(self) -> Iterator[bytes]:
        decoder = SSEDecoder()
        for chunk in self.inner:
            for end in range(1, len(chunk) + 1):
                if decoder.feed(chunk[end - 1 : end]):
                    yield chunk[:end]
                    raise httpx.ReadError("connection reset (stream cut on purpose)", request=self.request)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class AsyncTapTransport(httpx.AsyncBaseTransport):
    def __init__(self, tap: Tap) -> None:
        self.tap, self.inner = tap, httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tap.saw(request)
        response = await self.inner.handle_async_request(request)
        if self.tap.lose_reply(request):
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("connection reset (reply lost on purpose)", request=request)
        self.tap.answered(request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def without_wait_parameters(request: httpx.Request) -> httpx.Request:
    """The request a hub without long-poll would act on: waitFor/waitSeconds removed."""
    if "waitFor" not in request.url.params:
        return request
    url = request.url.copy_remove_param("waitFor").copy_remove_param("waitSeconds")
    return httpx.Request(request.method, url, headers=request.headers, extensions=request.extensions)


def hub_for_tests(workdir: Path) -> Iterator[Hub]:
    hub = Hub(workdir)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()
