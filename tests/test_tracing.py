"""Trace context across the hop (issue 16, part 4): a W3C `traceparent` on create is stored with the
task, handed to the unit in the claim reply and taken back on its reports; with OpenTelemetry
installed and a TracerProvider set, the hub's spans (enqueue -> claim -> complete/fail) make one
trace. Without OpenTelemetry nothing of it is imported and nothing changes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from taskhub.base import tracing
from taskhub.base.tracing import parse_traceparent
from tasks.models import Task
from tests.conftest import JsonClient

API = "/api/v1"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{PARENT}-01"
OTHER_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --- the W3C format ------------------------------------------------------------------------------


# The vectors the producer SDK's check runs against too (clients/python/tests/test_tracing.py).
VECTORS = json.loads((Path(__file__).parent / "fixtures" / "traceparent.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["note"] for v in VECTORS])
def test_each_shared_vector_parses_and_matches_the_schema_pattern_as_it_says(vector: dict[str, Any]) -> None:
    assert parse_traceparent(vector["value"]) == vector["hub"]  # a header: normalised to 00, or ignored
    # A field (a batch item's traceparent): the schema's pattern accepts exactly the valid ones.
    assert (re.search(tracing.TRACEPARENT_PATTERN, vector["value"]) is not None) is vector["valid"]


def test_the_shared_vectors_cover_both_answers_of_each_rule() -> None:
    assert {(v["valid"], v["hub"] is None) for v in VECTORS} == {(True, False), (False, True), (False, False)}


@pytest.mark.parametrize("value", [None, 42, b"00-x"])
def test_a_value_that_is_not_a_string_is_none(value: Any) -> None:
    assert parse_traceparent(value) is None


# --- over the API (no spans: tracing is off unless a test turns it on) --------------------------


@pytest.mark.django_db
def test_the_traceparent_header_of_a_create_is_stored_and_returned(client_a: JsonClient) -> None:
    body = {"name": "traced", "taskType": "DATA_PROCESSING"}
    created = client_a.post(f"{API}/tasks", body, HTTP_TRACEPARENT=TP)
    assert created.status_code == 201, created.content
    assert created.json()["traceparent"] == TP
    task_id = created.json()["id"]
    assert Task.objects.get(pk=task_id).traceparent == TP
    assert client_a.get(f"{API}/tasks/{task_id}").json()["traceparent"] == TP
    listed = client_a.get(f"{API}/tasks").json()["items"]
    assert [t["traceparent"] for t in listed if t["id"] == task_id] == [TP]
    untraced = client_a.post(f"{API}/tasks", body).json()
    assert untraced["traceparent"] is None


@pytest.mark.django_db
def test_a_later_version_header_is_stored_as_version_00(client_a: JsonClient) -> None:
    body = {"name": "traced", "taskType": "DATA_PROCESSING"}
    created = client_a.post(f"{API}/tasks", body, HTTP_TRACEPARENT=f"01-{TRACE}-{PARENT}-01-future")
    assert created.json()["traceparent"] == TP


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["garbage", f"ff-{TRACE}-{PARENT}-01", f"00-{'0' * 32}-{PARENT}-01", "x" * 5000])
def test_an_invalid_traceparent_header_is_ignored_not_refused(client_a: JsonClient, value: str) -> None:
    created = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "DATA_PROCESSING"}, HTTP_TRACEPARENT=value)
    assert created.status_code == 201, created.content
    assert created.json()["traceparent"] is None
    assert Task.objects.get(pk=created.json()["id"]).traceparent is None


@pytest.mark.django_db
def test_an_idempotent_replay_with_another_trace_returns_the_first_task(client_a: JsonClient) -> None:
    body = {"name": "once", "taskType": "DATA_PROCESSING"}
    first = client_a.post(f"{API}/tasks", body, HTTP_IDEMPOTENCY_KEY="k1", HTTP_TRACEPARENT=TP)
    again = client_a.post(f"{API}/tasks", body, HTTP_IDEMPOTENCY_KEY="k1", HTTP_TRACEPARENT=OTHER_TP)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["traceparent"] == TP  # the task keeps the context it was created in


@pytest.mark.django_db
def test_a_batch_item_takes_its_own_traceparent_else_the_request_header(client_a: JsonClient) -> None:
    body: dict[str, list[dict[str, Any]]] = {
        "tasks": [
            {"name": "own", "taskType": "DATA_PROCESSING", "traceparent": OTHER_TP, "idempotencyKey": "b0"},
            {"name": "header", "taskType": "DATA_PROCESSING"},
            {"name": "null", "taskType": "DATA_PROCESSING", "traceparent": None},
        ]
    }
    created = client_a.post(f"{API}/tasks/batch", body, HTTP_TRACEPARENT=TP)
    assert created.status_code == 201, created.content
    assert [i["traceparent"] for i in created.json()["items"]] == [OTHER_TP, TP, TP]
    assert [Task.objects.get(pk=i["id"]).traceparent for i in created.json()["items"]] == [OTHER_TP, TP, TP]
    untraced = client_a.post(f"{API}/tasks/batch", {"tasks": [{"name": "n", "taskType": "DATA_PROCESSING"}]})
    assert untraced.json()["items"][0]["traceparent"] is None
    # The item's traceparent is not part of its idempotency fingerprint: a replay in another trace.
    body["tasks"][0]["traceparent"] = TP
    replay = client_a.post(f"{API}/tasks/batch", {"tasks": body["tasks"][:1]})
    assert replay.status_code == 200, replay.content
    assert replay.json()["items"][0]["traceparent"] == OTHER_TP


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["garbage", f"ff-{TRACE}-{PARENT}-01", 7, "x" * 600])
def test_an_invalid_batch_item_traceparent_is_refused_naming_it(client_a: JsonClient, value: Any) -> None:
    body = {"tasks": [{"name": "a", "taskType": "T"}, {"name": "b", "taskType": "T", "traceparent": value}]}
    refused = client_a.post(f"{API}/tasks/batch", body)
    assert refused.status_code == 400, refused.content
    assert "tasks[1].traceparent" in refused.json()["details"]["fields"]
    assert Task.objects.count() == 0


@pytest.mark.django_db
def test_the_claim_reply_hands_each_task_its_traceparent(
    client_a: JsonClient, register_unit: Callable[..., tuple[JsonClient, dict[str, Any]]]
) -> None:
    unit, _ = register_unit("worker-001", "DATA_PROCESSING")
    client_a.post(f"{API}/tasks", {"name": "t", "taskType": "DATA_PROCESSING", "priority": 2}, HTTP_TRACEPARENT=TP)
    client_a.post(f"{API}/tasks", {"name": "u", "taskType": "DATA_PROCESSING", "priority": 1})
    claimed = unit.post(f"{API}/execution-units/worker-001/claim", {"max": 5}).json()["items"]
    assert [t["traceparent"] for t in claimed] == [TP, None]


@pytest.mark.django_db
def test_reports_accept_a_traceparent_header_valid_or_not(
    leased: Callable[..., tuple[JsonClient, list[dict[str, Any]]]],
) -> None:
    unit, (first, second, third) = leased(3, traceparent=TP)
    assert {t["traceparent"] for t in (first, second, third)} == {TP}
    progress = unit.post(f"{API}/tasks/{first['id']}/progress", {"attempt": 1, "progress": 50}, HTTP_TRACEPARENT=TP)
    assert progress.status_code == 200, progress.content
    done = unit.post(f"{API}/tasks/{first['id']}/complete", {"attempt": 1}, HTTP_TRACEPARENT="not-a-traceparent")
    assert done.status_code == 200, done.content
    failed = unit.post(f"{API}/tasks/{second['id']}/fail", {"attempt": 1, "error": "x"}, HTTP_TRACEPARENT=TP)
    assert failed.status_code == 200, failed.content
    batch = {"reports": [{"taskId": third["id"], "attempt": 1, "outcome": "complete"}]}
    reported = unit.post(f"{API}/tasks/reports", batch, HTTP_TRACEPARENT=TP)
    assert reported.status_code == 200, reported.content
    assert reported.json()["items"][0]["accepted"] is True


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_the_traceparent_round_trips_on_mariadb(
    client_a: JsonClient, register_unit: Callable[..., tuple[JsonClient, dict[str, Any]]]
) -> None:
    # The same API path on MariaDB (the column as MariaDB stores it, the batch's INSERT ... RETURNING).
    unit, _ = register_unit("worker-001", "DATA_PROCESSING")
    one = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "DATA_PROCESSING"}, HTTP_TRACEPARENT=TP).json()
    many = client_a.post(
        f"{API}/tasks/batch",
        {"tasks": [{"name": "b", "taskType": "DATA_PROCESSING", "traceparent": OTHER_TP}]},
        HTTP_TRACEPARENT=TP,
    ).json()["items"]
    assert client_a.get(f"{API}/tasks/{one['id']}").json()["traceparent"] == TP
    assert client_a.get(f"{API}/tasks/{many[0]['id']}").json()["traceparent"] == OTHER_TP
    claimed = unit.post(f"{API}/execution-units/worker-001/claim", {"max": 5}).json()["items"]
    assert {t["id"]: t["traceparent"] for t in claimed} == {one["id"]: TP, many[0]["id"]: OTHER_TP}


# --- spans, with the OpenTelemetry SDK's in-memory exporter --------------------------------------


@pytest.fixture
def spans() -> Iterator[Any]:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra (taskhub[otel]) is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def _tp(span: Any) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _named(exporter: Any, name: str) -> list[Any]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


@pytest.mark.django_db
def test_the_spans_chain_enqueue_claim_complete_in_the_callers_trace(
    spans: Any, client_a: JsonClient, register_unit: Callable[..., tuple[JsonClient, dict[str, Any]]]
) -> None:
    unit, _ = register_unit("worker-001", "DATA_PROCESSING")
    created = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "DATA_PROCESSING"}, HTTP_TRACEPARENT=TP).json()
    (enqueue,) = _named(spans, "taskhub.enqueue")
    assert f"{enqueue.context.trace_id:032x}" == TRACE
    assert f"{enqueue.parent.span_id:016x}" == PARENT  # the child of the caller's span
    assert enqueue.attributes["taskhub.task.id"] == created["id"]
    assert enqueue.attributes["taskhub.outcome"] == "created"
    assert created["traceparent"] == _tp(enqueue)  # the task keeps the enqueue's context

    (handed,) = unit.post(f"{API}/execution-units/worker-001/claim", {"max": 1}).json()["items"]
    (claim,) = _named(spans, "taskhub.claim")
    assert claim.parent.span_id == enqueue.context.span_id
    assert handed["traceparent"] == _tp(claim)  # the unit's work continues from the claim
    assert claim.attributes["taskhub.attempt"] == 1
    assert claim.attributes["taskhub.unit.id"] == "worker-001"
    assert not claim.links

    reply = unit.post(f"{API}/tasks/{created['id']}/complete", {"attempt": 1}, HTTP_TRACEPARENT=handed["traceparent"])
    assert reply.status_code == 200, reply.content
    (complete,) = _named(spans, "taskhub.complete")
    assert complete.parent.span_id == claim.context.span_id
    assert [link.context.span_id for link in complete.links] == [enqueue.context.span_id]  # the task's context
    assert complete.attributes["taskhub.accepted"] is True
    assert complete.attributes["taskhub.status"] == "COMPLETED"
    assert {span.context.trace_id for span in spans.get_finished_spans()} == {int(TRACE, 16)}


@pytest.mark.django_db
def test_a_create_without_a_traceparent_starts_a_trace_the_task_keeps(
    spans: Any, client_a: JsonClient, register_unit: Callable[..., tuple[JsonClient, dict[str, Any]]]
) -> None:
    unit, _ = register_unit("worker-001", "DATA_PROCESSING")
    created = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "DATA_PROCESSING"}, HTTP_TRACEPARENT="bad")
    (enqueue,) = _named(spans, "taskhub.enqueue")
    assert enqueue.parent is None  # an invalid header is ignored: a new trace
    assert created.json()["traceparent"] == _tp(enqueue)
    (handed,) = unit.post(f"{API}/execution-units/worker-001/claim", {"max": 1}).json()["items"]
    # A report without the header is still the task's: the child of its stored context.
    unit.post(f"{API}/tasks/{handed['id']}/fail", {"attempt": 1, "error": "boom", "retryable": False})
    (fail,) = _named(spans, "taskhub.fail")
    assert fail.context.trace_id == enqueue.context.trace_id
    assert fail.parent.span_id == enqueue.context.span_id
    assert fail.attributes["taskhub.retryable"] is False


@pytest.mark.django_db
def test_a_retry_attempt_is_in_the_tasks_trace_and_linked_to_where_the_first_began(
    spans: Any, client_a: JsonClient, register_unit: Callable[..., tuple[JsonClient, dict[str, Any]]]
) -> None:
    unit, _ = register_unit("worker-001", "DATA_PROCESSING")
    created = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "DATA_PROCESSING"}, HTTP_TRACEPARENT=TP).json()
    (first,) = unit.post(f"{API}/execution-units/worker-001/claim", {"max": 1}).json()["items"]
    unit.post(f"{API}/tasks/{created['id']}/fail", {"attempt": 1, "error": "x"}, HTTP_TRACEPARENT=first["traceparent"])
    assert client_a.post(f"{API}/tasks/{created['id']}/retry").status_code == 200  # by hand: no backoff wait
    (second,) = unit.post(f"{API}/execution-units/worker-001/claim", {"max": 1}).json()["items"]
    assert second["attempt"] == 2
    claim1, claim2 = sorted(_named(spans, "taskhub.claim"), key=lambda s: s.attributes["taskhub.attempt"])
    (enqueue,) = _named(spans, "taskhub.enqueue")
    assert claim1.parent.span_id == claim2.parent.span_id == enqueue.context.span_id
    assert claim2.context.trace_id == claim1.context.trace_id == int(TRACE, 16)
    assert second["traceparent"] == _tp(claim2) != first["traceparent"]
    (link,) = claim2.links
    assert link.context.span_id == enqueue.context.span_id
    assert link.attributes["taskhub.link"] == "first_attempt"
    assert claim2.attributes["taskhub.retry"] is True


@pytest.mark.django_db
def test_batch_creates_and_batch_reports_make_one_span_per_item(
    spans: Any, client_a: JsonClient, register_unit: Callable[..., tuple[JsonClient, dict[str, Any]]]
) -> None:
    unit, _ = register_unit("worker-001", "DATA_PROCESSING")
    body = {
        "tasks": [
            {"name": "a", "taskType": "DATA_PROCESSING", "priority": 2},
            {"name": "b", "taskType": "DATA_PROCESSING", "traceparent": OTHER_TP, "priority": 1},
        ]
    }
    items = client_a.post(f"{API}/tasks/batch", body, HTTP_TRACEPARENT=TP).json()["items"]
    enqueues = {span.attributes["taskhub.task.id"]: span for span in _named(spans, "taskhub.enqueue")}
    assert f"{enqueues[items[0]['id']].context.trace_id:032x}" == TRACE
    assert enqueues[items[1]["id"]].context.trace_id == int(OTHER_TP.split("-")[1], 16)
    claimed = unit.post(f"{API}/execution-units/worker-001/claim", {"max": 2}).json()["items"]
    reports = {
        "reports": [
            {"taskId": claimed[0]["id"], "attempt": 1, "outcome": "complete"},
            {"taskId": claimed[1]["id"], "attempt": 9, "outcome": "complete"},  # stale: refused
        ]
    }
    replies = unit.post(f"{API}/tasks/reports", reports, HTTP_TRACEPARENT=claimed[0]["traceparent"]).json()["items"]
    assert [r["accepted"] for r in replies] == [True, False]
    by_task = {span.attributes["taskhub.task.id"]: span for span in _named(spans, "taskhub.complete")}
    claims = {span.attributes["taskhub.task.id"]: span for span in _named(spans, "taskhub.claim")}
    ok, stale = by_task[claimed[0]["id"]], by_task[claimed[1]["id"]]
    assert ok.parent.span_id == claims[claimed[0]["id"]].context.span_id
    assert ok.status.is_ok
    # The header is of another trace than the second task's: its span is in its own task's trace,
    # linked to the report's context, and it says the report was refused.
    assert stale.context.trace_id == claims[claimed[1]["id"]].context.trace_id
    assert "report" in [link.attributes["taskhub.link"] for link in stale.links]
    assert not stale.status.is_ok


@pytest.mark.django_db
def test_a_refused_single_report_is_an_error_span(
    spans: Any, leased: Callable[..., tuple[JsonClient, list[dict[str, Any]]]]
) -> None:
    unit, (task,) = leased(1)
    refused = unit.post(f"{API}/tasks/{task['id']}/complete", {"attempt": 5}, HTTP_TRACEPARENT=task["traceparent"])
    assert refused.status_code == 409
    (span,) = _named(spans, "taskhub.complete")
    assert not span.status.is_ok
    assert span.parent.span_id == int(task["traceparent"].split("-")[2], 16)


@pytest.mark.django_db
def test_with_no_tracer_provider_set_nothing_changes(client_a: JsonClient) -> None:
    pytest.importorskip("opentelemetry.trace")
    # The API's default provider records nothing: the hub makes no span and stores the header as sent.
    created = client_a.post(f"{API}/tasks", {"name": "t", "taskType": "DATA_PROCESSING"}, HTTP_TRACEPARENT=TP)
    assert created.json()["traceparent"] == TP
    assert not tracing.recording()


# --- nothing imported without the extra ----------------------------------------------------------

_BLOCK_OTEL = """
import importlib.abc, sys

class BlockOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"blocked: {name} (as if the otel extra were not installed)")
        return None

sys.meta_path.insert(0, BlockOpenTelemetry())
"""

_IMPORT_THE_HUB = """
import importlib, pkgutil, sys
import django
django.setup()
import taskhub.urls, taskhub.api.views.longpoll, taskhub.base.tracing
for package in ("taskhub.api", "taskhub.base", "tasks", "units"):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if ".migrations" not in info.name:
            importlib.import_module(info.name)
"""

_ROUND_TRIP = """
from django.core.management import call_command
from django.test import Client
call_command("migrate", verbosity=0)
from tests import factories
_, key = factories.api_key("otel-less")
hub = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
made = hub.post("/api/v1/tasks", {"name": "t", "taskType": "T"}, content_type="application/json", HTTP_TRACEPARENT=tp)
assert made.status_code == 201 and made.json()["traceparent"] == tp, made.content
reg = {"id": "w1", "unitType": "T", "unitName": "w1", "capacity": 1, "endpoint": "http://w1:1"}
token = hub.post("/api/v1/execution-units/register", reg, content_type="application/json").json()["token"]
unit = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
(claimed,) = unit.post("/api/v1/execution-units/w1/claim", {"max": 1}, content_type="application/json").json()["items"]
assert claimed["traceparent"] == tp, claimed
done = unit.post(f"/api/v1/tasks/{claimed['id']}/complete", {"attempt": 1}, content_type="application/json",
                 HTTP_TRACEPARENT=tp)
assert done.status_code == 200, done.content
batch = {"reports": [{"taskId": claimed["id"], "attempt": 1, "outcome": "complete"}]}
reported = unit.post("/api/v1/tasks/reports", batch, content_type="application/json", HTTP_TRACEPARENT=tp)
assert reported.status_code == 200, reported.content
"""

_CHECK = """
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")
assert not loaded, f"imported {loaded}"
print("ok")
"""


def _run_hub_script(code: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DB_HOST", "REDIS_HOST", "TASKHUB_REQUIRE_SERVICES")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "taskhub.settings",
        "VAR_DIR": str(tmp_path / "var"),
        "SQLITE_PATH": str(tmp_path / "hub.sqlite3"),
        "PYTHONPATH": str(settings.BASE_DIR),
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_without_opentelemetry_the_hub_imports_none_of_it_and_traceparents_pass_through(tmp_path: Path) -> None:
    _run_hub_script(_BLOCK_OTEL + _IMPORT_THE_HUB + _ROUND_TRIP + _CHECK, tmp_path)


def test_importing_the_hub_leaves_opentelemetry_unlooked_for_until_a_traced_call(tmp_path: Path) -> None:
    # Where it is installed, redis-py (8+) imports parts of it on its own; the hub's glue must not
    # have looked for it at import time.
    pytest.importorskip("opentelemetry.trace")
    check = "from taskhub.base import tracing\nassert tracing._otel is None, tracing._otel\nprint('ok')\n"
    _run_hub_script(_IMPORT_THE_HUB + check, tmp_path)
