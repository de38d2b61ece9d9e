"""What the logs and traces tests share: the records of the `mycelium` loggers as a test sees
them, the spans OpenTelemetry's SDK records in memory (the process's TracerProvider, set once),
the JSON lines of a command's stderr, and a real Jaeger (the one `./run test` builds) to send
traces into."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from cli.dev.processes import free_port_base, log_tail, terminate, wait_until
from cli.dev.versions import jaeger_build
from cli.logs import ROOT_LOGGER, LogFormat, LogLevel, configure, reset
from mycelium_client._observe import FIELDS


@cache
def span_exporter() -> InMemorySpanExporter:
    """The in-memory exporter behind the process's TracerProvider (set on first use: a process
    has one, for good)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@contextmanager
def recorded_spans() -> Iterator[Spans]:
    exporter = span_exporter()
    exporter.clear()
    spans = Spans(exporter)
    try:
        yield spans
    finally:
        exporter.clear()


@dataclass
class Spans:
    exporter: InMemorySpanExporter

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.all() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r} among {[s.name for s in self.all()]}"
        return found[0]


def context(span: ReadableSpan) -> SpanContext:
    found = span.get_span_context()
    assert found is not None
    return found


def trace_id(span: ReadableSpan) -> str:
    return format(context(span).trace_id, "032x")


def traceparent(span: ReadableSpan) -> str:
    """The W3C `traceparent` header of `span`'s context."""
    of = context(span)
    return f"00-{of.trace_id:032x}-{of.span_id:016x}-{of.trace_flags:02x}"


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None, f"{child.name} has no parent"
    return child.parent.span_id == context(parent).span_id and trace_id(child) == trace_id(parent)


class _Kept(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Logged:
    records: list[logging.LogRecord] = field(default_factory=list)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The fields of every event `name`, with each record's level."""
        return [
            {**getattr(record, FIELDS), "level": record.levelname.lower()}
            for record in self.records
            if getattr(record, FIELDS, {}).get("event") == name
        ]


@contextmanager
def kept_logs() -> Iterator[Logged]:
    """Every record of the `mycelium` loggers, at any level, while the block runs (the command
    stops them from reaching the root logger, so pytest's caplog would not see them)."""
    logged = Logged()
    handler = _Kept(logged.records)
    logger = logging.getLogger(ROOT_LOGGER)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield logged
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def command_logs(log_format: LogFormat, level: LogLevel) -> Iterator[io.StringIO]:
    """The `mycelium` loggers configured as the command configures them, writing to the
    returned buffer instead of stderr, while the block runs."""
    written = io.StringIO()
    with redirect_stderr(written):
        configure(log_format, level)
    try:
        yield written
    finally:
        reset()


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a command's stderr (the lines telling progress are text)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def leaked(output: str, secrets: Iterable[str]) -> list[str]:
    """The secrets found in `output`, shown by their first characters only."""
    return [secret[:6] + "…" for secret in secrets if secret and secret in output]


# Jaeger v2 as its all-in-one runs it (traces kept in memory), on ports of its own: OTLP over
# HTTP in, the query API out, and none of the collector's default listeners.
JAEGER_CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@dataclass(frozen=True)
class Jaeger:
    otlp_url: str  # OTEL_EXPORTER_OTLP_ENDPOINT
    query_url: str

    def traces(self, service: str) -> list[dict[str, Any]]:
        """The traces Jaeger holds of `service` (its query API's JSON)."""
        answer = httpx.get(f"{self.query_url}/api/traces", params={"service": service}, timeout=10)
        answer.raise_for_status()
        data: list[dict[str, Any]] = answer.json()["data"] or []
        return data


@contextmanager
def running_jaeger(folder: Path) -> Iterator[Jaeger]:
    """The Jaeger `./run test` built, running until the block ends; the test skips, saying why,
    when it could not be built."""
    binary = jaeger_build()
    if not isinstance(binary, Path):
        pytest.skip(f"Jaeger: {binary}")
    base = free_port_base(span=4, start=48000)
    otlp, query, query_grpc = base + 1, base + 2, base + 3
    config = folder / "jaeger.yaml"
    config.write_text(JAEGER_CONFIG.format(otlp=otlp, query=query, query_grpc=query_grpc))
    log = folder / "jaeger.log"
    with log.open("wb") as output:
        process = subprocess.Popen([binary, "--config", f"file:{config}"], stdout=output, stderr=output)
    jaeger = Jaeger(f"http://127.0.0.1:{otlp}", f"http://127.0.0.1:{query}")
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"{jaeger.query_url}/api/services", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(answers, timeout=30), f"Jaeger did not start: {log_tail(log)}"
        yield jaeger
    finally:
        terminate(process.pid)
        process.wait()
