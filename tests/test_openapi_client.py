"""A client generated from /api/v1/schema by openapi-python-client (a mainstream generator) imports
and runs the seed's flow against the hub: create a task, register a unit, claim, log (one line and
a batch: the body's `oneOf`), progress (one, and a batch of reports: a `oneOf` with a discriminator),
complete, read back. The operation ids name its functions
(`create_task`, `claim_tasks`, ...). The generator must report no warning: a warning is an endpoint
or model it skipped."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from rest_framework.test import APIClient

from taskhub.api.schema import operation_id
from tests import factories

pytestmark = pytest.mark.django_db

try:
    import openapi_python_client  # noqa: F401
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("openapi-python-client is not installed (it is in the test extra: pip install -e '.[test]')",
                allow_module_level=True)  # fmt: skip

PACKAGE = "taskhub_api_generated"


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[ModuleType]:
    schema = APIClient().get("/api/v1/schema", {"format": "json"})
    assert schema.status_code == 200
    (tmp_path / "schema.json").write_bytes(schema.content)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # ruff
    argv = [sys.executable, "-m", "openapi_python_client", "generate", "--path", "schema.json", "--meta", "none"]
    done = subprocess.run(
        [*argv, "--output-path", PACKAGE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Warning" not in output and "Error" not in output, output
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def call(operation: str, **kwargs: Any) -> Any:
    """`api/<tag>/<operation>.sync(...)` of the generated client; the reply must be no Error."""
    tag = "execution_units" if operation in ("register_execution_unit", "claim_tasks", "send_heartbeat") else "tasks"
    response = importlib.import_module(f"{PACKAGE}.api.{tag}.{operation}").sync_detailed(**kwargs)
    reply = response.parsed
    assert reply is not None and type(reply).__name__ != "Error", (response.status_code, response.content)
    return reply


@pytest.fixture
def wsgi() -> Iterator[httpx.WSGITransport]:
    """The hub's WSGI application in this thread, inside the test's transaction: as Django's test
    client does, requests do not close the database connection (on MariaDB that would end it)."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield httpx.WSGITransport(app=WSGIHandler())
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)


def test_a_generated_client_imports_and_runs_the_seeds_flow(generated: ModuleType, wsgi: httpx.WSGITransport) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    transport = wsgi
    _, secret = factories.api_key(name="generated")

    def client(token: str) -> Any:
        return generated.AuthenticatedClient(
            base_url="http://testserver", token=token, httpx_args={"transport": transport}
        )

    producer = client(secret)
    config = models.TaskCreateRequestConfig.from_dict({"inputFile": "data.csv", "outputFormat": "json"})
    body = models.TaskCreateRequest(name="示例任务", task_type="DATA_PROCESSING", priority=1, config=config)
    task = call("create_task", client=producer, body=body, idempotency_key="generated-1")
    assert (task.status.value, task.config) == ("PENDING", {"inputFile": "data.csv", "outputFormat": "json"})

    register = models.RegisterRequest(
        id="worker-001",
        unit_type="DATA_PROCESSING",
        unit_name="数据处理单元",
        capacity=5,
        endpoint="http://worker-001:8080",
    )
    unit = client(call("register_execution_unit", client=producer, body=register).token)
    [claimed] = call("claim_tasks", id="worker-001", client=unit, body=models.ClaimRequest(max_=1)).items
    assert (claimed.id, claimed.attempt) == (task.id, 1)

    one = models.LogLineWrite(attempt=1, message="reading data.csv", level=models.LogLevelEnum.INFO)
    batch = models.LogEntriesWrite(attempt=1, entries=[models.LogEntryRequest(message=f"row {n}") for n in (1, 2)])
    for lines in (one, batch):
        call("write_task_logs", id=str(task.id), client=unit, body=lines)
    call("report_task_progress", id=str(task.id), client=unit, body=models.ProgressRequest(attempt=1, progress=50))
    # A batch of reports: a oneOf on `outcome` (its discriminator), one model per outcome.
    progress = models.ReportProgress(
        task_id=task.id, attempt=1, outcome=models.ReportProgressOutcomeEnum.PROGRESS, progress=60
    )
    [reported] = call("send_reports", client=unit, body=models.ReportBatchRequest(reports=[progress])).items
    assert (reported.accepted, reported.status) == (True, "RUNNING")
    call("complete_task", id=str(task.id), client=unit, body=models.CompleteRequest(attempt=1, result={"rows": 2}))

    done = call("get_task", id=str(task.id), client=producer)
    assert (done.status.value, done.result, done.attempt) == ("COMPLETED", {"rows": 2}, 1)
    logs = call("list_task_logs", id=str(task.id), client=producer)
    assert [line.message for line in logs.items] == ["reading data.csv", "row 1", "row 2"]
    history = call("get_task_history", id=str(task.id), client=producer)
    assert [entry.to_status for entry in history.items] == ["PENDING", "RUNNING", "COMPLETED"]
    page = call("list_tasks", client=producer, status=models.ListTasksStatus.COMPLETED)
    assert [t.id for t in page.items] == [task.id]


def test_every_operation_id_is_one_camel_case_name_and_new_endpoints_get_one_by_the_rule() -> None:
    schema = APIClient().get("/api/v1/schema", {"format": "json"}).json()
    ids = [op["operationId"] for item in schema["paths"].values() for op in item.values() if "operationId" in op]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", i) for i in ids), ids
    assert {"createTask", "listTasks", "claimTasks", "completeTask", "getTaskStats", "writeTaskLogs"} <= set(ids)
    # Endpoints the table does not know: the rule from the method and the path.
    assert operation_id("GET", "/events") == "listEvents"
    assert operation_id("POST", "/tasks/{id}/pause") == "pauseTask"
    assert operation_id("GET", "/execution-units/{id}/tasks") == "getExecutionUnitTasks"
    assert operation_id("PUT", "/execution-units/{id}/labels") == "setExecutionUnitLabels"
    assert operation_id("DELETE", "/tasks/{task_id}") == "deleteTask"
