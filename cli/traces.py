"""The command's traces, with `mycelium[otel]` installed: each command is the root span of its
trace (`mycelium upkeep`, `mycelium credits grant`), the client's API calls its children, sent
on to the gateway as `traceparent`. With OTEL_EXPORTER_OTLP_ENDPOINT set (the standard
OpenTelemetry variables: OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS, ...), spans are exported
over OTLP/HTTP; without it they are made for whichever TracerProvider is set (none: nothing is
recorded). Without OpenTelemetry, all of this does nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING

import typer

from mycelium_client._tracing import trace_api

if TYPE_CHECKING:
    from opentelemetry.trace import Span

TRACER_NAME = "mycelium"
DEFAULT_SERVICE_NAME = "mycelium"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


@cache
def export_if_asked() -> bool:
    """Sets a TracerProvider exporting over OTLP when an endpoint is configured (once per
    process); whether spans are exported. False without the SDK and exporter installed."""
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return False
    service = os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    # Ends, so flushes the spans still waiting, when the process exits.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


@contextmanager
def span(name: str, *, new_trace: bool = False, **attributes: str | int) -> Iterator[None]:
    """A span around the block, current within it (the calls made inside are its children);
    `new_trace`: the root of a trace of its own (each round of a command that goes on). Ending
    in a failure (an exit code other than 0 included) sets its status to error."""
    trace = trace_api()
    if trace is None:
        yield
        return
    from opentelemetry.context import Context

    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name,
        context=Context() if new_trace else None,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield
        except typer.Exit as done:
            if done.exit_code:
                _failed(current, f"exit code {done.exit_code}")
            raise
        except BaseException as error:
            current.record_exception(error)
            _failed(current, type(error).__name__)
            raise


def _failed(current: Span, description: str) -> None:
    from opentelemetry.trace import StatusCode

    current.set_status(StatusCode.ERROR, description)


def name_current(name: str) -> None:
    """Renames the current span: a command's, once the command line has been resolved."""
    trace = trace_api()
    if trace is not None:
        trace.get_current_span().update_name(name)
