"""What the client decides before any request: amounts, JSON without float, error mapping,
display. No server: a transport that fails the test if anything is sent."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from mycelium_client import (
    AsyncMyceliumClient,
    ConfigurationError,
    Conflict,
    CreditConfig,
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
from mycelium_client.amounts import amount, dumps, loads, rate
from mycelium_client.credits import format_amount, usd
from mycelium_client.errors import from_body

USER = "6f9619ff-8b86-d011-b42d-00cf4fc964ff"


def never(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing should be sent, but {request.method} {request.url} was")


def offline_token() -> str:
    return "x." + base64.urlsafe_b64encode(json.dumps({"sub": USER}).encode()).decode() + ".y"


@pytest.fixture
def offline() -> MyceliumClient:
    return MyceliumClient(
        "http://127.0.0.1:9",
        "anon",
        access_token=offline_token(),
        http_client=httpx.Client(transport=httpx.MockTransport(never)),
    )


@pytest.mark.parametrize(
    "bad",
    [
        1.5,
        float("nan"),
        "NaN",
        "Infinity",
        "-1",
        "0",
        "1.0000001",
        "1e15",
        "abc",
        True,
        "1.0000000000000000000000000001",  # 29 digits: the default context would round it to 1
    ],
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
    assert amount("1.000000000000000000000000000000000") == 1  # trailing zeros are no digits
    assert dumps({"amount": amount("999999999999999.999999")}) == b'{"amount":999999999999999.999999}'


def test_decimals_are_sent_as_the_json_numbers_they_are() -> None:
    """Inside jsonb (product attributes, search filters, the search cursor) a string is not a
    number: "7.5" >= 4 is false in a jsonpath. So every Decimal is a JSON number, digit for digit."""
    body = {
        "attributes": {"memory_gb": Decimal("7.5"), "tiny": Decimal("1E-7"), "cpu": 4, "gpu": True},
        "min_attributes": {"x": Decimal("1.50")},
        "after": {"price": Decimal("123456789012345.123456789012345678901234567890"), "id": USER},
        "tags": ['naïve "quoted"', None, Decimal("-0.10")],
    }
    sent = dumps(body)
    assert sent == (
        b'{"attributes":{"memory_gb":7.5,"tiny":1E-7,"cpu":4,"gpu":true},"min_attributes":{"x":1.50},'
        b'"after":{"price":123456789012345.123456789012345678901234567890,'
        b'"id":"6f9619ff-8b86-d011-b42d-00cf4fc964ff"},"tags":["na\\u00efve \\"quoted\\"",null,-0.10]}'
    )
    assert loads(sent) == body
    product = b'{"attributes":{"memory_gb":7.5,"cpu":4,"location":"BE"},"price":2.500000}'
    assert dumps(loads(product)) == product  # read, then written back: the same JSON


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("-Infinity"), Decimal("sNaN"), 7.5])
def test_what_json_cannot_hold_exactly_is_not_sent(bad: object) -> None:
    with pytest.raises(InvalidAmount) as raised:
        dumps({"attributes": {"memory_gb": bad}})
    assert raised.value.reason == "invalid_amount"


@pytest.mark.parametrize("page_size", [0, -1, 1001, 5000])
def test_page_sizes_postgrest_would_cut_short_are_refused(offline: MyceliumClient, page_size: int) -> None:
    """PostgREST returns at most db-max-rows (1000) rows: a longer page would come back short
    and read as the last one."""
    for history in (offline.credits.history, offline.orders.history):
        with pytest.raises(InvalidArgument, match="between 1 and 1000") as raised:
            history(page_size=page_size)
        assert raised.value.reason == "invalid_argument"

    async def async_history() -> None:
        async with AsyncMyceliumClient(
            "http://127.0.0.1:9",
            "anon",
            access_token=offline_token(),
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(never)),
        ) as client:
            for history in (client.credits.history, client.orders.history):
                with pytest.raises(InvalidArgument, match="between 1 and 1000"):
                    history(page_size=page_size)

    asyncio.run(async_history())


def test_the_page_size_bounds_are_accepted_and_asked_for() -> None:
    limits: list[str] = []

    def empty_page(request: httpx.Request) -> httpx.Response:
        limits.append(request.url.params["limit"])
        return httpx.Response(200, json=[])

    client = MyceliumClient(
        "http://127.0.0.1:9",
        "anon",
        access_token=offline_token(),
        http_client=httpx.Client(transport=httpx.MockTransport(empty_page)),
    )
    assert list(client.credits.history(page_size=1000)) == []
    assert list(client.orders.history(page_size=1)) == []
    assert limits == ["1000", "1"]


def test_usd_is_exact_beyond_the_default_precision() -> None:
    config = CreditConfig.model_validate(
        {
            "tfc_to_usd_rate": Decimal("0.123456789012"),
            "credit_currency_code": "TFC",
            "credit_display_name": "ThreeFold Credits",
            "credit_symbol": "TFC",
            "updated_at": "2026-01-01T00:00:00+00:00",
        }
    )
    # 33 significant digits: the default context (28) would round away the last five.
    assert usd("999999999999999.999999", config) == Decimal("123456789011999.999999876543210988")
    assert format_amount("1250.5", config) == "1,250.50 TFC"
    assert format_amount("0.1234567", config) == "0.123457 TFC"  # display only: at most 6 digits


@pytest.mark.parametrize("value", ["0.000061600000", "0.000000000001", "999999999.999999999999", 5])
def test_display_currency_rates_the_sql_accepts_pass(value: str | int) -> None:
    assert rate(value, "usd_per_unit") == Decimal(value)


@pytest.mark.parametrize(
    "value", ["0.0000000000001", "1e9", "1000000000", "0", "-0.5", "NaN", "Infinity", 0.5, "1e-13"]
)
def test_display_currency_rates_the_sql_refuses_are_refused_before_sending(
    offline: MyceliumClient, value: object
) -> None:
    with pytest.raises(InvalidAmount) as raised:
        offline.admin.set_display_currency("IDR", value)  # type: ignore[arg-type]
    assert raised.value.reason == "invalid_amount"


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
    with pytest.raises(InvalidArgument, match="None is not a value for capacity"):
        offline.marketplace.update_product(USER, capacity=None)  # type: ignore[arg-type]
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
