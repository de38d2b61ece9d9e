"""The HTTP client the Auth client (supabase_auth) sends through, so that Auth's calls (sign-up,
sign-in, refresh, sign-out, the user) are observed as the REST calls are: each request reported
to the observers of mycelium_client._observe (a log event; with OpenTelemetry a client span,
whose context reaches Auth as `traceparent`), by its method, path and outcome only, never its
body (a password, a refresh token), query or headers. An answer of Auth that is an error is
reported with the reason `client.auth` raises.
"""

from __future__ import annotations

from typing import Any

import httpx
from supabase_auth.helpers import handle_exception

from mycelium_client._http import Call
from mycelium_client._observe import Outcome, Watch, default_observer
from mycelium_client.auth import translate
from mycelium_client.errors import MyceliumError


def _unread(body: Any) -> None:
    """Auth's answers are read by supabase_auth, not here."""


def _started(request: httpx.Request) -> Watch:
    watch = default_observer().started(Call(request.method, request.url.path, _unread))
    request.headers.update(watch.headers())
    return watch


def _refusal(request: httpx.Request, response: httpx.Response) -> MyceliumError | None:
    """The error `client.auth` raises for this answer (its body read), or None for a success."""
    if response.status_code < 400:
        return None
    refused = httpx.HTTPStatusError("Auth refused the request", request=request, response=response)
    return translate(handle_exception(refused))


class ObservedTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        watch = _started(request)
        try:
            response = self.inner.handle_request(request)
            if response.status_code >= 400:
                response.read()
        except BaseException as error:
            watch.ended(Outcome(0, error, 0))
            raise
        watch.ended(Outcome(response.status_code, _refusal(request, response), 0))
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncObservedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        watch = _started(request)
        try:
            response = await self.inner.handle_async_request(request)
            if response.status_code >= 400:
                await response.aread()
        except BaseException as error:
            watch.ended(Outcome(0, error, 0))
            raise
        watch.ended(Outcome(response.status_code, _refusal(request, response), 0))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def auth_http(timeout: float) -> httpx.Client:
    """The HTTP client for supabase_auth: redirects followed, as its own default client does."""
    return httpx.Client(
        transport=ObservedTransport(httpx.HTTPTransport()), timeout=timeout, follow_redirects=True
    )


def async_auth_http(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=AsyncObservedTransport(httpx.AsyncHTTPTransport()), timeout=timeout, follow_redirects=True
    )
