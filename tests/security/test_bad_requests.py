"""Bad input answers 4xx with a reason, never 5xx (issue 18), through the session stack's real
gateway and PostgREST: a query string that is not UTF-8 (PostgREST 12 answered it 500), an
anonymous filter past what anon may make the database do, a body that is not JSON (PostgREST 12
answered bad UTF-8 in CSV and form bodies 500), and what nginx refuses itself while it reads a
request (it answered HTML pages). Kong judges the same cases (`tests/support/gateway_queries.py`;
tests/deploy/test_compose.py runs its Lua).

Requests go out byte for byte as written (a client library would re-encode them), from another
loopback address than the session's other tests, so that no rate budget of theirs is spent.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cli.dev.gateway import filter_too_complex_message
from cli.dev.stack import LocalStack
from tests.support import User
from tests.support.gateway_queries import (
    ANON_ALLOWED,
    ANON_REFUSED,
    JSON_MEDIA_TYPES,
    LIMITS,
    NOT_UTF8,
    OTHER_MEDIA_TYPES,
    UTF8,
)

MakeUser = Callable[..., User]
ADDRESS = "127.0.0.5"


def get(stack: LocalStack, query: str, token: str | None) -> tuple[int, Any, http.client.HTTPMessage]:
    """GET /rest/v1/products?`query`, each character of `query` one byte of the request line."""
    head = [f"GET /rest/v1/products?{query} HTTP/1.1", f"apikey: {stack.anon_key}"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    return send_raw(stack, head)


def send_raw(stack: LocalStack, head: list[str]) -> tuple[int, Any, http.client.HTTPMessage]:
    """A request of the request line and headers `head` as written (a Host header added), each
    character one byte: the answer's status, JSON (else text) and headers."""
    host, port = stack.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30, source_address=(ADDRESS, 0)) as sock:
        lines = [head[0], f"Host: {host}", *head[1:], "Connection: close", "", ""]
        sock.sendall("\r\n".join(lines).encode("latin-1"))
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


# Bytes that are not UTF-8 in a CSV and a form body: PostgREST 12 answered both 500.
NOT_UTF8_BODY = b"name\n\x80\xc0\x80\n"
# What may carry a body, to a table and an RPC that every caller's role reaches.
BODY_REQUESTS = [
    ("POST", "/rpc/tfc_to_usd"),
    ("POST", "/products"),
    ("PATCH", "/products?id=eq.00000000-0000-0000-0000-000000000000"),
    ("PUT", "/products?id=eq.00000000-0000-0000-0000-000000000000"),
    ("DELETE", "/products?id=eq.00000000-0000-0000-0000-000000000000"),
]


def send_body(
    stack: LocalStack, method: str, path: str, token: str | None, media: str | None, content: bytes
) -> httpx.Response:
    headers = {"apikey": stack.anon_key}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if media is not None:
        headers["Content-Type"] = media
    transport = httpx.HTTPTransport(local_address=ADDRESS)
    with httpx.Client(base_url=f"{stack.api_url}/rest/v1", transport=transport, timeout=30) as client:
        return client.request(method, path, content=content, headers=headers)


@pytest.mark.parametrize("media", OTHER_MEDIA_TYPES)
def test_a_body_that_is_not_json_is_refused_415_for_every_caller(
    stack: LocalStack, callers: dict[str, str | None], media: str
) -> None:
    for caller, token in [*callers.items(), ("service_role", stack.service_role_key)]:
        for method, path in BODY_REQUESTS:
            answer = send_body(stack, method, path, token, media, NOT_UTF8_BODY)
            assert answer.status_code == 415, (caller, method, path, answer.text)
            assert answer.json()["code"] == "unsupported_media_type"
            assert answer.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("media", JSON_MEDIA_TYPES)
def test_a_json_body_reaches_postgrest(
    stack: LocalStack, callers: dict[str, str | None], media: str | None
) -> None:
    for caller, token in callers.items():
        answer = send_body(stack, "POST", "/rpc/tfc_to_usd", token, media, b'{"amount": "2"}')
        # PostgREST reads JSON as it spells it, and judges the other spellings itself.
        if media in (None, "application/json", "application/json; charset=utf-8"):
            assert answer.status_code == 200, (caller, answer.text)
        else:
            assert (answer.status_code, answer.json()["code"]) == (400, "PGRST102"), (caller, answer.text)
    # A read says what it is, or nothing: its Content-Type is no matter.
    read = httpx.get(
        f"{stack.api_url}/rest/v1/products?select=id&limit=1",
        headers={"apikey": stack.anon_key, "Content-Type": "text/csv"},
    )
    assert read.status_code == 200, read.text


# What nginx refuses while it reads a request, before any location, and a path it does not route:
# a request line (as sent) and headers, and the answer's status and reason.
REFUSED_BY_NGINX = {
    "a request line past 8 KiB": (
        ["GET /rest/v1/products?select=id&name=neq." + "a" * 9000 + " HTTP/1.1"],
        414,
        "request_line_too_long",
    ),
    "a header past 8 KiB": (
        ["GET /rest/v1/products HTTP/1.1", "X-Padding: " + "a" * 9000],
        400,
        "headers_too_large",
    ),
    "no request line": (["GARBAGE"], 400, "bad_request"),
    "a header without a colon": (["GET /rest/v1/products HTTP/1.1", "Bad Header"], 400, "bad_request"),
    "a length that is no number": (
        ["POST /rest/v1/rpc/tfc_to_usd HTTP/1.1", "Content-Length: x"],
        400,
        "bad_request",
    ),
    "an unknown path": (["GET /rest/v2/products HTTP/1.1"], 404, "not_found"),
    "the gateway's internal paths": (["GET /anon/rest/v1/products HTTP/1.1"], 404, "not_found"),
}


@pytest.mark.parametrize("case", REFUSED_BY_NGINX)
def test_what_nginx_refuses_itself_is_json_with_a_reason(stack: LocalStack, case: str) -> None:
    head, status, reason = REFUSED_BY_NGINX[case]
    answered, answer, headers = send_raw(stack, [*head[:1], f"apikey: {stack.service_role_key}", *head[1:]])
    assert (answered, answer["code"]) == (status, reason), answer
    assert headers["Content-Type"] == "application/json"
