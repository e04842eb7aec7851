from __future__ import annotations

import itertools
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import Hub, hub_for_tests
from taskhub_client import Client

_types = itertools.count(1)


@pytest.fixture(scope="session")
def hub(request: pytest.FixtureRequest) -> Iterator[Hub]:
    # Not tmp_path: it holds a live database and logs for the whole session.
    workdir = Path(tempfile.mkdtemp(prefix="taskhub-sdk-"))
    failed_before = request.session.testsfailed
    try:
        yield from hub_for_tests(workdir)
    finally:
        if request.session.testsfailed == failed_before:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nhub logs kept in {workdir}")


@pytest.fixture
def task_type(request: pytest.FixtureRequest) -> str:
    """A task type of this test's own: the tests share one hub without seeing each other's tasks."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name).upper()[:50]
    return f"SDK{next(_types)}_{name}"


@pytest.fixture
def client(hub: Hub) -> Iterator[Client]:
    with Client(hub.url, hub.key) as client:
        yield client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
