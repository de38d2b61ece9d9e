"""The gateway's abuse limits (issue 18), through the session stack's real gateway: rate limits per
caller and how the client meets them, the anonymous query and body allowances, the body limit,
and a clean 401 for a large body with a token PostgREST refuses.

The session's other tests share this gateway and send as 127.0.0.1: floods here come from other
loopback addresses (Linux routes all of 127.0.0.0/8 to lo) or with tokens of their own, so that
no budget of theirs is spent.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import psycopg
import pytest

from cli.dev.gateway import BODY_LIMIT_MIB, Gateway, Limits, filter_too_complex_message
from cli.dev.processes import RunAs
from cli.dev.stack import LocalStack, StackSettings
from cli.keys import access_token
from mycelium_client import (
    AsyncMyceliumClient,
    MyceliumClient,
    ProductCategory,
    QueryTimeout,
    RateLimited,
    RetryPolicy,
)
from mycelium_client.marketplace import SearchFilters
from tests.support import User
from tests.support.client import retry_delays
from tests.support.marketplace import list_product

MakeUser = Callable[..., User]


def headers(stack: LocalStack, token: str | None) -> dict[str, str]:
    sent = {"apikey": stack.anon_key}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    return sent


def burst(stack: LocalStack, tokens: list[str | None], address: str) -> list[httpx.Response]:
    """One read for each token (None: the anon key alone), all sent at once from `address`, each
    on a connection of its own."""

    async def send() -> list[httpx.Response]:
        transport = httpx.AsyncHTTPTransport(
            local_address=address, limits=httpx.Limits(max_connections=len(tokens))
        )
        async with httpx.AsyncClient(transport=transport, base_url=stack.api_url, timeout=60) as client:
            reads = [client.get("/rest/v1/credit_config", headers=headers(stack, token)) for token in tokens]
            return await asyncio.gather(*reads)

    return asyncio.run(send())


def assert_rate_limited(responses: list[httpx.Response]) -> None:
    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) == {200, 429}, statuses
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["Access-Control-Allow-Origin"] == "*"  # a browser can read why


def test_a_burst_above_the_anon_limit_is_answered_429_while_users_and_back_ends_pass(
    stack: LocalStack, make_user: MakeUser
) -> None:
    # More than the burst and as many again waiting their turn, at once: half with the anon key as
    # token, half with no token (anon too, counted with the same address); and in the same
    # instant, from the same address, a user (counted by its own token) and the service_role key
    # (not limited).
    anonymous = 2 * stack.settings.limits.anon_burst + 10
    tokens: list[str | None] = [stack.anon_key, None] * anonymous
    answers = burst(stack, [*tokens, make_user().token, *[stack.service_role_key] * 100], "127.0.0.2")
    assert_rate_limited(answers[0 : 2 * anonymous : 2])
    assert_rate_limited(answers[1 : 2 * anonymous : 2])
    assert {answer.status_code for answer in answers[2 * anonymous :]} == {200}


def test_one_users_flood_leaves_another_users_reads_alone(stack: LocalStack, make_user: MakeUser) -> None:
    flooder, other = make_user(), make_user()
    flood = [flooder.token] * (4 * stack.settings.limits.user_burst + 20)
    answers = burst(stack, [*flood, other.token], "127.0.0.3")
    assert_rate_limited(answers[:-1])
    assert answers[-1].status_code == 200


def client_reads(stack: LocalStack, address: str, policy: RetryPolicy) -> list[object]:
    """Anonymous reads through the client, more at once than the anon budget holds, from
    `address`: what each returned or raised."""
    reads = 4 * stack.settings.limits.anon_burst + 20

    async def send() -> list[object]:
        transport = httpx.AsyncHTTPTransport(
            local_address=address, limits=httpx.Limits(max_connections=reads)
        )
        async with AsyncMyceliumClient(
            stack.api_url,
            stack.anon_key,
            retry=policy,
            http_client=httpx.AsyncClient(transport=transport, timeout=60),
        ) as client:
            return await asyncio.gather(
                *(client.credits.packages() for _ in range(reads)), return_exceptions=True
            )

    return asyncio.run(send())


def test_the_client_retries_reads_refused_429_after_the_gateways_retry_after(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refused read waits the gateway's Retry-After (1 s) capped by the policy, not the
    policy's own shorter backoff, and is then let through (nginx queues it)."""
    policy = RetryPolicy(attempts=2, backoff=0.001, max_backoff=0.05)
    waited = retry_delays(monkeypatch)
    outcomes = client_reads(stack, "127.0.0.6", policy)
    assert all(isinstance(outcome, list) for outcome in outcomes), outcomes
    assert waited and set(waited) == {policy.max_backoff}


def test_the_client_raises_rate_limited_when_its_attempts_run_out(stack: LocalStack) -> None:
    outcomes = client_reads(stack, "127.0.0.7", RetryPolicy(attempts=1))
    limited = [outcome for outcome in outcomes if isinstance(outcome, RateLimited)]
    assert limited and all(isinstance(outcome, list | RateLimited) for outcome in outcomes), outcomes
    assert {(error.reason, error.status, error.retry_after) for error in limited} == {
        ("rate_limited", 429, 1)
    }


def query_of(length: int) -> str:
    """A cheap filter whose query string is `length` bytes long."""
    start = "select=id&name=not.eq."
    return start + "a" * (length - len(start))


def test_a_long_anonymous_query_is_refused_with_its_reason_while_a_user_may_send_it(
    stack: LocalStack, make_user: MakeUser
) -> None:
    allowance = stack.settings.limits.anon_query_bytes
    user = make_user()
    with httpx.Client(base_url=f"{stack.api_url}/rest/v1", timeout=30) as client:

        def products(token: str | None, query: str) -> httpx.Response:
            return client.get(f"/products?{query}", headers=headers(stack, token))

        assert products(stack.anon_key, query_of(allowance)).status_code == 200
        for anonymous in (stack.anon_key, None):
            refused = products(anonymous, query_of(allowance + 1))
            assert refused.status_code == 414
            assert refused.json()["code"] == "query_too_long"
            assert str(allowance) in refused.json()["message"]
        # Three times the allowance: PostgREST echoes it in a response header (Content-Location)
        # larger than nginx's default buffer, which once made it a 502.
        assert products(user.token, query_of(3 * allowance)).status_code == 200


def test_a_large_anonymous_body_is_refused_with_its_reason_while_a_user_may_send_it(
    stack: LocalStack, make_user: MakeUser
) -> None:
    """PostgREST 12 builds its hint for an unknown argument name in time that grows with the square
    of the name's length: anon's bodies are held to a small allowance, declared or chunked."""
    allowance = stack.settings.limits.anon_body_bytes
    start = b'{"query": "ubuntu", "'
    end = b'": 1}'

    def body_of(length: int) -> bytes:  # a search with an unknown argument, `length` bytes long
        return start + b"x" * (length - len(start) - len(end)) + end

    def chunked(content: bytes) -> Iterator[bytes]:
        yield from (content[at : at + 512] for at in range(0, len(content), 512))

    user = make_user()
    with httpx.Client(base_url=f"{stack.api_url}/rest/v1", timeout=30) as client:

        def search(token: str | None, content: bytes | Iterator[bytes]) -> httpx.Response:
            sent = {**headers(stack, token), "Content-Type": "application/json"}
            return client.post("/rpc/search_products", content=content, headers=sent)

        for anonymous in (stack.anon_key, None):
            for content in (body_of(allowance + 1), chunked(body_of(allowance + 1))):
                refused = search(anonymous, content)
                assert refused.status_code == 413, refused.text
                assert refused.json()["code"] == "body_too_large"
                assert str(allowance) in refused.json()["message"]
            # Within the allowance PostgREST answers: no such argument.
            assert search(anonymous, body_of(allowance)).json()["code"] == "PGRST202"
        assert search(user.token, body_of(4 * allowance)).json()["code"] == "PGRST202"


def test_the_largest_anonymous_call_of_the_client_fits_the_anonymous_body_allowance(
    stack: LocalStack, make_user: MakeUser
) -> None:
    """Anon's largest body: a search with a query, every filter, and a cursor to resume after."""
    words = f"allowance {uuid.uuid4().hex} slice with a gpu and plenty of memory for training models"
    attributes = {"cpu": 8, "memory_gb": 32, "gpu": True, "location": "BE"}
    product = list_product(make_user("farmer"), name=words[:40], description=words, attributes=attributes)
    filters: SearchFilters = {
        "category": ProductCategory.COMPUTE,
        "min_price": "0.000001",
        "max_price": "999999999.999999",
        "location": "BE",
        "attributes": {"gpu": True, "location": "BE"},
        "min_attributes": {"cpu": 8, "memory_gb": 32},
        "sort": "price_asc",
        "currency": "EUR",
    }
    with MyceliumClient(stack.api_url, stack.anon_key) as client:
        (first,) = client.marketplace.search(words, **filters)
        assert str(first.id) == product["id"]
        assert list(client.marketplace.search(words, after=first, page_size=100, **filters)) == []


def test_a_large_body_with_a_token_postgrest_refuses_is_answered_401_every_time(
    stack: LocalStack, make_user: MakeUser
) -> None:
    """PostgREST refuses the token before reading the body and resets the connection while the
    gateway still sends it: without the gateway's token check this was a 502 in about half of
    the tries above 150 KB."""
    body = json.dumps({"recipient": make_user().id, "amount": "1", "memo": "x" * 800_000})
    expired = access_token(stack.jwt_secret, make_user().id, now=int(time.time()) - 7200)
    with httpx.Client(base_url=f"{stack.api_url}/rest/v1", timeout=30) as client:
        for token, reason in (("not.a.token", "JWSError"), (expired, "JWT expired")):
            for _ in range(10):
                answer = client.post(
                    "/rpc/transfer_credits",
                    content=body,
                    headers={**headers(stack, token), "Content-Type": "application/json"},
                )
                assert answer.status_code == 401, answer.text
                assert answer.json()["code"] == "PGRST301" and reason in answer.json()["message"]
        too_large = client.post(
            "/rpc/transfer_credits",
            content=b"x" * (BODY_LIMIT_MIB * 2**20 + 1),
            headers={**headers(stack, stack.anon_key), "Content-Type": "application/json"},
        )
    assert too_large.status_code == 413 and too_large.json()["code"] == "body_too_large"


def test_a_statement_cancelled_at_its_timeout_reaches_the_client_as_query_timeout(stack: LocalStack) -> None:
    """PostgREST 12 answers SQLSTATE 57014 with 500 and names it in no header, so neither gateway
    can make it a 503 or 504 without reading every 500's body (docs/deploy.md, "A statement
    cancelled at its timeout"): the reason is what the client goes by. An anonymous read waits for
    a lock past anon's 3 s timeout."""
    with psycopg.connect(stack.superuser_db_url) as blocker:
        blocker.execute("lock table public.credit_config in access exclusive mode")
        with MyceliumClient(stack.api_url, stack.anon_key) as client, pytest.raises(QueryTimeout) as raised:
            client.credits.config()
        blocker.rollback()
    assert (raised.value.reason, raised.value.status) == ("query_timeout", 500)


def test_the_limits_are_settings_of_the_stack(tmp_path: Path) -> None:
    """A stack made before the limits existed gets the defaults; the stack's own reach nginx."""
    saved = asdict(StackSettings.generate(54320))
    assert StackSettings.load(json.dumps(saved)).limits == Limits()
    saved.pop("limits")
    assert StackSettings.load(json.dumps(saved)).limits == Limits()

    custom = Limits(
        anon_per_second=7,
        anon_burst=9,
        user_per_second=11,
        user_burst=13,
        anon_query_bytes=300,
        anon_filter_terms=5,
        anon_pattern_terms=3,
        anon_wildcards=6,
        anon_pattern_query_bytes=200,
    )
    gateway = Gateway(tmp_path / "gateway", tmp_path / "gateway.log", 1, RunAs.for_current_user())
    gateway.write_config(
        rest_port=2,
        anon_key="anon",
        service_role_key="service",
        auth_upstream=None,
        realtime_upstream=None,
        limits=custom,
    )
    config = gateway.config.read_text()
    for line in (
        "zone=anon:10m rate=7r/s;",
        "zone=users:10m rate=11r/s;",
        "limit_req zone=anon burst=18 delay=9;",
        "limit_req zone=users burst=26 delay=13;",
        '"~^.{301}" long;',
        "may hold 300 bytes",
        ')){6}" too_complex;',  # terms, each counted once
        ')){4}" too_complex;',  # patterns
        '(?:[*]|%2a|%25)){7}" too_complex;',
        '"~*^(?=.{201})',
        filter_too_complex_message(custom),
    ):
        assert line in config, line
