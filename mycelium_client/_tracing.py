"""OpenTelemetry, when it is installed (`pip install 'mycelium[otel]'`): a span per API call, its
context sent to the gateway as the W3C `traceparent` header. Imported on first use only, so
that the client works without it; with the API alone and no SDK configured, spans cost little
and record nothing.

Sending the spans anywhere is the application's choice (a TracerProvider with an exporter):
the client only makes them, under the tracer named `mycelium_client`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from mycelium_client._http import Call
    from mycelium_client._observe import Outcome, Watch

TRACER_NAME = "mycelium_client"


@cache
def trace_api() -> ModuleType | None:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


def current_trace_id() -> str | None:
    """The id of the trace under way (32 hex digits), if any."""
    trace = trace_api()
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def observer() -> TraceObserver | None:
    """Spans for the API calls, or None without OpenTelemetry."""
    return None if trace_api() is None else TraceObserver()


class _SpanWatch:
    """One call's span: current while the call runs (its log lines carry its trace id), and the
    context its requests carry."""

    def __init__(self, tracer: Tracer, call: Call[Any], fields: Mapping[str, object]) -> None:
        from opentelemetry import context, propagate, trace

        attributes: dict[str, str] = {"http.request.method": call.method, "url.path": call.path}
        if "rpc" in fields:
            attributes["mycelium.rpc"] = str(fields["rpc"])
        if "idempotency_key" in fields:
            attributes["mycelium.idempotency_key"] = str(fields["idempotency_key"])
        self.span: Span = tracer.start_span(
            f"{call.method} {call.path}", kind=trace.SpanKind.CLIENT, attributes=attributes
        )
        self._token = context.attach(trace.set_span_in_context(self.span))
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        self._headers = carrier

    def headers(self) -> Mapping[str, str]:
        return self._headers

    def retrying(self, retry: int, delay: float, cause: str) -> None:
        self.span.add_event("retry", {"retry": retry, "delay_ms": round(delay * 1000, 1), "cause": cause})

    def ended(self, outcome: Outcome) -> None:
        from opentelemetry import context
        from opentelemetry.trace import StatusCode

        if outcome.status:
            self.span.set_attribute("http.response.status_code", outcome.status)
        self.span.set_attribute("mycelium.retries", outcome.retries)
        reason = outcome.reason
        if reason is not None:
            self.span.set_attribute("mycelium.reason", reason)
            self.span.set_attribute("error.type", reason)
            self.span.set_status(StatusCode.ERROR, reason)
        context.detach(self._token)
        self.span.end()


class TraceObserver:
    def __init__(self) -> None:
        from opentelemetry import trace

        # A proxy until the application sets its TracerProvider, then that provider's tracer.
        self.tracer = trace.get_tracer(TRACER_NAME)

    def started(self, call: Call[Any], fields: Mapping[str, object]) -> Watch:
        return _SpanWatch(self.tracer, call, fields)
