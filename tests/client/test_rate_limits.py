"""The client and the gateway's refusals (issue 18): a 429 is retried for every call, since the
gateway refused it before anything ran, after the answer's Retry-After capped by the retry
policy, and raises RateLimited once the attempts run out; a statement timeout is QueryTimeout and
is not retried. Exact waits and counts against httpx.MockTransport (the client's own decisions);
the real gateway's 429 is in tests/security/test_gateway_limits.py."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from mycelium_client import (
    AsyncMyceliumClient,
    InvalidArgument,
    MyceliumClient,
    QueryTimeout,
    RateLimited,
    RetryPolicy,
)
from mycelium_client.errors import from_body
from tests.support.client import retry_delays

POLICY = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.5)
CONFIG_ROW = {
    "credit_currency_code": "TFC",
    "credit_display_name": "ThreeFold Credits",
    "credit_symbol": "TFC",
    "tfc_to_usd_rate": "1",
    "updated_at": "2026-01-01T00:00:00+00:00",
}


class Answers:
    """Answers in turn (the last one again once they run out), counting what was sent."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers, self.sent = list(answers), 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return self.answers[min(self.sent, len(self.answers)) - 1]


def refused(retry_after: str | None = "1", body: object = None) -> httpx.Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    content = json.dumps(body or {"code": "rate_limited", "message": "API rate limit exceeded"})
    return httpx.Response(429, headers=headers, content=content)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds the client waits before each retry, sync and async."""
    return retry_delays(monkeypatch)


def client(answers: Answers) -> MyceliumClient:
    return MyceliumClient(
        "http://gateway.test",
        "anon",
        retry=POLICY,
        http_client=httpx.Client(transport=httpx.MockTransport(answers)),
    )


def test_a_read_refused_429_is_retried_after_retry_after(waits: list[float]) -> None:
    answers = Answers(refused("0.2"), httpx.Response(200, json=CONFIG_ROW))
    assert client(answers).credits.config().credit_currency_code == "TFC"
    assert answers.sent == 2 and waits == [0.2]


def test_a_call_that_is_not_idempotent_is_retried_after_a_429_too(waits: list[float]) -> None:
    """set_credit_config is not retried after a lost response (test_retries.py); a 429 says the
    gateway never passed it on."""
    answers = Answers(refused("0"), httpx.Response(200, json=CONFIG_ROW))
    service = client(answers)
    service.admin.set_credit_config(credit_display_name="ThreeFold Credits")
    assert answers.sent == 2 and waits == [0.0]


@pytest.mark.parametrize(
    ("retry_after", "waited"),
    [
        ("30", POLICY.max_backoff),  # capped by the policy
        (None, None),  # no header: the policy's backoff
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),  # a date is not seconds
        ("nan", None),
        ("-1", None),
    ],
)
def test_retry_after_is_capped_and_its_absence_falls_back_to_the_backoff(
    waits: list[float], retry_after: str | None, waited: float | None
) -> None:
    answers = Answers(refused(retry_after), httpx.Response(200, json=CONFIG_ROW))
    client(answers).credits.config()
    (wait,) = waits
    if waited is None:
        assert 0 < wait <= POLICY.backoff
    else:
        assert wait == waited


def test_when_the_attempts_run_out_the_call_raises_rate_limited(waits: list[float]) -> None:
    answers = Answers(refused("0.1"))
    with pytest.raises(RateLimited) as raised:
        client(answers).credits.config()
    assert answers.sent == POLICY.attempts and waits == [0.1] * (POLICY.attempts - 1)
    error = raised.value
    assert (error.reason, error.status, error.retry_after) == ("rate_limited", 429, 0.1)


def test_the_async_client_honours_429_alike(waits: list[float]) -> None:
    answers = Answers(refused("0.3"), refused("0.3"), httpx.Response(200, json=CONFIG_ROW))

    async def read() -> str:
        async with AsyncMyceliumClient(
            "http://gateway.test",
            "anon",
            retry=POLICY,
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(answers)),
        ) as async_client:
            return (await async_client.credits.config()).credit_currency_code

    assert asyncio.run(read()) == "TFC"
    assert answers.sent == 3 and waits == [0.3, 0.3]


def test_kongs_429_without_our_code_is_rate_limited_too() -> None:
    error = from_body(429, {"message": "API rate limit exceeded"})
    assert type(error) is RateLimited and error.reason == "rate_limited"


@pytest.mark.parametrize(
    ("status", "message", "reason"),
    [
        (413, "Request size limit exceeded", "body_too_large"),
        (414, "Request-URI Too Long", "request_line_too_long"),
    ],
)
def test_kongs_own_refusals_without_our_code_read_as_the_local_gateways(
    status: int, message: str, reason: str
) -> None:
    error = from_body(status, {"message": message})
    assert type(error) is InvalidArgument and error.reason == reason


def test_a_statement_timeout_is_query_timeout_and_is_not_retried(waits: list[float]) -> None:
    """PostgREST 12 answers SQLSTATE 57014 with 500; the same statement would time out again."""
    timeout = {
        "code": "57014",
        "details": None,
        "hint": None,
        "message": "canceling statement due to statement timeout",
    }
    answers = Answers(httpx.Response(500, json=timeout))
    with pytest.raises(QueryTimeout) as raised:
        client(answers).credits.config()
    assert answers.sent == 1 and waits == []
    assert (raised.value.reason, raised.value.status) == ("query_timeout", 500)
