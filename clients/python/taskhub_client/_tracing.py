"""Trace context for submits: the W3C `traceparent` header a task is created with.

A submit sends, in this order of choice: the `traceparent` given to it; with OpenTelemetry installed
(`pip install 'taskhub-client[otel]'`) and a TracerProvider set, the context of a `taskhub.submit`
span (a child of the current span, or of the given traceparent) made around the request; else
nothing. OpenTelemetry is imported on the first submit, never by `import taskhub_client`, and not at
all where it is not installed.
"""

from __future__ import annotations

import re
from typing import Any

TRACEPARENT_HEADER = "traceparent"
# The hub's rule for a traceparent field (taskhub.base.tracing.TRACEPARENT_PATTERN; the two are held
# together by the shared vectors, tests/fixtures/traceparent.json): version 00 exactly, or a later
# one (not ff) with optional fields after (visible ASCII); lowercase hex; no all-zero ids.
_IDS = r"-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
_TRACEPARENT = re.compile(rf"(?:00{_IDS}|(?!00|ff)[0-9a-f]{{2}}{_IDS}(?:-[!-~]*)?)")

_otel: Any = None  # the opentelemetry.trace module once looked for; False: not installed


def check_traceparent(value: str | None) -> str | None:
    """`value` if it is a valid W3C traceparent (version-traceid-parentid-flags, lowercase hex), as
    the hub accepts it, else a ValueError: a mistyped context is the caller's bug, caught before the
    hub sees it (which would refuse it in a batch, and ignore it as a header)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _TRACEPARENT.fullmatch(value):
        raise ValueError(f"not a W3C traceparent (version-traceid-parentid-flags, lowercase hex): {value!r}")
    return value


def _tracer(provider: Any) -> Any | None:
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
    provider = provider if provider is not None else _otel.get_tracer_provider()
    if isinstance(provider, _otel.ProxyTracerProvider | _otel.NoOpTracerProvider):
        return None  # the API's default records nothing: send what we were given, unchanged
    from taskhub_client._version import __version__

    return provider.get_tracer("taskhub_client", __version__)


class SubmitSpan:
    """`taskhub.submit` around one submit request, or nothing. `traceparent` is what to send."""

    def __init__(self, provider: Any, traceparent: str | None, attributes: dict[str, Any]) -> None:
        self.traceparent = traceparent
        self._span: Any = None
        tracer = _tracer(provider)
        if tracer is None:
            return
        context = None
        if traceparent is not None:
            _, trace_id, span_id, flags = traceparent.split("-")[:4]
            parent = _otel.SpanContext(
                int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=_otel.TraceFlags(int(flags, 16))
            )
            context = _otel.set_span_in_context(_otel.NonRecordingSpan(parent))
        self._span = tracer.start_span(
            "taskhub.submit", context=context, kind=_otel.SpanKind.PRODUCER, attributes=attributes
        )
        own = self._span.get_span_context()
        if own.is_valid:
            self.traceparent = f"00-{own.trace_id:032x}-{own.span_id:016x}-{int(own.trace_flags):02x}"

    def headers(self) -> dict[str, str]:
        return {TRACEPARENT_HEADER: self.traceparent} if self.traceparent else {}

    def end(self, error: BaseException | None = None, **attributes: Any) -> None:
        if self._span is None:
            return
        self._span.set_attributes({f"taskhub.{k}": v for k, v in attributes.items() if v is not None})
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(_otel.Status(_otel.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self._span.end()
        self._span = None
