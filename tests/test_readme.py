"""README.md's commands, run as written against a real `manage.py runhub` (only the address and the
virtualenv's path are put in): the API key, every seed example with curl (register, then heartbeat
with the unit token from the reply), and the unit quick start with its data file."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhub.apikeys.models import ALL_SCOPES
from testkit.hub import ROOT, Hub, call, running_hub
from testkit.waiting import wait_for

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```bash\n(.*?)^```", README, re.MULTILINE | re.DOTALL)


def _block(*needles: str) -> str:
    [block] = [b for b in BLOCKS if all(n in b for n in needles)]
    return block


def _runnable(block: str, hub: Hub) -> str:
    """The block as the test runs it: the hub's address, this virtualenv, and curl failing on 4xx/5xx."""
    block = re.sub(r"(localhost|127\.0\.0\.1):8000", f"127.0.0.1:{hub.port}", block)
    block = block.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    block = block.replace("manage.py", shlex.quote(str(ROOT / "manage.py")))
    return 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n' + block


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    with running_hub(tmp_path) as hub:
        yield hub


def test_one_set_of_scopes_where_the_readme_and_the_agent_guide_create_a_key():
    agent_guide = (ROOT / "docs" / "agent.md").read_text()
    for text in (README, agent_guide):
        scopes = re.findall(r"create_api_key \S+\s*\\?\s*--scopes (\S+)", text)
        assert scopes and set(scopes) == {",".join(ALL_SCOPES)}


@pytest.mark.slow
def test_readme_walkthrough_and_unit_quick_start_work_as_written(hub: Hub, tmp_path: Path) -> None:
    key_block = _block("create_api_key")
    walkthrough = _block("/heartbeat")
    for seed_example in ("POST localhost:8000/api/v1/tasks ", "/tasks?page=1&limit=10&status=PENDING", "-X PUT"):
        assert seed_example in walkthrough
    assert "/execution-units/register" in walkthrough and "Bearer $TOKEN" in walkthrough
    script = _runnable(key_block + walkthrough + 'echo "KEY=$KEY"\n', hub)
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=hub.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    key = done.stdout.rsplit("KEY=", 1)[1].strip()
    assert '{"unitId":"worker-001","status":"ONLINE"' in done.stdout, done.stdout  # the heartbeat's reply
    assert '"token":"thu_' in done.stderr  # the registration's reply, shown by tee
    assert call(hub.base, "GET", "/tasks/1", key)[1]["status"] == "RUNNING"
    # What the README says about the heartbeat: the API key is refused there.
    assert call(hub.base, "POST", "/execution-units/worker-001/heartbeat", key, {"currentLoad": 0})[0] == 403

    # The unit quick start, in a directory of its own (it creates ./data), minus terminal 1's `make run`.
    unit_block = "\n".join(line for line in _block("taskhub-unit").splitlines() if line.strip() != "make run")
    workdir = tmp_path / "unit"
    workdir.mkdir()
    with (tmp_path / "unit.log").open("wb") as log:
        unit = subprocess.Popen(
            ["bash", "-c", _runnable(unit_block, hub)],
            cwd=workdir,
            env=hub.env | {"KEY": key},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        task_block = _block("convert data.csv")
        done = subprocess.run(
            ["bash", "-c", _runnable(task_block, hub)],
            cwd=workdir,
            env=hub.env | {"KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr

        def completed() -> Any:
            items = call(hub.base, "GET", "/tasks?taskType=DATA_PROCESSING&status=COMPLETED", key)[1]["items"]
            return [t for t in items if t["name"] == "convert data.csv"]

        [task] = wait_for(completed, 60, "the unit to complete the README's task")
        assert task["result"]["records"] == 2 and task["result"]["outputFile"] == "data.json"
        assert (workdir / "data" / "data.json").exists()
    finally:
        os.killpg(unit.pid, signal.SIGTERM)  # bash and the unit it runs
        try:
            unit.wait(timeout=30)
        except subprocess.TimeoutExpired:
            unit.kill()
        print((tmp_path / "unit.log").read_text(errors="replace")[-3000:])
