"""The catalogue through PostgREST: providers list and edit products, anyone searches them, prices
show in TFC, USD and display currencies (display only)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.support import Api, User, body
from tests.support.marketplace import D, MakeUser, buyer, failure, list_product, placed, setting


@pytest.fixture
def usd_rate(service_api: Api) -> Iterator[Decimal]:
    with setting(service_api, "credit_config", "tfc_to_usd_rate", "0.5") as rate:
        yield rate


def test_providers_list_edit_and_deactivate(anon_api: Api, service_api: Api, make_user: MakeUser) -> None:
    farmer = make_user("farmer")
    product = list_product(farmer, price="1.50", capacity=3)
    assert product["provider_id"] == farmer.id and D(str(product["price"])) == D("1.5")
    assert product["location"] == "BE" and product["units_in_use"] == 0
    alice = buyer(service_api, make_user, "10")
    before = placed(alice, (product["id"], 1))
    edited = farmer.api.patch("/products", {"price": "2", "description": "faster"}, id=f"eq.{product['id']}")
    assert edited.status_code == 200 and D(str(body(edited)[0]["price"])) == 2
    # The order placed before keeps its price; new orders pay the new one.
    assert D(str(body(alice.api.get("/orders", id=f"eq.{before['id']}"))[0]["total"])) == D("1.5")
    assert D(str(placed(alice, (product["id"], 1))["total"])) == 2
    assert farmer.api.patch("/products", {"active": False}, id=f"eq.{product['id']}").status_code == 200
    assert body(anon_api.get("/products", id=f"eq.{product['id']}")) == []
    row = {"category": "compute", "name": "x", "price": "1", "unit": "hour"}
    for bad in ({"category": "gpu"}, {"unit": "year"}, {"attributes": [1]}, {"capacity": -1}, {"name": " "}):
        failure(farmer.api.post("/products", {**row, **bad}), 400, "invalid_argument")


def test_prices_in_every_display_currency(
    anon_api: Api, service_api: Api, make_user: MakeUser, usd_rate: Decimal
) -> None:
    admin, farmer = make_user("admin"), make_user("farmer")
    code = "X" + uuid.uuid4().hex[:6].upper()
    set_currency = admin.api.rpc(
        "set_display_currency", code=code, symbol="¤", usd_per_unit="0.25", decimals=3
    )
    assert set_currency.status_code == 200 and body(set_currency)["code"] == code
    failure(admin.api.rpc("set_display_currency", code=code, usd_per_unit="-1"), 400, "invalid_amount")
    failure(admin.api.rpc("set_display_currency", code="lower", usd_per_unit="1"), 400, "invalid_argument")
    product = list_product(farmer, price="3")
    shown = body(anon_api.get("/product_prices", id=f"eq.{product['id']}"))[0]
    assert D(str(shown["price"])) == 3 and D(str(shown["price_usd"])) == D("1.5")
    prices = {k: D(str(v)) for k, v in shown["prices"].items()}
    assert prices["TFC"] == 3 and prices["USD"] == D("1.5") and prices[code] == 6
    assert "EUR" in prices
    assert D(str(body(anon_api.rpc("display_prices", amount="1"))[code])) == 2
    # Display only: the order and the ledger stay in TFC.
    alice = buyer(service_api, make_user, "10")
    order = placed(alice, (product["id"], 1))
    assert D(str(order["total"])) == 3
    assert admin.api.rpc("set_display_currency", code=code).status_code == 200  # removed
    assert code not in body(anon_api.rpc("display_prices", amount="1"))


def catalogue(farmer: User, location: str) -> list[dict[str, Any]]:
    """Six products in a location of their own, so that searches see only them."""
    specs = [
        ("compute", "Ubuntu slice small", "2 vCPU ubuntu slice", "1.5", {"cpu": 2, "memory_gb": 4}),
        (
            "compute",
            "Ubuntu slice large",
            "16 vCPU ubuntu slice with GPU",
            "12",
            {"cpu": 16, "memory_gb": 64, "gpu": True},
        ),
        ("compute", "Debian slice", "8 vCPU debian slice", "6", {"cpu": 8, "memory_gb": 16}),
        ("node", "Full node", "a whole certified node", "90", {"cpu": 32, "memory_gb": 128}),
        ("gateway", "Web gateway", "public IPv4 gateway", "0.5", {}),
        ("compute", "Archive slice", "inactive ubuntu slice", "1", {"cpu": 1}),
    ]
    made = []
    for category, name, description, price, attributes in specs:
        made.append(
            list_product(
                farmer,
                category=category,
                name=name,
                description=description,
                price=price,
                attributes={**attributes, "location": location},
                active=name != "Archive slice",
            )
        )
    return made


def names(reply: Any) -> list[str]:
    assert reply.status_code == 200, reply.text
    return [row["name"] for row in body(reply)]


def test_search_filters_and_sorts(anon_api: Api, make_user: MakeUser) -> None:
    farmer, location = make_user("farmer"), f"loc-{uuid.uuid4().hex[:8]}"
    catalogue(farmer, location)

    def search(**args: Any) -> list[str]:
        return names(anon_api.rpc("search_products", location=location, **args))

    assert search() == [
        "Web gateway",
        "Full node",
        "Debian slice",
        "Ubuntu slice large",
        "Ubuntu slice small",
    ]
    assert search(query="ubuntu", sort="price_asc") == ["Ubuntu slice small", "Ubuntu slice large"]
    assert search(query="ubuntu -gpu") == ["Ubuntu slice small"]
    assert search(category="compute", min_price="2", max_price="12", sort="price_desc") == [
        "Ubuntu slice large",
        "Debian slice",
    ]
    assert search(attributes={"gpu": True}) == ["Ubuntu slice large"]
    assert search(min_attributes={"cpu": 8, "memory_gb": 16}, sort="price_asc") == [
        "Debian slice",
        "Ubuntu slice large",
        "Full node",
    ]
    # Also over GET, as a stable function.
    got = anon_api.get("/rpc/search_products", location=location, category="gateway")
    assert names(got) == ["Web gateway"]
    for bad in (
        {"sort": "random"},
        {"page_size": 0},
        {"page_size": 101},
        {"attributes": [1]},
        {"min_attributes": {"cpu; drop table x": 1}},
        {"min_attributes": {"cpu": "4"}},
        {"currency": "NOPE"},
        {"after": {"id": "not a uuid"}},
        {"after": {"price": "1", "id": str(uuid.uuid4())}},
    ):
        failure(anon_api.rpc("search_products", location=location, **bad), 400, "invalid_argument")


def test_search_pages_by_keyset_and_shows_display_prices(
    anon_api: Api, make_user: MakeUser, usd_rate: Decimal
) -> None:
    farmer, location = make_user("farmer"), f"loc-{uuid.uuid4().hex[:8]}"
    catalogue(farmer, location)
    for sort in ("newest", "price_asc", "price_desc"):
        everything = names(anon_api.rpc("search_products", location=location, sort=sort))
        pages: list[str] = []
        after = None
        while True:
            reply = anon_api.rpc("search_products", location=location, sort=sort, page_size=2, after=after)
            rows = body(reply)
            pages += [row["name"] for row in rows]
            if len(rows) < 2:
                break
            after = rows[-1]["cursor"]
        assert pages == everything, sort
    row = body(anon_api.rpc("search_products", location=location, category="node", currency="EUR"))[0]
    assert D(str(row["price_usd"])) == 45 and row["currency"] == "EUR"
    assert D(str(row["price_in_currency"])) == round(D(45) / D(str(_eur(anon_api))), 2)


def _eur(anon_api: Api) -> Any:
    return body(anon_api.get("/display_currencies", code="eq.EUR"))[0]["usd_per_unit"]


def test_search_shows_capacity_left(anon_api: Api, service_api: Api, make_user: MakeUser) -> None:
    farmer, location = make_user("farmer"), f"loc-{uuid.uuid4().hex[:8]}"
    node = list_product(farmer, category="node", capacity=3, attributes={"location": location})
    placed(buyer(service_api, make_user, "20"), (node["id"], 2))
    row = body(anon_api.rpc("search_products", location=location))[0]
    assert (row["capacity"], row["units_available"]) == (3, 1)
