"""The unit SDK's tests: pure ones, and ones against a real hub — this repository's `manage.py runhub`
on a throwaway SQLite file (testkit.hub), run by the hub's own interpreter (`TASKHUB_HUB_PYTHON`,
default: the repository's .venv), while the SDK runs in this interpreter, which needs no Django."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))  # testkit: the standard library only, at module level

import testkit.hub  # noqa: E402

_types = itertools.count(1)


def hub_python() -> str:
    python = os.environ.get("TASKHUB_HUB_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    probe = subprocess.run([python, "-c", "import django, gunicorn"], capture_output=True, text=True, cwd=ROOT)
    if probe.returncode != 0:
        raise RuntimeError(
            f"the hub's interpreter {python} cannot run the hub (run `make venv` at the repository root, "
            f"or set TASKHUB_HUB_PYTHON): {probe.stderr.strip()[-300:]}"
        )
    return python


@pytest.fixture(scope="session")
def hub() -> Iterator[testkit.hub.Hub]:
    testkit.hub.PYTHON = hub_python()
    workdir = Path(tempfile.mkdtemp(prefix="taskhub-unit-sdk-"))
    try:
        with testkit.hub.running_hub(workdir) as hub:
            yield hub
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def task_type(request: pytest.FixtureRequest) -> str:
    """A task type of this test's own: the tests share one hub without seeing each other's tasks."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name).upper()[:40]
    return f"U{next(_types)}_{name}"
