"""What the logs and traces tests share: the records of the `mycelium` loggers as a test sees
them, the spans OpenTelemetry's SDK records in memory (the process's TracerProvider, set once),
and the secrets no log line may hold."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from cli.logs import ROOT_LOGGER
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


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a command's stderr (the lines telling progress are text)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def leaked(output: str, secrets: Iterable[str]) -> list[str]:
    """The secrets found in `output`, shown by their first characters only."""
    return [secret[:6] + "…" for secret in secrets if secret and secret in output]
