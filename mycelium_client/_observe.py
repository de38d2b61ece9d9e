"""What the transports report about each API call, and to whom: a call is reported when it
starts, before each retry and when it ends, to an *observer*. Both transports, sync and async,
report through `Attempts` (mycelium_client._http), so they report alike. The observers are the
log (always; the `mycelium.client` logger) and, when OpenTelemetry is installed, a trace
(mycelium_client._tracing).

The log never carries a request's headers, body or query string: the path, the SQL function,
the idempotency key and the outcome only. Configuring handlers is the application's business
(the `mycelium` command does it): the client only logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel

from mycelium_client import _tracing
from mycelium_client.errors import MyceliumError, ServiceUnavailable

if TYPE_CHECKING:
    from mycelium_client._http import Call

log = logging.getLogger("mycelium.client")

# The attribute of a log record that holds its structured fields (a JSON formatter's keys).
FIELDS = "mycelium"
# The arguments that make a call idempotent (a purchase's key is its payment reference).
IDEMPOTENCY_ARGUMENTS = ("idempotency_key", "payment_reference")
RPC_PREFIX = "/rpc/"


def event(logger: logging.Logger, level: int, name: str, message: str, **fields: object) -> None:
    """Logs `message` as the event `name` with its `fields` (and the trace's id, in a trace).
    Nothing is built when the logger would drop the record."""
    if not logger.isEnabledFor(level):
        return
    trace_id = _tracing.current_trace_id()
    if trace_id is not None:
        fields["trace_id"] = trace_id
    logger.log(level, message, extra={FIELDS: {"event": name, **fields}})


M = TypeVar("M", bound=BaseModel)


def logs_totals(name: str, what: str, parse: Callable[[Any], M]) -> Callable[[Any], M]:
    """`parse`, which also logs what it read, at INFO as the event `name`, whoever calls it: the
    totals of a sweep's batch (expired lots, released holds), or of the ledger."""

    def parsed(found: Any) -> M:
        batch = parse(found)
        fields = batch.model_dump()
        totals = ", ".join(f"{key} {value}" for key, value in fields.items())
        event(log, logging.INFO, name, f"{what}: {totals}", **fields)
        return batch

    return parsed


@dataclass(frozen=True)
class Outcome:
    """How a call ended: the last HTTP status (0: no response came), the error it raised if any,
    and how often it was retried."""

    status: int
    error: BaseException | None
    retries: int

    @property
    def reason(self) -> str | None:
        if self.error is None:
            return None
        return self.error.reason if isinstance(self.error, MyceliumError) else type(self.error).__name__


class Watch(Protocol):
    """One call, observed from its start."""

    def headers(self) -> Mapping[str, str]:
        """Headers to send with each attempt (the trace context)."""
        ...

    def retrying(self, retry: int, delay: float, cause: str) -> None: ...

    def ended(self, outcome: Outcome) -> None: ...


class Observer(Protocol):
    def started(self, call: Call[Any], fields: Mapping[str, object]) -> Watch:
        """`fields`: the call's `describe`."""
        ...


def rpc_name(call: Call[Any]) -> str | None:
    return call.path.removeprefix(RPC_PREFIX) if call.path.startswith(RPC_PREFIX) else None


def idempotency_key(call: Call[Any]) -> str | None:
    for name in IDEMPOTENCY_ARGUMENTS:
        key = (call.body or {}).get(name)
        if isinstance(key, str):
            return key
    return None


def describe(call: Call[Any]) -> dict[str, object]:
    """A call's fields for the log and the trace: never its headers, body or query."""
    fields: dict[str, object] = {"method": call.method, "path": call.path}
    rpc = rpc_name(call)
    if rpc is not None:
        fields["rpc"] = rpc
    key = idempotency_key(call)
    if key is not None:
        fields["idempotency_key"] = key
    return fields


class _LogWatch:
    """Logs the end of a call and each retry. A money operation (a call carrying an idempotency
    key) ends at INFO, any other call at DEBUG, and a call that got no answer at WARNING."""

    def __init__(self, fields: Mapping[str, object]) -> None:
        self.fields = fields
        self.money = "idempotency_key" in self.fields
        self.began = time.perf_counter()

    def headers(self) -> Mapping[str, str]:
        return {}

    def retrying(self, retry: int, delay: float, cause: str) -> None:
        event(
            log,
            logging.INFO,
            "api_retry",
            f"{self._what()}: retry {retry} in {delay * 1000:.0f} ms after {cause}",
            **self.fields,
            retry=retry,
            delay_ms=round(delay * 1000, 1),
            cause=cause,
        )

    def ended(self, outcome: Outcome) -> None:
        duration_ms = round((time.perf_counter() - self.began) * 1000, 1)
        unanswered = isinstance(outcome.error, ServiceUnavailable) or (
            outcome.error is not None and not isinstance(outcome.error, MyceliumError)
        )
        level = logging.WARNING if unanswered else logging.INFO if self.money else logging.DEBUG
        result = "ok" if outcome.error is None else f"error {outcome.reason}"
        event(
            log,
            level,
            "api_call",
            f"{self._what()}: {result} in {duration_ms:.0f} ms",
            **self.fields,
            outcome="ok" if outcome.error is None else "error",
            reason=outcome.reason,
            status=outcome.status,
            retries=outcome.retries,
            duration_ms=duration_ms,
        )

    def _what(self) -> str:
        rpc = self.fields.get("rpc")
        return f"rpc {rpc}" if rpc else f"{self.fields['method']} {self.fields['path']}"


class LogObserver:
    def started(self, call: Call[Any], fields: Mapping[str, object]) -> Watch:
        return _LogWatch(fields)


class _Watches:
    """Several watches of one call: ended in the reverse order of their start, so that the
    trace's span is still the current one while the log reports the end."""

    def __init__(self, watches: list[Watch]) -> None:
        self.watches = watches
        merged: dict[str, str] = {}
        for watch in watches:
            merged.update(watch.headers())
        self._headers = merged

    def headers(self) -> Mapping[str, str]:
        return self._headers

    def retrying(self, retry: int, delay: float, cause: str) -> None:
        for watch in self.watches:
            watch.retrying(retry, delay, cause)

    def ended(self, outcome: Outcome) -> None:
        for watch in reversed(self.watches):
            watch.ended(outcome)


class Observers:
    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def started(self, call: Call[Any], fields: Mapping[str, object] | None = None) -> Watch:
        described = describe(call) if fields is None else fields
        return _Watches([observer.started(call, described) for observer in self.observers])


@cache
def default_observer() -> Observers:
    """The trace (when OpenTelemetry is installed), then the log."""
    tracing = _tracing.observer()  # OpenTelemetry is imported here, on the first call
    return Observers(LogObserver()) if tracing is None else Observers(tracing, LogObserver())
