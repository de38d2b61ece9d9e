"""What the client tells of its calls: a log event per call and per retry (`mycelium.client`), and
with OpenTelemetry a client span per call, a child of the caller's, whose context reaches
PostgREST through the gateway as `traceparent` (the local stack's PostgREST echoes it back).
Auth's calls (through supabase_auth) alike, their context reaching Auth."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from mycelium_client import (
    AsyncMyceliumClient,
    InsufficientCredits,
    MyceliumClient,
    NotAuthorized,
    ServiceUnavailable,
)
from mycelium_client.admin import audited
from tests.support.client import FAST_RETRY, PASSWORD, Doubles, MakeAccount, Target, Unavailable
from tests.support.telemetry import Logged, Spans, is_child, trace_id, traceparent

TRANSFER = "POST /rpc/transfer_credits"
SIGN_IN = "POST /auth/v1/token"
tracer = trace.get_tracer("tests")


def test_a_transfer_is_a_span_of_the_caller_s_trace_whose_context_reaches_postgrest(
    target: Target, account: MakeAccount, local_doubles: Doubles, spans: Spans, logged: Logged
) -> None:
    sender, recipient = account(funded=10), account()
    headers: dict[str, tuple[str | None, str | None]] = {}

    def seen(response: httpx.Response) -> None:
        sent = response.request.headers.get("traceparent")
        headers[response.request.url.path] = (sent, response.headers.get("traceparent"))

    client = target.client(http_client=httpx.Client(event_hooks={"response": [seen]}))
    client.auth.sign_in(sender.email, PASSWORD)
    key = f"checkout-{uuid.uuid4()}"
    with tracer.start_as_current_span("checkout"):
        client.credits.transfer(recipient.id, "2.5", idempotency_key=key)

    call = spans.one(TRANSFER)
    assert is_child(call, spans.one("checkout")) and call.kind is SpanKind.CLIENT
    assert dict(call.attributes or {}) == {
        "http.request.method": "POST",
        "url.path": "/rpc/transfer_credits",
        "mycelium.rpc": "transfer_credits",
        "mycelium.idempotency_key": key,
        "http.response.status_code": 200,
        "mycelium.retries": 0,
    }
    assert call.status.status_code is StatusCode.UNSET
    # Sent with the call's own context, and echoed by PostgREST: it came through the gateway.
    assert headers["/rest/v1/rpc/transfer_credits"] == (traceparent(call), traceparent(call))

    [ended] = [e for e in logged.events("api_call") if e.get("rpc") == "transfer_credits"]
    assert ended["level"] == "info"  # a money operation
    assert ended["outcome"] == "ok" and ended["reason"] is None and ended["status"] == 200
    assert ended["idempotency_key"] == key and ended["trace_id"] == trace_id(call)
    assert ended["retries"] == 0 and isinstance(ended["duration_ms"], float)


def test_a_refused_money_call_is_an_error_span_and_an_error_event(
    target: Target, account: MakeAccount, spans: Spans, logged: Logged
) -> None:
    sender, recipient = account(funded=1), account()
    with pytest.raises(InsufficientCredits):
        sender.client.credits.transfer(recipient.id, 5, idempotency_key="too-much")
    call = spans.one(TRANSFER)
    assert call.status.status_code is StatusCode.ERROR
    assert (call.attributes or {})["mycelium.reason"] == "insufficient_credits"
    assert (call.attributes or {})["http.response.status_code"] >= 400  # type: ignore[operator]
    [ended] = [e for e in logged.events("api_call") if e.get("rpc") == "transfer_credits"]
    assert (ended["level"], ended["outcome"], ended["reason"]) == ("info", "error", "insufficient_credits")
    assert ended["idempotency_key"] == "too-much" and ended["trace_id"] == trace_id(call)


def test_each_retry_is_a_span_event_and_a_log_event(target: Target, spans: Spans, logged: Logged) -> None:
    client = target.client(http_client=httpx.Client(transport=Unavailable(times=2)))
    client.credits.config()
    call = spans.one("GET /credit_config")
    assert (call.attributes or {})["mycelium.retries"] == 2
    assert [(event.name, dict(event.attributes or {})["cause"]) for event in call.events] == [
        ("retry", "HTTP 503"),
        ("retry", "HTTP 503"),
    ]
    retries = [e for e in logged.events("api_retry") if e["path"] == "/credit_config"]
    assert [(e["retry"], e["cause"], e["level"]) for e in retries] == [
        (1, "HTTP 503", "info"),
        (2, "HTTP 503", "info"),
    ]
    assert all(e["trace_id"] == trace_id(call) and e["delay_ms"] >= 0 for e in retries)
    [ended] = [e for e in logged.events("api_call") if e["path"] == "/credit_config"]
    assert (ended["level"], ended["outcome"], ended["retries"]) == ("debug", "ok", 2)  # a read


def test_a_call_that_got_no_answer_is_a_warning(spans: Spans, logged: Logged) -> None:
    with (
        MyceliumClient("http://127.0.0.1:9", "key", retry=FAST_RETRY) as client,
        pytest.raises(ServiceUnavailable),
    ):
        client.admin.audit_ledger()
    [ended] = logged.events("api_call")
    assert (ended["level"], ended["reason"], ended["status"], ended["retries"]) == (
        "warning",
        "network_error",
        0,
        FAST_RETRY.attempts - 1,
    )
    assert {e["cause"] for e in logged.events("api_retry")} == {"ConnectError"}
    call = spans.one("POST /rpc/audit_ledger")
    assert "http.response.status_code" not in (call.attributes or {})
    assert (call.attributes or {})["mycelium.reason"] == "network_error"


def test_async_calls_are_observed_alike(
    target: Target, account: MakeAccount, spans: Spans, logged: Logged
) -> None:
    sender, recipient = account(funded=10), account()

    async def scenario() -> None:
        async with AsyncMyceliumClient(target.url, target.anon_key, retry=FAST_RETRY) as client:
            await client.auth.sign_in(sender.email, PASSWORD)
            with tracer.start_as_current_span("async checkout"):
                await client.credits.transfer(recipient.id, 3, idempotency_key="async-key")

    asyncio.run(scenario())
    call = spans.one(TRANSFER)
    assert is_child(call, spans.one("async checkout"))
    assert (call.attributes or {})["mycelium.idempotency_key"] == "async-key"
    [ended] = [e for e in logged.events("api_call") if e.get("rpc") == "transfer_credits"]
    assert (ended["outcome"], ended["trace_id"]) == ("ok", trace_id(call))


def test_a_sign_in_is_a_span_of_the_caller_s_trace_whose_context_reaches_auth(
    target: Target, local_doubles: Doubles, spans: Spans, logged: Logged
) -> None:
    _, email = target.create_user()
    client = target.client()
    with tracer.start_as_current_span("login"), pytest.raises(NotAuthorized):
        client.auth.sign_in(email, "not the password")
    refused = spans.one(SIGN_IN)
    assert refused.status.status_code is StatusCode.ERROR and refused.kind is SpanKind.CLIENT
    assert dict(refused.attributes or {}) == {
        "http.request.method": "POST",
        "url.path": "/auth/v1/token",  # no query: the grant type and anything else stay out
        "http.response.status_code": 400,
        "mycelium.retries": 0,
        "mycelium.reason": "invalid_credentials",
        "error.type": "invalid_credentials",
    }
    spans.exporter.clear()

    with tracer.start_as_current_span("login"):
        client.auth.sign_in(email, PASSWORD)
    signed_in = spans.one(SIGN_IN)
    assert is_child(signed_in, spans.one("login")) and signed_in.status.status_code is StatusCode.UNSET
    assert traceparent(signed_in) in local_doubles.auth.traceparents  # through the gateway

    calls = [e for e in logged.events("api_call") if e["path"] == "/auth/v1/token"]
    assert [(e["level"], e["outcome"], e["reason"], e["status"]) for e in calls] == [
        ("debug", "error", "invalid_credentials", 400),
        ("debug", "ok", None, 200),
    ]
    assert calls[1]["trace_id"] == trace_id(signed_in) and calls[1]["method"] == "POST"


def test_async_auth_calls_are_observed_alike(target: Target, spans: Spans, logged: Logged) -> None:
    _, email = target.create_user()

    async def scenario() -> None:
        async with AsyncMyceliumClient(target.url, target.anon_key, retry=FAST_RETRY) as client:
            with tracer.start_as_current_span("async login"):
                await client.auth.sign_in(email, PASSWORD)
                await client.auth.sign_out()

    asyncio.run(scenario())
    login = spans.one("async login")
    assert is_child(spans.one(SIGN_IN), login) and is_child(spans.one("POST /auth/v1/logout"), login)
    paths = [(e["path"], e["outcome"]) for e in logged.events("api_call") if e["path"].startswith("/auth/")]
    assert paths == [("/auth/v1/token", "ok"), ("/auth/v1/logout", "ok")]


def test_the_audit_and_the_sweeps_log_what_they_found(target: Target, logged: Logged) -> None:
    service = target.service()
    assert service.admin.audit_ledger() == []
    swept = service.admin.expire_credits()
    [audit] = logged.events("ledger_audit")
    assert (audit["level"], audit["clean"], audit["findings"]) == ("info", True, [])
    [expiry] = logged.events("credits_expired")
    assert expiry["level"] == "info" and expiry["lots_expired"] == swept.lots_expired
    assert expiry["credits_expired"] == swept.credits_expired


def test_an_audit_that_finds_a_broken_invariant_logs_it_as_an_error(logged: Logged) -> None:
    finding = {"check_name": "balance_matches_ledger", "subject": "user 1", "detail": "10 != 12"}
    assert [row.model_dump() for row in audited([finding])] == [finding]
    [audit] = logged.events("ledger_audit")
    assert (audit["level"], audit["clean"], audit["findings"]) == ("error", False, [finding])
