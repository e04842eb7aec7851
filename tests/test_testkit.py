"""The support the tests, bench/, chaos/ and `make demo` share (testkit/): its waits give up, its
processes leave nothing running, its Redis start and stop work (on a server of this test's own),
and the wheel does not ship it."""

from __future__ import annotations

import shutil
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from testkit import services
from testkit.hub import call, create_api_key, embedded_env, gunicorn_argv, migrate, wait_healthy
from testkit.ports import free_port, port_open
from testkit.processes import ROOT, Process, alive, descendants
from testkit.waiting import TimedOut, wait_for


def test_wait_for_returns_the_first_true_value_and_gives_up_naming_what_it_waited_for() -> None:
    values = iter([0, None, "", "found", "later"])
    assert wait_for(lambda: next(values), 5, "a value", interval=0) == "found"
    with pytest.raises(TimedOut, match=r"timed out after 0\.05s waiting for the impossible"):
        wait_for(lambda: False, 0.05, "the impossible", interval=0.01)


def test_a_condition_that_raises_stops_the_wait_at_once() -> None:
    def gone() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="the process exited"):
        wait_for(gone, 60, "something")


# A parent that starts a child in a session of its own (as runhub starts web, worker and beat),
# so a signal to the parent's process group does not reach the child.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print("child", child.pid, flush=True)
time.sleep(60)
"""


def test_stop_ends_the_process_and_the_children_it_started_in_sessions_of_their_own(tmp_path: Path) -> None:
    parent = Process("parent", [sys.executable, "-c", PARENT], env={}, log_path=tmp_path / "parent.log").start()
    parent.wait_for_line("child ", timeout=20)
    tree = descendants(parent.pid)
    assert len(alive(tree)) == 1, tree
    assert parent.stop(grace=5) == -15  # SIGTERM ended it; the child ignored the group signal
    wait_for(lambda: not alive(tree), 10, "the child to be killed")


def test_a_line_never_logged_by_a_process_that_exited_is_an_error_at_once(tmp_path: Path) -> None:
    quick = Process("quick", [sys.executable, "-c", "print('hello')"], env={}, log_path=tmp_path / "q.log").start()
    quick.wait(10)
    assert quick.wait_for_line("hello", timeout=1) == 0
    with pytest.raises(RuntimeError, match="quick exited with 0 before logging 'goodbye'"):
        quick.wait_for_line("goodbye", timeout=30)


def test_call_answers_status_zero_when_nothing_listens() -> None:
    port = free_port()
    assert not port_open(port)
    assert call(f"http://127.0.0.1:{port}/api/v1", "GET", "/health", timeout=2) == (0, None)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_starts_answers_and_stops_on_a_port_of_its_own() -> None:
    port = free_port()  # not the shared server: this one is started and stopped here
    assert not services.redis_up(port)
    try:
        services.start_redis(port)
        assert services.redis_up(port)
    finally:
        services.stop_redis(port)
    assert not services.redis_up(port)


def test_the_wheel_ships_the_product_packages_and_not_the_support() -> None:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert {"testkit", "tests", "bench", "chaos"} <= packages
    shipped = {name for name in packages if any(fnmatch(name, pattern) for pattern in include)}
    assert shipped == {"taskhub", "tasks", "units"}  # taskhub_unit: clients/unit, its own distribution


def test_gunicorn_argv_serves_asgi_by_default_and_gthread_when_asked() -> None:
    asgi = gunicorn_argv(18301)
    assert (
        "taskhub.asgi:application" in asgi and asgi[asgi.index("--worker-class") + 1] == "taskhub.uvicorn_worker.Worker"
    )
    wsgi = gunicorn_argv(18301, web_worker="wsgi")
    assert "taskhub.wsgi:application" in wsgi and wsgi[wsgi.index("--worker-class") + 1] == "gthread"
    assert gunicorn_argv()[-2:] == ["--config", "taskhub/gunicorn.conf.py"]
    with pytest.raises(ValueError, match="web_worker must be one of asgi, wsgi"):
        gunicorn_argv(18301, web_worker="sync")


@pytest.mark.slow
@pytest.mark.parametrize(("web_worker", "held"), [("asgi", 1), ("wsgi", 0)])
def test_the_harness_server_holds_a_long_poll_claim_only_under_asgi(tmp_path: Path, web_worker: str, held: int) -> None:
    """The chaos run and the benchmarks start the hub with gunicorn_argv(port): under ASGI a unit's
    long-poll claim is held (the reply's waitSeconds is the wait granted); under gthread it answers
    at once (waitSeconds 0), so units there only poll."""
    env = embedded_env(tmp_path)
    migrate(env, beat=False)
    key = create_api_key(env, "testkit")
    port = free_port()
    web = Process("gunicorn", gunicorn_argv(port, web_worker=web_worker), env=env, log_path=tmp_path / "web.log")
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        web.start()
        wait_healthy(f"{base}/health", web, timeout=60)
        body = {"id": "tk-1", "unitType": "TK", "unitName": "tk-1", "capacity": 1}
        status, reply = call(base, "POST", "/execution-units/register", key, body)
        assert status in (200, 201), reply
        status, reply = call(base, "POST", "/execution-units/tk-1/claim", reply["token"], {"max": 1, "waitSeconds": 1})
        assert status == 200 and reply["items"] == [], reply
        assert reply["waitSeconds"] == held, reply
    finally:
        web.stop(grace=5)
