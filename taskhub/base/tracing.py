"""Trace context across the hop: W3C `traceparent` values, and the hub's OpenTelemetry spans.

A task keeps the trace context it was created in (`Task.traceparent`), hands it to the unit that
claims it (the claim reply's `traceparent`) and takes it back on the unit's reports (the
`traceparent` header). That needs no library: `parse_traceparent` is plain code.

With the `otel` extra installed (`pip install 'taskhub[otel]'`: opentelemetry-api and -sdk) and a
TracerProvider configured (docs/operations.md, "Tracing"), the hub also records spans:
`taskhub.enqueue` (a create, child of the caller's context), `taskhub.claim` (one per claimed
task, child of the task's context; its context is what the unit gets) and `taskhub.complete`,
`taskhub.fail`, `taskhub.progress` (child of the report's context, linked to the task's). This
module is the only one that knows OpenTelemetry, and it imports it on the first traced call, never
at import time: without the extra (or with no TracerProvider set) nothing is imported, no span is
made and every value passes through unchanged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

TRACEPARENT_HEADER = "traceparent"
TRACEPARENT_LENGTH = 55  # version 00: 2 + 1 + 32 + 1 + 16 + 1 + 2
TRACER_NAME = "taskhub"

# version-traceid-parentid-flags, lowercase hex; a version after 00 may append "-..." fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[!-~]*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
# The same rule as one regular expression, for a schema to declare (an API field's `pattern`):
# version 00 exactly, or a later one (not ff) with optional fields after (visible ASCII, as a
# header carries; a NUL is refused by the API's string fields); no all-zero ids.
_IDS = r"-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
TRACEPARENT_PATTERN = rf"^(?:00{_IDS}|(?!00|ff)[0-9a-f]{{2}}{_IDS}(?:-[!-~]*)?)$"


def parse_traceparent(value: Any) -> str | None:
    """`value` as a version-00 traceparent, or None when it is not a valid one.

    As the W3C Trace Context recommendation says (section 3.2, "traceparent header"): version ff
    and all-zero trace or parent ids are invalid, version 00 is exactly 55 characters, and a later
    version is read for its first four fields only (and sent on as 00, keeping just the sampled
    flag, as a version-00 vendor must). A header that does not parse is ignored: the caller then
    starts a new trace rather than refusing the request."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if version != "00":
        flags = f"{int(flags, 16) & 0x01:02x}"
    return f"00-{trace_id}-{parent_id}-{flags}"


def header_traceparent(headers: Mapping[str, str]) -> str | None:
    """The request's valid `traceparent` header, if any (an invalid one is ignored, see above;
    two headers arrive joined by a comma, which does not parse: also ignored)."""
    return parse_traceparent(headers.get(TRACEPARENT_HEADER))


# --- OpenTelemetry: imported on first use, only if installed ----------------------------------

_otel: Any = None  # the opentelemetry.trace module once looked for; False: not installed
_provider: Any = None  # a TracerProvider set by use_tracer_provider (tests), else the global one


def use_tracer_provider(provider: Any) -> None:
    """Record the hub's spans with `provider` rather than the global TracerProvider (None: the
    global one again). For tests, which cannot set the global provider more than once."""
    global _provider
    _provider = provider


def _tracer() -> Any | None:
    """The hub's tracer, or None when OpenTelemetry is absent or no TracerProvider is set (the
    API's default provider records nothing: skipping it keeps an untraced hub as it was)."""
    global _otel
    if _otel is None:
        try:
            from opentelemetry import trace
        except ImportError:
            _otel = False
        else:
            _otel = trace
    if _otel is False:
        return None
    provider = _provider if _provider is not None else _otel.get_tracer_provider()
    if isinstance(provider, _otel.ProxyTracerProvider | _otel.NoOpTracerProvider):
        return None
    return provider.get_tracer(TRACER_NAME)


def _span_context(traceparent: str | None) -> Any | None:
    if traceparent is None:
        return None
    _, trace_id, span_id, flags = traceparent.split("-")
    return _otel.SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=_otel.TraceFlags(int(flags, 16))
    )


def _format(span_context: Any) -> str | None:
    if not span_context.is_valid:
        return None
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def _parent(preferred: str | None) -> tuple[Any, list[Any]]:
    """The parent context of a hub span and the links it carries. The current span (a web
    framework's instrumentation made it from the same header) is used when it is in the trace of
    `preferred`; else `preferred` (as a remote parent); else the current context. A current span in
    another trace is linked rather than dropped."""
    current = _otel.get_current_span().get_span_context()
    wanted = _span_context(preferred)
    if wanted is None or (current.is_valid and current.trace_id == wanted.trace_id):
        return None, []  # None: the current context
    links = [_otel.Link(current, {"taskhub.link": "request"})] if current.is_valid else []
    return _otel.set_span_in_context(_otel.NonRecordingSpan(wanted)), links


def _ns(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1_000_000_000)


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    return {f"taskhub.{name}": value for name, value in values.items() if value is not None and value != ""}


class Span:
    """One hub span, or nothing (tracing off). `traceparent` is the context to store or hand on:
    the span's own while tracing, else the one it was given, unchanged."""

    def __init__(self, tracer: Any, name: str, parent: str | None, kind: str, attributes: Mapping[str, Any]) -> None:
        self.traceparent = parent
        self._span: Any = None
        if tracer is None:
            return
        context, links = _parent(parent)
        self._span = tracer.start_span(
            name, context=context, kind=getattr(_otel.SpanKind, kind), attributes=_attributes(attributes), links=links
        )
        self.traceparent = _format(self._span.get_span_context()) or parent

    def __enter__(self) -> Span:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        self.end(error)

    def set(self, **attributes: Any) -> None:
        if self._span is not None:
            self._span.set_attributes(_attributes(attributes))

    def end(self, error: BaseException | None = None) -> None:
        if self._span is None:
            return
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(_otel.Status(_otel.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self._span.end()
        self._span = None


def enqueue_span(traceparent: str | None, *, task_type: str, name: str) -> Span:
    """A create: `taskhub.enqueue`, child of the caller's context (`traceparent`, or the current
    span). Store `span.traceparent` with the task; `end()` it once the task is written."""
    return Span(_tracer(), "taskhub.enqueue", traceparent, "PRODUCER", {"task.type": task_type, "task.name": name})


def claim_traceparent(
    traceparent: str | None, *, task_id: int, task_type: str, attempt: int, unit_id: str | None, claimed_at: datetime
) -> str | None:
    """The `traceparent` a claimed task is handed with: while tracing, that of a `taskhub.claim`
    span (from the claim's time to now), child of the task's context, so the unit's work continues
    the task's trace; else the stored one, unchanged. A retry's attempt (attempt > 1) is a sibling
    of the first one under that context and also links to it (`taskhub.link: first_attempt`)."""
    tracer = _tracer()
    if tracer is None:
        return traceparent
    context, links = _parent(traceparent)
    stored = _span_context(traceparent)
    if attempt > 1 and stored is not None:
        links.append(_otel.Link(stored, {"taskhub.link": "first_attempt", "taskhub.attempt": attempt}))
    span = tracer.start_span(
        "taskhub.claim",
        context=context,
        kind=_otel.SpanKind.INTERNAL,
        attributes=_attributes(
            {"task.id": task_id, "task.type": task_type, "attempt": attempt, "unit.id": unit_id, "retry": attempt > 1}
        ),
        links=links,
        start_time=_ns(claimed_at),
    )
    span.end()
    return _format(span.get_span_context()) or traceparent


class Report:
    """What a report span learns once the report is handled: `done(stored, **attributes)` with the
    task's stored traceparent (the span links to it) and what came of the report."""

    def __init__(self) -> None:
        self.stored: str | None = None
        self.attributes: dict[str, Any] = {}

    def done(self, stored: str | None, **attributes: Any) -> None:
        self.stored = stored
        self.attributes.update(attributes)


def recording() -> bool:
    """Whether the hub records spans (OpenTelemetry installed and a TracerProvider set): a caller
    reads what only a span needs (the stored contexts of a batch report) only then."""
    return _tracer() is not None


@contextmanager
def report_span(outcome: str, traceparent: str | None, **attributes: Any) -> Iterator[Report]:
    """A unit's report on an attempt: `taskhub.<outcome>` (complete, fail, progress), recorded once
    the report is handled, child of the report's `traceparent` header (the context the unit got
    with its claim), linked to the task's stored context (`done(stored)`); where the header is
    missing, invalid or in another trace, the child of the stored context instead. A refused
    report (409 stale attempt, ...) is a span with an error status."""
    tracer = _tracer()
    report = Report()
    if tracer is None:
        yield report
        return
    started = time.time_ns()
    error: BaseException | None = None
    try:
        yield report
    except BaseException as exc:
        error = exc
        raise
    finally:
        _record_report(tracer, outcome, traceparent, report.stored, {**attributes, **report.attributes}, started, error)


def record_reports(
    traceparent: str | None,
    items: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    stored: Mapping[int, str | None],
    *,
    unit_id: str,
    started: int,
) -> None:
    """The spans of a batch report (`POST /tasks/reports`), one per item as `report_span` makes
    for one report: `items` are (report, reply) pairs, `stored` the tasks' stored contexts."""
    tracer = _tracer()
    if tracer is None:
        return
    for report, reply in items:
        error = reply.get("error")
        attributes = {
            "task.id": report["taskId"],
            "attempt": report["attempt"],
            "unit.id": unit_id,
            "accepted": reply.get("accepted"),
            "status": reply.get("status"),
        }
        problem = f"{error.get('code')}: {error.get('message')}" if error else None
        _record_report(
            tracer, report["outcome"], traceparent, stored.get(report["taskId"]), attributes, started, problem
        )


def _record_report(
    tracer: Any,
    outcome: str,
    traceparent: str | None,
    stored_traceparent: str | None,
    attributes: Mapping[str, Any],
    started: int,
    error: BaseException | str | None,
) -> None:
    incoming, stored = _span_context(traceparent), _span_context(stored_traceparent)
    parent = traceparent
    if stored is not None and (incoming is None or incoming.trace_id != stored.trace_id):
        parent = stored_traceparent
    context, links = _parent(parent)
    for other, why in ((stored, "task"), (incoming, "report")):
        if other is not None and _format(other) != parent:
            links.append(_otel.Link(other, {"taskhub.link": why}))
    span = tracer.start_span(
        f"taskhub.{outcome}",
        context=context,
        kind=_otel.SpanKind.INTERNAL,
        attributes=_attributes(attributes),
        links=links,
        start_time=started,
    )
    if isinstance(error, BaseException):
        span.record_exception(error)
    if error is not None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        span.set_status(_otel.Status(_otel.StatusCode.ERROR, message))
    span.end()
