"""One local stack (real PostgreSQL, real PostgREST, the gateway) per test session, on free ports."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.rows import TupleRow

from cli.dev.processes import free_port_base
from cli.dev.stack import LocalStack
from tests.client.doubles.auth import AuthDouble
from tests.client.doubles.realtime import RealtimeDouble
from tests.support import Api, User, new_user, stack_folder
from tests.support.client import Doubles
from tests.support.telemetry import Logged, Spans, kept_logs, recorded_spans


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The live suite runs only when asked for with `-m live`."""
    if "live" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(
        reason="live suite: run with `pytest -m live` and SUPABASE_URL, keys and DB URL set"
    )
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    # A run stopped with SIGTERM (a timeout, a cancelled CI job) still tears its servers down.
    signal.signal(signal.SIGTERM, _interrupt)
    folder = stack_folder("mycelium-tests-")
    local = LocalStack(folder / "stack")
    try:
        local.up(port_base=free_port_base())
        yield local
    finally:
        local.destroy()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def superuser_conn(stack: LocalStack) -> Iterator[psycopg.Connection[TupleRow]]:
    with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def db(superuser_conn: psycopg.Connection[TupleRow]) -> psycopg.Connection[TupleRow]:
    """A superuser connection (autocommit) for SQL-level setup and assertions."""
    return superuser_conn


@pytest.fixture(scope="session")
def anon_api(stack: LocalStack) -> Iterator[Api]:
    api = Api(stack.api_url, stack.anon_key)
    yield api
    api.close()


@pytest.fixture(scope="session")
def service_api(stack: LocalStack) -> Iterator[Api]:
    api = Api(stack.api_url, stack.service_role_key)
    yield api
    api.close()


@pytest.fixture
def make_user(
    stack: LocalStack, superuser_conn: psycopg.Connection[TupleRow]
) -> Iterator[Callable[..., User]]:
    """`make_user("farmer", email=None)`: a fresh user, created as GoTrue would, with a real JWT."""
    made: list[User] = []

    def make(*roles: str, email: str | None = None) -> User:
        user = new_user(stack, superuser_conn, *roles, email=email)
        made.append(user)
        return user

    yield make
    for user in made:
        user.api.close()


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


@pytest.fixture
def spans() -> Iterator[Spans]:
    """The spans finished while the test runs, recorded in memory by OpenTelemetry's SDK."""
    with recorded_spans() as recorded:
        yield recorded


@pytest.fixture
def logged() -> Iterator[Logged]:
    """The records of the `mycelium` loggers while the test runs, at every level."""
    with kept_logs() as kept:
        yield kept
