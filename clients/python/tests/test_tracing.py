"""Trace context on submit: the `traceparent` header the SDK sends (given, or a `taskhub.submit`
span's with OpenTelemetry installed), what the hub stores, and nothing of OpenTelemetry imported
where it is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub import Hub, Tap, TapTransport
from taskhub_client import BatchItem, Client, ValidationError
from taskhub_client._tracing import check_traceparent

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CREATED = {"id": 1, "name": "n", "taskType": "T", "status": "PENDING"}


def _recording(requests: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path.endswith("/batch"):
            return httpx.Response(201, json={"items": [{**CREATED, "created": True}]})
        return httpx.Response(201, json={**CREATED, "traceparent": request.headers.get("traceparent")})

    return httpx.MockTransport(answer)


@pytest.fixture
def spans() -> Iterator[tuple[Any, Any]]:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra (taskhub-client[otel]) is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _tp(span: Any) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


# The hub's own vectors (tests/fixtures/traceparent.json in the repository; its tests run them
# against taskhub.base.tracing): the SDK accepts exactly the values the hub's schema accepts.
VECTORS = json.loads((Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "traceparent.json").read_text())[
    "vectors"
]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["note"] for v in VECTORS])
def test_the_check_accepts_exactly_what_the_hub_accepts(vector: dict[str, Any]) -> None:
    if vector["valid"]:
        assert check_traceparent(vector["value"]) == vector["value"]  # sent as given
    else:
        with pytest.raises(ValueError, match="traceparent"):
            check_traceparent(vector["value"])


def test_a_given_traceparent_is_sent_as_the_header_on_every_retry() -> None:
    requests: list[httpx.Request] = []
    answers = iter([httpx.Response(503, json={"code": "x", "message": "busy"})])

    def flaky(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return next(answers, None) or httpx.Response(201, json=CREATED)

    with Client("http://hub", "k", transport=httpx.MockTransport(flaky), sleep=lambda s: None) as client:
        client.submit("n", "T", traceparent=TP)
    assert [r.headers.get("traceparent") for r in requests] == [TP, TP]


def test_without_a_traceparent_or_a_tracer_provider_no_header_is_sent() -> None:
    requests: list[httpx.Request] = []
    with Client("http://hub", "k", transport=_recording(requests)) as client:
        client.submit("n", "T")
        client.submit_many([BatchItem("n", "T")])
    assert [r.headers.get("traceparent") for r in requests] == [None, None]
    assert "traceparent" not in requests[1].read().decode()


def test_an_invalid_traceparent_is_refused_before_any_request() -> None:
    requests: list[httpx.Request] = []
    with Client("http://hub", "k", transport=_recording(requests)) as client:
        with pytest.raises(ValueError, match="traceparent"):
            client.submit("n", "T", traceparent="not-one")
        with pytest.raises(ValueError, match="traceparent"):
            client.submit_many([BatchItem("n", "T", traceparent=TP.upper())])
    assert requests == []


def test_a_batch_item_carries_its_own_traceparent_in_the_body() -> None:
    requests: list[httpx.Request] = []
    with Client("http://hub", "k", transport=_recording(requests)) as client:
        client.submit_many([BatchItem("n", "T", traceparent=TP)])
    assert b'"traceparent":"' + TP.encode() in requests[0].read().replace(b" ", b"")


def test_the_submit_span_is_a_child_of_the_current_span_and_its_context_is_sent(spans: tuple[Any, Any]) -> None:
    provider, exporter = spans
    requests: list[httpx.Request] = []
    tracer = provider.get_tracer("producer")
    with (
        Client("http://hub", "k", transport=_recording(requests), tracer_provider=provider) as client,
        tracer.start_as_current_span("checkout") as outer,
    ):
        task = client.submit("resize", "T")
    submit = next(s for s in exporter.get_finished_spans() if s.name == "taskhub.submit")
    assert submit.parent.span_id == outer.get_span_context().span_id
    assert submit.context.trace_id == outer.get_span_context().trace_id
    assert requests[0].headers["traceparent"] == _tp(submit) == task.traceparent
    assert submit.attributes["taskhub.task.type"] == "T"
    assert submit.attributes["taskhub.task.id"] == 1


def test_a_given_traceparent_is_the_submit_spans_parent(spans: tuple[Any, Any]) -> None:
    provider, exporter = spans
    requests: list[httpx.Request] = []
    with Client("http://hub", "k", transport=_recording(requests), tracer_provider=provider) as client:
        client.submit("n", "T", traceparent=TP)
    (submit,) = exporter.get_finished_spans()
    assert f"{submit.context.trace_id:032x}" == TP.split("-")[1]
    assert f"{submit.parent.span_id:016x}" == TP.split("-")[2]
    assert requests[0].headers["traceparent"] == _tp(submit)


def test_a_failed_submit_ends_its_span_with_an_error(spans: tuple[Any, Any]) -> None:
    provider, exporter = spans
    refuse = httpx.MockTransport(
        lambda request: httpx.Response(400, json={"code": "validation_error", "message": "no"})
    )
    client = Client("http://hub", "k", transport=refuse, tracer_provider=provider)
    with client, pytest.raises(ValidationError):
        client.submit("n", "T")
    (submit,) = exporter.get_finished_spans()
    assert not submit.status.is_ok


@pytest.mark.hub
def test_the_hub_stores_the_traceparent_the_sdk_sends(hub: Hub, task_type: str) -> None:
    tap = Tap()
    with Client(hub.url, hub.key, transport=TapTransport(tap)) as client:
        task = client.submit("traced", task_type, traceparent=TP)
        assert task.traceparent == TP and client.get(task.id).traceparent == TP
        own, inherited = client.submit_many(
            [BatchItem("own", task_type, traceparent=OTHER_TP), BatchItem("none", task_type)]
        )
        assert (own.traceparent, inherited.traceparent) == (OTHER_TP, None)
        assert client.submit("untraced", task_type).traceparent is None
    assert tap.to("POST", "/tasks")[0].headers["traceparent"] == TP


@pytest.mark.hub
def test_the_hub_stores_the_submit_spans_context(hub: Hub, task_type: str, spans: tuple[Any, Any]) -> None:
    provider, exporter = spans
    with Client(hub.url, hub.key, tracer_provider=provider) as client:
        task = client.submit("traced", task_type)
    (submit,) = exporter.get_finished_spans()
    # The hub records no spans of its own here (no TracerProvider in its process): it keeps the header.
    assert task.traceparent == _tp(submit)


def test_without_opentelemetry_nothing_of_it_is_imported_and_no_header_is_sent(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "opentelemetry":
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import httpx
        from taskhub_client import Client

        sent = []
        def answer(request):
            sent.append(request.headers.get("traceparent"))
            return httpx.Response(201, json={"id": 1, "name": "n", "taskType": "T", "status": "PENDING"})

        with Client("http://hub", "k", transport=httpx.MockTransport(answer)) as client:
            client.submit("n", "T")
            client.submit("n", "T", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        assert sent == [None, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], sent
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
        assert not loaded, loaded
        print("ok")
        """
    )
    here = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
