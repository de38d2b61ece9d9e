"""The client's end-to-end fixtures: the *target* every test runs against (the local stack with
the Auth and Realtime doubles, or, with `pytest -m live`, a real Supabase from the environment),
and accounts on it. The live variant is skipped unless asked for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cli.dev.stack import LocalStack
from tests.support.client import Doubles, MakeAccount, Target, live_target


@pytest.fixture(params=["local", pytest.param("live", marks=pytest.mark.live)])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "live":
        chosen = live_target()
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


@pytest.fixture
def account(target: Target) -> MakeAccount:
    return target.account
