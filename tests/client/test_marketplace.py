"""`client.marketplace` (and the marketplace part of `client.admin`) end to end: the catalogue
SQL behind the real PostgREST, through the gateway."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from mycelium_client import (
    AsyncMyceliumClient,
    InvalidAmount,
    InvalidArgument,
    NotAuthorized,
    NotFound,
    Product,
    ProductCategory,
    ProductSort,
    ProductUnit,
    RoleName,
)
from tests.support.client import FAST_RETRY, PASSWORD, Account, MakeAccount, Target, listed


def farmer(account: MakeAccount) -> Account:
    return account(role=RoleName.FARMER)


def test_providers_list_edit_and_deactivate_their_products(target: Target, account: MakeAccount) -> None:
    provider = farmer(account)
    product = listed(provider, "2.5", capacity=3, attributes={"cpu": 4, "location": "BE"})
    assert isinstance(product, Product) and product.provider_id == provider.id
    assert product.price == Decimal("2.5") and isinstance(product.price, Decimal)
    assert product.category is ProductCategory.COMPUTE and product.unit is ProductUnit.MONTH
    assert product.capacity == 3 and product.units_in_use == 0 and product.active
    assert product.location == "BE" and product.created_at.tzinfo is not None

    anonymous = target.client().marketplace
    assert anonymous.product(product.id) == product

    market = provider.client.marketplace
    changed = market.update_product(product.id, price="3.000001", name="bigger slice", capacity="unlimited")
    assert changed.price == Decimal("3.000001") and changed.name == "bigger slice"
    assert changed.capacity is None
    assert changed.description == product.description and changed.updated_at > product.updated_at

    gone = market.deactivate_product(product.id)
    assert not gone.active
    with pytest.raises(NotFound):  # off sale: anyone else no longer sees it
        anonymous.product(product.id)
    assert market.product(product.id) == gone  # its provider still does
    assert [own.id for own in market.own_products()] == [product.id]


def test_search_filters_and_sorts(target: Target, account: MakeAccount) -> None:
    provider, marker = farmer(account), uuid.uuid4().hex
    cheap = listed(provider, "1", name=f"cheap {marker}", attributes={"cpu": 2, "location": "BE"})
    gpu = listed(provider, "4", name=f"gpu {marker}", attributes={"cpu": 8, "gpu": True, "location": "NL"})
    node = listed(provider, "9", name=f"node {marker}", category=ProductCategory.NODE, attributes={"cpu": 16})
    market = target.client().marketplace

    def found(**filters: object) -> list[uuid.UUID]:
        return [hit.id for hit in market.search(marker, **filters)]  # type: ignore[arg-type]

    assert found() == [node.id, gpu.id, cheap.id]  # newest first
    assert found(sort=ProductSort.PRICE_ASC) == [cheap.id, gpu.id, node.id]
    assert found(sort="price_desc") == [node.id, gpu.id, cheap.id]
    assert found(category=ProductCategory.COMPUTE) == [gpu.id, cheap.id]
    assert found(min_price="1.5", max_price=Decimal(9)) == [node.id, gpu.id]
    assert found(location="NL") == [gpu.id]
    assert found(attributes={"gpu": True}) == [gpu.id]
    assert found(min_attributes={"cpu": 8}) == [node.id, gpu.id]

    euro = next(market.search(marker, currency="EUR", sort="price_asc"))
    rate = target.client().credits.config().tfc_to_usd_rate
    assert euro.price_usd == Decimal(1) * rate and euro.currency == "EUR"
    assert euro.price_in_currency == (rate / Decimal("1.08")).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert euro.units_available is None and euro.attributes == {"cpu": 2, "location": "BE"}


def test_search_pages_by_keyset_and_resumes_after_a_hit(target: Target, account: MakeAccount) -> None:
    provider, marker = farmer(account), uuid.uuid4().hex
    made = [listed(provider, price, name=f"paged {marker}") for price in ("5", "3", "7", "1", "3", "2", "6")]
    market = target.client().marketplace

    hits = list(market.search(marker, sort="price_asc", page_size=3))  # three pages
    assert len(hits) == len(made) and {hit.id for hit in hits} == {product.id for product in made}
    assert [(hit.price, hit.id) for hit in hits] == sorted((hit.price, hit.id) for hit in hits)
    resumed = list(market.search(marker, sort="price_asc", page_size=3, after=hits[3]))
    assert resumed == hits[4:]
    assert list(market.search(marker, sort="price_asc", after=hits[5].cursor)) == hits[6:]

    newest = list(market.search(marker, page_size=2))
    assert [hit.id for hit in newest] == [product.id for product in reversed(made)]


def test_fractional_attributes_stay_numbers_through_a_read_and_an_update(
    target: Target, account: MakeAccount
) -> None:
    provider, marker = farmer(account), uuid.uuid4().hex
    product = listed(provider, "2.5", name=f"fractional {marker}", attributes={"memory_gb": Decimal("7.5")})
    cheaper = listed(provider, "2.25", name=f"fractional {marker}", attributes={"memory_gb": 2})
    market = provider.client.marketplace
    read = market.product(product.id)
    assert read.attributes == {"memory_gb": Decimal("7.5")}
    market.update_product(product.id, attributes={**read.attributes, "cpu": 4})
    anyone = target.client().marketplace

    def found(**filters: object) -> list[uuid.UUID]:
        return [hit.id for hit in anyone.search(marker, **filters)]  # type: ignore[arg-type]

    assert found(min_attributes={"memory_gb": 4}) == [product.id]
    assert found(min_attributes={"memory_gb": Decimal("7.5"), "cpu": 4}) == [product.id]
    assert found(min_attributes={"memory_gb": Decimal("7.500001")}) == []
    assert found(attributes={"memory_gb": Decimal("7.50")}) == [product.id]
    # The cursor carries a fractional price back as a number.
    assert found(sort="price_asc", page_size=1) == [cheaper.id, product.id]


def test_prices_in_every_display_currency(target: Target, account: MakeAccount) -> None:
    product = listed(farmer(account), "12.345678")
    market = target.client().marketplace
    rate = target.client().credits.config().tfc_to_usd_rate
    currencies = {currency.code: currency for currency in market.currencies()}
    assert currencies["USD"].usd_per_unit == 1 and currencies["EUR"].usd_per_unit == Decimal("1.08")
    assert currencies["EUR"].symbol == "€" and currencies["EUR"].decimals == 2

    prices = market.prices(product.id)
    assert prices.price == Decimal("12.345678") and prices.price_usd == prices.price * rate
    assert prices.prices["TFC"] == prices.price and prices.prices["USD"] == prices.price_usd
    euros = (prices.price_usd / Decimal("1.08")).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert prices.prices["EUR"] == euros
    assert market.display_prices("12.345678") == prices.prices


def test_admins_manage_display_currencies(target: Target) -> None:
    admin, market = target.service().admin, target.client().marketplace
    code = "X" + uuid.uuid4().hex[:6].upper()
    try:
        added = admin.set_display_currency(code, "0.5", symbol="x", name="Test unit", decimals=3)
        assert added.code == code and added.usd_per_unit == Decimal("0.5") and added.decimals == 3
        changed = admin.set_display_currency(code, "0.25")
        assert changed.usd_per_unit == Decimal("0.25")
        assert changed.symbol == "x" and changed.name == "Test unit"  # kept
        rate = target.client().credits.config().tfc_to_usd_rate
        expected = (2 * rate / Decimal("0.25")).quantize(Decimal("0.001"), ROUND_HALF_UP)
        assert market.display_prices(2)[code] == expected
    finally:
        admin.remove_display_currency(code)
    assert code not in {currency.code for currency in market.currencies()}


def test_marketplace_config_is_read_by_anyone_and_set_by_admins(target: Target) -> None:
    market, admin = target.client().marketplace, target.service().admin
    before = market.config()
    assert isinstance(before.platform_fee_percent, Decimal) and isinstance(before.hold_ttl, timedelta)
    try:
        ttl = timedelta(hours=2, seconds=1)
        changed = admin.set_marketplace_config(platform_fee_percent="7.25", hold_ttl=ttl)
        assert changed.platform_fee_percent == Decimal("7.25") and changed.hold_ttl == ttl
        assert market.config() == changed
    finally:
        admin.set_marketplace_config(
            platform_fee_percent=before.platform_fee_percent, hold_ttl=before.hold_ttl
        )
    assert market.config().hold_ttl == before.hold_ttl


# -- errors from the real SQL ------------------------------------------------------------------------
def test_listing_needs_the_role_for_the_category(account: MakeAccount) -> None:
    with pytest.raises(NotAuthorized) as raised:
        listed(account())  # no role at all
    assert raised.value.reason == "not_authorized" and raised.value.status == 403
    with pytest.raises(NotAuthorized) as raised:
        listed(farmer(account), category=ProductCategory.APP)  # apps are app providers'
    assert "app_provider" in raised.value.message


def test_products_of_others_are_not_found_for_edits(account: MakeAccount) -> None:
    product, other = listed(farmer(account)), farmer(account)
    with pytest.raises(NotFound) as raised:
        other.client.marketplace.update_product(product.id, price=1)
    assert raised.value.status == 406
    with pytest.raises(NotFound):
        other.client.marketplace.product(uuid.uuid4())


def test_bad_marketplace_arguments_are_refused(target: Target, account: MakeAccount) -> None:
    provider = farmer(account)
    with pytest.raises(InvalidArgument) as raised:
        listed(provider, category="toaster")  # type: ignore[arg-type]
    assert raised.value.reason == "invalid_argument" and "category" in raised.value.message
    with pytest.raises(InvalidAmount):  # refused before sending
        listed(provider, "0.0000001")
    with pytest.raises(InvalidArgument) as raised:
        list(target.client().marketplace.search(sort="cheapest"))
    assert raised.value.status == 400 and "sort" in raised.value.message
    with pytest.raises(InvalidArgument) as raised:
        list(target.client().marketplace.search(currency="XXXNOPE"))
    assert "currency" in raised.value.message
    with pytest.raises(InvalidAmount) as raised:
        target.service().admin.set_marketplace_config(platform_fee_percent=101)
    assert raised.value.reason == "invalid_amount" and raised.value.status == 400
    with pytest.raises(NotAuthorized):
        provider.client.admin.set_marketplace_config(platform_fee_percent=0)


# -- the async twin --------------------------------------------------------------------------------
def test_async_marketplace(target: Target, account: MakeAccount) -> None:
    provider, marker = farmer(account), uuid.uuid4().hex

    async def scenario() -> None:
        async with AsyncMyceliumClient(target.url, target.anon_key, retry=FAST_RETRY) as client:
            await client.auth.sign_in(provider.email, PASSWORD)
            market = client.marketplace
            made = [
                await market.create_product("node", f"async {marker}", price, "hour", capacity=2)
                for price in ("2", "1", "3")
            ]
            assert [product.unit for product in made] == [ProductUnit.HOUR] * 3
            cheaper = await market.update_product(made[2].id, price="0.5")
            hits = [hit async for hit in market.search(marker, sort="price_asc", page_size=2)]
            assert [hit.id for hit in hits] == [cheaper.id, made[1].id, made[0].id]
            assert hits[0].units_available == 2
            assert (await market.product(made[0].id)).price == 2
            assert (await market.deactivate_product(made[0].id)).active is False
            assert len(await market.own_products()) == 3
            assert (await market.prices(made[1].id)).prices["TFC"] == 1
            assert (await market.display_prices(1))["TFC"] == 1
            assert "EUR" in {currency.code for currency in await market.currencies()}
            assert (await market.config()) == target.client().marketplace.config()

    asyncio.run(scenario())
