"""The client's end-to-end fixtures: a *target* (the local stack with the Auth and Realtime
doubles behind its gateway, or, with `pytest -m live`, a real Supabase from the environment),
users created through Auth's admin API, and clients for them.

Every end-to-end test runs against both targets; the live variant is skipped unless asked for.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from mycelium_client import (
    MyceliumClient,
    Product,
    ProductCategory,
    ProductUnit,
    RetryPolicy,
    RoleName,
    WatchSettings,
)
from tests.client.doubles.auth import AuthDouble
from tests.client.doubles.realtime import RealtimeDouble

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
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


@pytest.fixture(scope="session")
def doubles(stack: LocalStack) -> Iterator[Doubles]:
    """The Auth and Realtime doubles, behind the stack's gateway for the rest of the session."""
    auth = AuthDouble(stack.superuser_db_url, stack.jwt_secret)
    realtime = RealtimeDouble(stack.superuser_db_url, stack.jwt_secret)
    stack.set_upstreams(auth=auth.start(), realtime=realtime.start())
    stack.restart_gateway()
    try:
        yield Doubles(auth, realtime)
    finally:
        stack.set_upstreams(auth=None, realtime=None)
        stack.restart_gateway()
        realtime.stop()
        auth.stop()


def _live_target() -> Target:
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


@pytest.fixture(params=["local", pytest.param("live", marks=pytest.mark.live)])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "live":
        chosen = _live_target()
    else:
        stack: LocalStack = request.getfixturevalue("stack")
        chosen = Target(
            "local",
            stack.api_url,
            stack.anon_key,
            stack.service_role_key,
            stack.superuser_db_url,
            request.getfixturevalue("doubles"),
        )
    yield chosen
    chosen.close()


@pytest.fixture
def local_doubles(target: Target) -> Doubles:
    """For tests that steer a double (cut connections, refuse channels): local runs only."""
    if target.doubles is None:
        pytest.skip("needs the local test doubles")
    return target.doubles


MakeAccount = Callable[..., Account]


@pytest.fixture
def account(target: Target) -> MakeAccount:
    return target.account


def listed(
    provider: Account,
    price: Decimal | int | str = "2.5",
    *,
    name: str | None = None,
    category: ProductCategory = ProductCategory.COMPUTE,
    attributes: dict[str, object] | None = None,
    capacity: int | None = None,
) -> Product:
    """A product of `provider` (a farmer, for the default category), listed through the client."""
    return provider.client.marketplace.create_product(
        category,
        name or f"slice {uuid.uuid4().hex[:8]}",
        price,
        ProductUnit.MONTH,
        description="4 vCPU slice",
        attributes={"cpu": 4, "memory_gb": 8, "location": "BE"} if attributes is None else attributes,
        capacity=capacity,
    )
