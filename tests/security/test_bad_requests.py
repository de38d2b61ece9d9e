"""Bad input answers 4xx with a reason, never 5xx (issue 18), through the session stack's real
gateway and PostgREST: a query string that is not UTF-8 (PostgREST 12 answered it 500), and an
anonymous filter past what anon may make the database do. Kong judges the same cases
(`tests/support/gateway_queries.py`; tests/deploy/test_compose.py runs its Lua).

Requests go out byte for byte as written (a client library would re-encode them), from another
loopback address than the session's other tests, so that no rate budget of theirs is spent.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from cli.dev.gateway import filter_too_complex_message
from cli.dev.stack import LocalStack
from tests.support import User
from tests.support.gateway_queries import ANON_ALLOWED, ANON_REFUSED, LIMITS, NOT_UTF8, UTF8

MakeUser = Callable[..., User]
ADDRESS = "127.0.0.5"


def get(stack: LocalStack, query: str, token: str | None) -> tuple[int, Any, http.client.HTTPMessage]:
    """GET /rest/v1/products?`query`, each character of `query` one byte of the request line."""
    host, port = stack.api_url.removeprefix("http://").split(":")
    head = [f"GET /rest/v1/products?{query} HTTP/1.1", f"Host: {host}", f"apikey: {stack.anon_key}"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    with socket.create_connection((host, int(port)), timeout=30, source_address=(ADDRESS, 0)) as sock:
        sock.sendall(("\r\n".join([*head, "Connection: close", "", ""])).encode("latin-1"))
        response = http.client.HTTPResponse(sock)
        response.begin()
        content = response.read()
    try:
        answer: Any = json.loads(content)
    except ValueError:
        answer = content.decode("utf-8", "replace")
    return response.status, answer, response.headers


@pytest.fixture
def callers(stack: LocalStack, make_user: MakeUser) -> dict[str, str | None]:
    return {"anon": None, "anon key as token": stack.anon_key, "user": make_user().token}


@pytest.mark.parametrize("query", NOT_UTF8)
def test_a_query_that_is_not_utf8_is_refused_400_for_every_caller(
    stack: LocalStack, callers: dict[str, str | None], query: str
) -> None:
    for caller, token in [*callers.items(), ("service_role", stack.service_role_key)]:
        status, answer, headers = get(stack, query, token)
        assert status == 400, (caller, answer)
        assert answer["code"] == "invalid_query_encoding", caller
        assert headers["Access-Control-Allow-Origin"] == "*"  # a browser can read why


@pytest.mark.parametrize("query", UTF8)
def test_a_utf8_query_is_answered_for_every_caller(
    stack: LocalStack, callers: dict[str, str | None], query: str
) -> None:
    for caller, token in callers.items():
        status, answer, _ = get(stack, query, token)
        assert status == 200, (caller, answer)


@pytest.mark.parametrize(("query", "reason"), ANON_REFUSED.items())
def test_an_anonymous_filter_past_the_allowance_is_refused_while_a_user_may_send_it(
    stack: LocalStack, callers: dict[str, str | None], query: str, reason: str
) -> None:
    for caller in ("anon", "anon key as token"):
        status, answer, _ = get(stack, query, callers[caller])
        assert (status, answer["code"]) == (400, reason), (caller, answer)
        if reason == "filter_too_complex":
            assert answer["message"] == filter_too_complex_message(LIMITS)
    status, answer, _ = get(stack, query, callers["user"])
    assert status == 200, answer


@pytest.mark.parametrize("query", ANON_ALLOWED)
def test_an_anonymous_filter_within_the_allowance_is_answered(
    stack: LocalStack, callers: dict[str, str | None], query: str
) -> None:
    status, answer, _ = get(stack, query, callers["anon"])
    assert status == 200, answer
