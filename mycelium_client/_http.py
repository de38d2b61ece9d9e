"""Requests to PostgREST: building, retrying and reading them. Only `send` differs between the
sync and the async transport; everything else here is shared.

Retries: a *safe* call (a read, or a money call that carries an idempotency key the SQL
deduplicates on) is retried after network errors, 502/503/504 and a database connection lost
mid-request (`errors.lost_database_connection`), with backoff, reusing the same body and so the
same key. Any other call is retried only when the connection failed before the request was
sent, so it is never applied twice. Every call is retried after a 429:
the gateway refused it before anything ran; the wait is the answer's Retry-After, capped by the
policy's `max_backoff`, and when the attempts run out the call raises RateLimited.

Each call is reported to an observer (mycelium_client._observe: the log, and a trace when
OpenTelemetry is installed) when it starts, before each retry and when it ends, by `Attempts`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx
from pydantic import BaseModel

from mycelium_client._observe import Outcome, Watch, default_observer
from mycelium_client.amounts import dumps, loads
from mycelium_client.errors import (
    InvalidArgument,
    RateLimited,
    ServiceUnavailable,
    from_body,
    lost_database_connection,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# The request never left: retrying cannot apply anything twice.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRY_STATUSES = frozenset({502, 503, 504})
_RATE_LIMITED = 429
OBJECT = "application/vnd.pgrst.object+json"
# PostgREST answers an insert or update with the rows it wrote (else with nothing).
RETURN_ROWS = "return=representation"


class _JsonNull:
    """A body value sent as JSON null (a plain None means "leave out")."""

    def __repr__(self) -> str:
        return "NULL"


NULL = _JsonNull()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: `attempts` in all, the n-th retry after about
    `backoff * 2**n` seconds (with jitter), never more than `max_backoff`."""

    attempts: int = 4
    backoff: float = 0.05
    max_backoff: float = 2.0

    def delay(self, retry: int) -> float:
        base: float = min(self.backoff * 2**retry, self.max_backoff)
        return base * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One PostgREST request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, object] | None = None
    accept: str = "application/json"
    safe: bool = True  # a read, or a write made idempotent by its key
    prefer: str | None = None

    def encoded_body(self) -> bytes | None:
        if self.body is None:
            return None
        return dumps({k: None if v is NULL else v for k, v in self.body.items() if v is not None})


def rpc(function: str, parse: Callable[[Any], T], /, *, safe: bool, **args: object) -> Call[T]:
    """A call of a SQL function; `args` are its named arguments (None ones left out)."""
    return Call("POST", f"/rpc/{function}", parse, body=args, safe=safe)


def rows(model: type[M]) -> Callable[[Any], list[M]]:
    """Reads a JSON array of `model`s."""
    return lambda found: [model.model_validate(row) for row in found]


def newest_first_after(created_at: datetime, row_id: object) -> dict[str, str]:
    """Filters for the keyset page after the row (`created_at`, `row_id`) in `created_at desc,
    id desc` order: a range scan on a (owner, created_at) index, as fast on page 1,000 as on 1."""
    at = f'"{created_at.isoformat()}"'
    return {
        "created_at": f"lte.{at}",  # lets the index bound the scan
        "or": f"(created_at.lt.{at},and(created_at.eq.{at},id.lt.{row_id}))",
    }


# PostgREST returns at most db-max-rows rows a request (1000 here and on Supabase) and says
# nothing of the rows it left out: a longer page would come back short and read as the last one.
MAX_PAGE_SIZE = 1000


def _checked(page_size: int) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"page_size must be between 1 and {MAX_PAGE_SIZE} (PostgREST's max-rows), not {page_size!r}",
            reason="invalid_argument",
        )
    return page_size


def pages(fetch: Callable[[T | None], list[T]], page_size: int) -> Iterator[T]:
    """The rows of page after page, each page fetched (after the last row of the previous one)
    only when the caller has iterated that far. A bad `page_size` is refused here and now."""
    return _sync_pages(fetch, _checked(page_size))


def async_pages(fetch: Callable[[T | None], Awaitable[list[T]]], page_size: int) -> AsyncIterator[T]:
    """The async twin of `pages`."""
    return _async_pages(fetch, _checked(page_size))


def _sync_pages(fetch: Callable[[T | None], list[T]], page_size: int) -> Iterator[T]:
    last: T | None = None
    while True:
        page = fetch(last)
        yield from page
        if len(page) < page_size:
            return
        last = page[-1]


async def _async_pages(fetch: Callable[[T | None], Awaitable[list[T]]], page_size: int) -> AsyncIterator[T]:
    last: T | None = None
    while True:
        page = await fetch(last)
        for row in page:
            yield row
        if len(page) < page_size:
            return
        last = page[-1]


class Attempts:
    """What to do after each try of one call; reports the call to the observer, as a context
    manager around the tries: its start, each retry, and its end (with the error it raised)."""

    def __init__(self, call: Call[Any], policy: RetryPolicy) -> None:
        self.call, self.policy = call, policy
        self.done = 0  # tries that failed in a way a retry could mend
        self.retries = 0
        self.status = 0  # of the last response; 0 before one came
        self.watch: Watch | None = None

    def __enter__(self) -> Self:
        self.watch = default_observer().started(self.call)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self.watch is not None
        self.watch.ended(Outcome(self.status, error, self.retries))

    def headers(self, credentials: Credentials) -> dict[str, str]:
        """The next try's headers: the credentials', and the observer's (the trace context)."""
        headers = credentials.headers(self.call)
        if self.watch is not None:
            headers.update(self.watch.headers())
        return headers

    def after_error(self, error: httpx.TransportError) -> float:
        """The delay before retrying, or raises ServiceUnavailable."""
        self.done += 1
        retryable = self.call.safe or isinstance(error, _NOT_SENT)
        if not retryable or self.done >= self.policy.attempts:
            outcome = "" if retryable else " (not retried: the request may have been applied)"
            raise ServiceUnavailable(
                f"{self.call.method} {self.call.path} failed: {type(error).__name__}: {error}{outcome}",
                reason="network_error",
            ) from error
        return self._retrying(self.policy.delay(self.done - 1), type(error).__name__)

    def after_response(self, response: httpx.Response) -> float | None:
        """The delay before retrying, or None when the response is the answer."""
        self.status = response.status_code
        rate_limited = response.status_code == _RATE_LIMITED
        if not rate_limited:
            if not self.call.safe:
                return None
            if response.status_code not in _RETRY_STATUSES and not lost_database_connection(
                response.status_code, _body(response)
            ):
                return None
        self.done += 1
        if self.done >= self.policy.attempts:
            return None
        asked = retry_after(response) if rate_limited else None
        delay = min(asked, self.policy.max_backoff) if asked is not None else self.policy.delay(self.done - 1)
        return self._retrying(delay, f"HTTP {response.status_code}")

    def _retrying(self, delay: float, cause: str) -> float:
        self.retries += 1
        if self.watch is not None:
            self.watch.retrying(self.retries, delay, cause)
        return delay


def retry_after(response: httpx.Response) -> float | None:
    """The seconds a Retry-After header asks for; None without one, or for an HTTP date (which
    neither gateway sends) or anything else that is not a number of seconds."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _body(response: httpx.Response) -> Any:
    """An error response's JSON, or its text when it is not JSON."""
    try:
        return loads(response.content)
    except ValueError:
        return response.text


def read(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        error = from_body(response.status_code, _body(response))
        if isinstance(error, RateLimited):
            error.retry_after = retry_after(response)
        raise error
    if not response.content:
        return call.parse(None)
    return call.parse(loads(response.content))


@dataclass(frozen=True)
class Credentials:
    """What authenticates a request: the project's API key and the bearer token of the moment
    (a user's access token, or the key itself)."""

    api_key: str
    bearer: Callable[[], str]

    def headers(self, call: Call[Any]) -> dict[str, str]:
        headers = {"apikey": self.api_key, "Authorization": f"Bearer {self.bearer()}", "Accept": call.accept}
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        if call.prefer is not None:
            headers["Prefer"] = call.prefer
        return headers


class SyncTransport:
    def __init__(
        self, http: httpx.Client, rest_url: str, credentials: Credentials, policy: RetryPolicy
    ) -> None:
        self.http, self.rest_url, self.credentials, self.policy = http, rest_url, credentials, policy

    def send(self, call: Call[T]) -> T:
        content = call.encoded_body()
        with Attempts(call, self.policy) as attempts:
            while True:
                try:
                    response = self.http.request(
                        call.method,
                        self.rest_url + call.path,
                        params=call.params,
                        content=content,
                        headers=attempts.headers(self.credentials),
                    )
                except httpx.TransportError as error:
                    time.sleep(attempts.after_error(error))
                    continue
                delay = attempts.after_response(response)
                if delay is None:
                    return read(call, response)
                time.sleep(delay)

    def with_credentials(self, credentials: Credentials) -> SyncTransport:
        return SyncTransport(self.http, self.rest_url, credentials, self.policy)


class AsyncTransport:
    def __init__(
        self, http: httpx.AsyncClient, rest_url: str, credentials: Credentials, policy: RetryPolicy
    ) -> None:
        self.http, self.rest_url, self.credentials, self.policy = http, rest_url, credentials, policy

    async def send(self, call: Call[T]) -> T:
        content = call.encoded_body()
        with Attempts(call, self.policy) as attempts:
            while True:
                try:
                    response = await self.http.request(
                        call.method,
                        self.rest_url + call.path,
                        params=call.params,
                        content=content,
                        headers=attempts.headers(self.credentials),
                    )
                except httpx.TransportError as error:
                    await asyncio.sleep(attempts.after_error(error))
                    continue
                delay = attempts.after_response(response)
                if delay is None:
                    return read(call, response)
                await asyncio.sleep(delay)

    def with_credentials(self, credentials: Credentials) -> AsyncTransport:
        return AsyncTransport(self.http, self.rest_url, credentials, self.policy)
