"""What the client's end-to-end tests share: a *target* (the local stack with the Auth and Realtime
doubles behind its gateway, or a real Supabase from the environment), accounts on it, products
listed through the client, and a transport that loses responses after the server applied them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
import psycopg
import pytest
from psycopg.rows import TupleRow

from mycelium_client import (
    AsyncMyceliumClient,
    MyceliumClient,
    Product,
    ProductCategory,
    ProductUnit,
    RetryPolicy,
    RoleName,
    WatchSettings,
)
from mycelium_client._http import Attempts
from tests.client.doubles.auth import AuthDouble
from tests.client.doubles.realtime import RealtimeDouble
from tests.support import SHARED

AUTH_SPEC = SHARED / "specs" / "supabase-auth-openapi.yaml"
LIVE_VARIABLES = ("SUPABASE_URL", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY", "MYCELIUM_DB_URL")
PASSWORD = "correct horse battery staple"
FAST_WATCH = WatchSettings(heartbeat_seconds=0.3, join_timeout_seconds=5, max_backoff_seconds=0.5)
FAST_RETRY = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)


@dataclass
class Doubles:
    auth: AuthDouble
    realtime: RealtimeDouble


@dataclass
class Account:
    id: uuid.UUID
    email: str
    token: str
    client: MyceliumClient


@dataclass
class Target:
    """Where the end-to-end tests run: a Supabase URL, its keys and a database URL for setup."""

    name: str
    url: str
    anon_key: str
    service_role_key: str
    db_url: str
    doubles: Doubles | None = None
    _clients: list[MyceliumClient] = field(default_factory=list)

    def client(self, *, service_role: bool = False, **options: object) -> MyceliumClient:
        options = {"retry": FAST_RETRY, "watch": FAST_WATCH, **options}
        key = self.service_role_key if service_role else self.anon_key
        made = MyceliumClient(self.url, key, **options)  # type: ignore[arg-type]
        self._clients.append(made)
        return made

    def create_user(self, email: str | None = None, *, confirmed: bool = True) -> tuple[uuid.UUID, str]:
        """A user with PASSWORD (its e-mail confirmed unless told), through Auth's admin API
        (GoTrue, or the double)."""
        address = email or f"client-{uuid.uuid4().hex[:12]}@example.test"
        response = httpx.post(
            f"{self.url}/auth/v1/admin/users",
            headers={"apikey": self.service_role_key, "Authorization": f"Bearer {self.service_role_key}"},
            json={"email": address, "password": PASSWORD, "email_confirm": confirmed},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return uuid.UUID(response.json()["id"]), address

    def account(self, funded: Decimal | int | str | None = None, role: RoleName | None = None) -> Account:
        """A fresh signed-in user (optionally holding `funded` credits, or a provider's `role`)
        with its own client."""
        user_id, email = self.create_user()
        client = self.client()
        session = client.auth.sign_in(email, PASSWORD)
        if funded is not None:
            self.service().admin.purchase_credits(user_id, funded, f"test-{uuid.uuid4()}")
        if role is not None:
            self.service().admin.grant_role(user_id, role)
        return Account(user_id, email, session.access_token, client)

    def service(self) -> MyceliumClient:
        return self.client(service_role=True)

    def connect(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(self.db_url, autocommit=True)

    def close(self) -> None:
        for made in self._clients:
            made.close()
        self._clients.clear()


@asynccontextmanager
async def async_clients(
    target: Target, buyer: Account, provider: Account
) -> AsyncIterator[tuple[AsyncMyceliumClient, AsyncMyceliumClient, AsyncMyceliumClient]]:
    """Async clients of `target`: signed in as `buyer`, as `provider`, and one with the service
    role key."""
    async with (
        AsyncMyceliumClient(target.url, target.anon_key, retry=FAST_RETRY) as as_buyer,
        AsyncMyceliumClient(target.url, target.anon_key, retry=FAST_RETRY) as as_provider,
        AsyncMyceliumClient(target.url, target.service_role_key, retry=FAST_RETRY) as service,
    ):
        await as_buyer.auth.sign_in(buyer.email, PASSWORD)
        await as_provider.auth.sign_in(provider.email, PASSWORD)
        yield as_buyer, as_provider, service


def live_target() -> Target:
    missing = [name for name in LIVE_VARIABLES if not os.environ.get(name)]
    if missing:
        pytest.skip(f"live suite: set {', '.join(missing)} to run against a real Supabase")
    env = os.environ
    return Target(
        "live",
        env["SUPABASE_URL"].rstrip("/"),
        env["SUPABASE_ANON_KEY"],
        env["SUPABASE_SERVICE_ROLE_KEY"],
        env["MYCELIUM_DB_URL"],
    )


MakeAccount = Callable[..., Account]


def listed(
    provider: Account,
    price: Decimal | int | str = "2.5",
    *,
    name: str | None = None,
    category: ProductCategory = ProductCategory.COMPUTE,
    attributes: dict[str, object] | None = None,
    capacity: int | None = None,
    unit: ProductUnit = ProductUnit.MONTH,
) -> Product:
    """A product of `provider` (a farmer, for the default category), listed through the client."""
    return provider.client.marketplace.create_product(
        category,
        name or f"slice {uuid.uuid4().hex[:8]}",
        price,
        unit,
        description="4 vCPU slice",
        attributes={"cpu": 4, "memory_gb": 8, "location": "BE"} if attributes is None else attributes,
        capacity=capacity,
    )


class DropsResponses(httpx.BaseTransport):
    """Sends the request for real, then loses the response `drops` times (for matching paths)."""

    def __init__(self, path: str, drops: int) -> None:
        self.inner, self.path, self.drops, self.sent = httpx.HTTPTransport(), path, drops, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.path in request.url.path:
            self.sent += 1
            if self.drops > 0:
                self.drops -= 1
                response.read()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response


class AsyncDropsResponses(httpx.AsyncBaseTransport):
    def __init__(self, path: str, drops: int) -> None:
        self.inner, self.path, self.drops, self.sent = httpx.AsyncHTTPTransport(), path, drops, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if self.path in request.url.path:
            self.sent += 1
            if self.drops > 0:
                self.drops -= 1
                await response.aread()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response


class Unavailable(httpx.BaseTransport):
    """503 the first `times` requests (PostgREST without its database), then forwards."""

    def __init__(self, times: int) -> None:
        self.inner, self.times, self.sent = httpx.HTTPTransport(), times, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.sent <= self.times:
            return httpx.Response(503, json={"code": "PGRST001", "message": "Database client error"})
        return self.inner.handle_request(request)


def signed_in(target: Target, email: str, transport: httpx.BaseTransport) -> MyceliumClient:
    client = target.client(http_client=httpx.Client(transport=transport))
    client.auth.sign_in(email, PASSWORD)
    return client


def retry_delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the client's transports decide on before each retry after an answer, recorded
    as they are decided (and still waited): sleep itself is left alone, since other threads of
    the session (the doubles, httpx) sleep too."""
    delays: list[float] = []
    decide = Attempts.after_response

    def recorded(attempts: Attempts, response: httpx.Response) -> float | None:
        delay = decide(attempts, response)
        if delay is not None:
            delays.append(delay)
        return delay

    monkeypatch.setattr(Attempts, "after_response", recorded)
    return delays
