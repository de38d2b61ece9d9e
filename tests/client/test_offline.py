"""What the client decides before any request: amounts, JSON without float, error mapping,
display. No server: a transport that fails the test if anything is sent."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from mycelium_client import (
    ConfigurationError,
    Conflict,
    HoldRelease,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    MyceliumClient,
    NotAuthorized,
    NotFound,
    ServiceUnavailable,
    Transaction,
)
from mycelium_client.amounts import amount, dumps, loads
from mycelium_client.errors import from_body

USER = "6f9619ff-8b86-d011-b42d-00cf4fc964ff"


def never(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing should be sent, but {request.method} {request.url} was")


@pytest.fixture
def offline() -> MyceliumClient:
    token = "x." + __import__("base64").urlsafe_b64encode(json.dumps({"sub": USER}).encode()).decode() + ".y"
    return MyceliumClient(
        "http://127.0.0.1:9",
        "anon",
        access_token=token,
        http_client=httpx.Client(transport=httpx.MockTransport(never)),
    )


@pytest.mark.parametrize(
    "bad", [1.5, float("nan"), "NaN", "Infinity", "-1", "0", "1.0000001", "1e15", "abc", True]
)
def test_bad_amounts_are_refused_before_sending(offline: MyceliumClient, bad: object) -> None:
    with pytest.raises(InvalidAmount) as raised:
        offline.credits.transfer(USER, bad)  # type: ignore[arg-type]
    assert raised.value.reason == "invalid_amount"


def test_a_float_is_refused_with_a_clear_message() -> None:
    with pytest.raises(InvalidAmount, match=r"not float.*floats lose cents"):
        amount(0.1)


def test_good_amounts_are_exact() -> None:
    assert amount("1250.500000") == Decimal("1250.5")
    assert amount(7) == 7 and amount(Decimal("0.000001")) == Decimal("0.000001")
    assert json.loads(dumps({"amount": amount("999999999999999.999999")})) == {
        "amount": "999999999999999.999999"
    }


def test_json_is_read_without_float() -> None:
    row = loads('{"amount": 123456789012345.123456, "n": 12345678901234567890}')
    assert row == {"amount": Decimal("123456789012345.123456"), "n": 12345678901234567890}
    with pytest.raises(InvalidAmount):  # a float never becomes an amount, even by hand
        Transaction.model_validate(
            {
                "id": 1,
                "transfer_id": USER,
                "user_id": USER,
                "amount": 1.5,
                "kind": "grant",
                "balance_after": 1,
                "created_at": "2026-01-01T00:00:00+00:00",
            }
        )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (409, {"code": "insufficient_credits", "message": "m"}, InsufficientCredits),
        (400, {"code": "invalid_amount", "message": "m"}, InvalidAmount),
        (403, {"code": "not_authorized", "message": "m"}, NotAuthorized),
        (404, {"code": "unknown_recipient", "message": "m"}, NotFound),
        (409, {"code": "duplicate_reference", "message": "m"}, Conflict),
        (404, {"code": "product_not_found", "message": "m"}, NotFound),
        (404, {"code": "order_not_found", "message": "m"}, NotFound),
        (409, {"code": "product_inactive", "message": "m"}, Conflict),
        (409, {"code": "capacity_exceeded", "message": "m"}, Conflict),
        (409, {"code": "invalid_transition", "message": "m"}, Conflict),
        (409, {"code": "refund_exceeds_paid", "message": "m"}, Conflict),
        (400, {"code": "mixed_providers", "message": "m"}, InvalidArgument),
        (400, {"code": "own_product", "message": "m"}, InvalidArgument),
        (400, {"code": "invalid_quantity", "message": "m"}, InvalidArgument),
        (401, {"code": "42501", "message": "permission denied"}, NotAuthorized),
        (401, {"message": "Invalid authentication credentials"}, NotAuthorized),
        (400, {"code": "22P02", "message": "invalid input syntax for type uuid"}, InvalidArgument),
        (503, {"code": "PGRST001", "message": "db down"}, ServiceUnavailable),
        (502, "<html>bad gateway</html>", ServiceUnavailable),
    ],
)
def test_errors_map_from_reason_then_status(status: int, body: object, expected: type[Exception]) -> None:
    error = from_body(status, body)
    assert type(error) is expected and error.status == status


def test_marketplace_arguments_are_checked_before_sending(offline: MyceliumClient) -> None:
    with pytest.raises(InvalidAmount):
        offline.marketplace.create_product("compute", "slice", 2.5, "month")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        offline.marketplace.update_product(USER, price="-1")
    with pytest.raises(InvalidArgument, match="nothing to change"):
        offline.marketplace.update_product(USER)
    with pytest.raises(InvalidAmount):
        offline.orders.refund(USER, "sorry", "0")
    with pytest.raises(InvalidAmount):
        next(offline.marketplace.search(max_price=1.5))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="catgory"):
        next(offline.marketplace.search(catgory="compute"))  # type: ignore[call-arg]


def test_intervals_are_exact_both_ways() -> None:
    assert dumps({"ttl": timedelta(days=1, seconds=7, microseconds=5)}) == (
        b'{"ttl":"1 days 7 seconds 5 microseconds"}'
    )
    read = HoldRelease.model_validate(
        {
            "as_of": "2026-01-01T00:00:00+00:00",
            "orders_released": 0,
            "credits_released": 0,
            "hold_ttl": "1 year 2 mons 3 days 04:05:06.5",
        }
    )
    assert read.hold_ttl == timedelta(days=360 + 60 + 3, hours=4, minutes=5, seconds=6, milliseconds=500)


def test_no_user_means_no_request() -> None:
    anonymous = MyceliumClient(
        "http://127.0.0.1:9", "anon", http_client=httpx.Client(transport=httpx.MockTransport(never))
    )
    with pytest.raises(NotAuthorized):
        anonymous.credits.balance()


def test_from_env_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "k")
    with pytest.raises(ConfigurationError, match="SUPABASE_URL"):
        MyceliumClient.from_env(service_role=True)
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:9")
    with MyceliumClient.from_env(service_role=True) as client:
        assert client.credits is not None
