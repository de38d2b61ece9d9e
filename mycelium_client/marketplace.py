"""`client.marketplace`: the catalogue. Search products, read one, its price in other currencies,
the display currencies and the marketplace's configuration; as a provider, list, edit and
deactivate your own products. Buying is `client.orders`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from decimal import Decimal
from typing import Any, Literal, TypedDict, Unpack

from pydantic import TypeAdapter

from mycelium_client._http import (
    NULL,
    OBJECT,
    RETURN_ROWS,
    AsyncTransport,
    Call,
    SyncTransport,
    async_pages,
    pages,
    rows,
    rpc,
)
from mycelium_client._identity import Identity
from mycelium_client.amounts import AmountLike, amount, to_decimal
from mycelium_client.credits import UserRef
from mycelium_client.errors import InvalidArgument
from mycelium_client.models import (
    DisplayCurrency,
    MarketplaceConfig,
    Money,
    Product,
    ProductCategory,
    ProductHit,
    ProductPrices,
    ProductSort,
    ProductUnit,
)

ProductRef = uuid.UUID | str
Capacity = int | Literal["unlimited"]
"""Units that may be sold at once, or "unlimited"."""
DEFAULT_SEARCH_PAGE_SIZE = 20  # the SQL serves at most 100 a page

# Every column but the search vector, which is for the SQL's search only.
PRODUCT_COLUMNS = (
    "id,provider_id,category,name,description,price,unit,attributes,capacity,units_in_use,active,"
    "created_at,updated_at,location"
)
_PRICES = TypeAdapter(dict[str, Money])


class SearchFilters(TypedDict, total=False):
    """What `marketplace.search` may filter and sort on; every filter is optional."""

    category: ProductCategory | str
    min_price: AmountLike
    max_price: AmountLike
    location: str  # attributes["location"]
    attributes: Mapping[str, Any]  # contained in the product's: {"gpu": True}
    min_attributes: Mapping[str, int | Decimal]  # numeric minimums: {"cpu": 4}
    sort: ProductSort | str  # newest (the default), price_asc, price_desc
    currency: str  # a display currency to add each price in


class ProductChanges(TypedDict, total=False):
    """What `marketplace.update_product` may change; what is not given stays."""

    name: str
    description: str
    price: AmountLike
    unit: ProductUnit | str
    category: ProductCategory | str
    attributes: Mapping[str, Any]
    capacity: Capacity
    active: bool


# -- requests, shared by both namespaces --------------------------------------------------------
def search_call(
    query: str | None, filters: SearchFilters, after: Mapping[str, Any] | None, page_size: int
) -> Call[list[ProductHit]]:
    """One page of hits after the row whose `cursor` is `after`."""
    # A misspelt filter would otherwise name no SQL function, and read as NotFound.
    unknown = sorted(filters.keys() - SearchFilters.__optional_keys__)
    if unknown:
        raise TypeError(f"search() got unexpected filters: {', '.join(unknown)}")
    body: dict[str, object] = {"query": query, **filters, "after": after, "page_size": page_size}
    for bound in ("min_price", "max_price"):
        if bound in body:
            body[bound] = to_decimal(body[bound], bound)
    return Call("POST", "/rpc/search_products", rows(ProductHit), body=body)


def cursor_of(after: ProductHit | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return after.cursor if isinstance(after, ProductHit) else after


def product_call(product_id: ProductRef) -> Call[Product]:
    params = {"select": PRODUCT_COLUMNS, "id": f"eq.{product_id}"}
    return Call("GET", "/products", Product.model_validate, params, accept=OBJECT)


def own_products_call(provider: uuid.UUID) -> Call[list[Product]]:
    params = {"select": PRODUCT_COLUMNS, "provider_id": f"eq.{provider}", "order": "created_at.desc,id.desc"}
    return Call("GET", "/products", rows(Product), params)


def create_product_call(
    category: ProductCategory | str,
    name: str,
    price: AmountLike,
    unit: ProductUnit | str,
    description: str,
    attributes: Mapping[str, Any] | None,
    capacity: int | None,
    active: bool,
) -> Call[Product]:
    # An insert is not idempotent: only retried if never sent.
    body = {
        "category": category,
        "name": name,
        "price": amount(price, "price"),
        "unit": unit,
        "description": description,
        "attributes": attributes,
        "capacity": capacity,
        "active": active,
    }
    return Call(
        "POST",
        "/products",
        Product.model_validate,
        {"select": PRODUCT_COLUMNS},
        body=body,
        accept=OBJECT,
        safe=False,
        prefer=RETURN_ROWS,
    )


def update_product_call(product_id: ProductRef, changes: ProductChanges) -> Call[Product]:
    """PATCH the given columns: setting the same values again changes nothing, so it is safe to
    retry. A product that is not yours (or does not exist) matches no row: NotFound."""
    if not changes:
        raise InvalidArgument("nothing to change: pass at least one field", reason="invalid_argument")
    # A None would be dropped from the request and change nothing, silently.
    if unset := sorted(field for field, value in changes.items() if value is None):
        raise InvalidArgument(
            f"None is not a value for {', '.join(unset)}: leave out what stays "
            "(capacity: 'unlimited' lifts a limit)",
            reason="invalid_argument",
        )
    body: dict[str, object] = dict(changes)
    if "price" in changes:
        body["price"] = amount(changes["price"], "price")
    if changes.get("capacity") == "unlimited":
        body["capacity"] = NULL
    params = {"select": PRODUCT_COLUMNS, "id": f"eq.{product_id}"}
    return Call(
        "PATCH", "/products", Product.model_validate, params, body=body, accept=OBJECT, prefer=RETURN_ROWS
    )


def prices_call(product_id: ProductRef) -> Call[ProductPrices]:
    params = {"select": "*", "id": f"eq.{product_id}"}
    return Call("GET", "/product_prices", ProductPrices.model_validate, params, accept=OBJECT)


def display_prices_call(value: AmountLike) -> Call[dict[str, Decimal]]:
    return rpc("display_prices", _PRICES.validate_python, safe=True, amount=to_decimal(value))


def currencies_call() -> Call[list[DisplayCurrency]]:
    return Call("GET", "/display_currencies", rows(DisplayCurrency), {"select": "*", "order": "code"})


def config_call() -> Call[MarketplaceConfig]:
    return Call(
        "GET", "/marketplace_config", MarketplaceConfig.model_validate, {"select": "*"}, accept=OBJECT
    )


# -- the namespaces ----------------------------------------------------------------------------
class Marketplace:
    def __init__(self, transport: SyncTransport, identity: Identity) -> None:
        self._transport, self._identity = transport, identity

    def search(
        self,
        query: str | None = None,
        *,
        after: ProductHit | Mapping[str, Any] | None = None,
        page_size: int = DEFAULT_SEARCH_PAGE_SIZE,
        **filters: Unpack[SearchFilters],
    ) -> Iterator[ProductHit]:
        """Active products matching `query` (full text over names and descriptions) and every
        filter given (see `SearchFilters`), fetched a keyset page at a time as you iterate:
        `search("ubuntu", category="compute", max_price=5, sort="price_asc")`. To resume later,
        pass the last hit you showed (or its `cursor`) as `after`, with the same filters."""
        start = cursor_of(after)
        return pages(
            lambda last: self._transport.send(
                search_call(query, filters, last.cursor if last else start, page_size)
            ),
            page_size,
        )

    def product(self, product_id: ProductRef) -> Product:
        """One product: active ones for anyone, your own (active or not) as their provider."""
        return self._transport.send(product_call(product_id))

    def own_products(self, provider_id: UserRef | None = None) -> list[Product]:
        """Your products as a provider, newest first, inactive ones included."""
        return self._transport.send(own_products_call(self._identity.user_or(provider_id)))

    def create_product(
        self,
        category: ProductCategory | str,
        name: str,
        price: AmountLike,
        unit: ProductUnit | str,
        *,
        description: str = "",
        attributes: Mapping[str, Any] | None = None,
        capacity: int | None = None,
        active: bool = True,
    ) -> Product:
        """List a product priced in TFC per `unit`. Your role decides the categories: farmers
        compute, node and gateway; app providers app; service providers service. `capacity` caps
        the units sold at once (None: unlimited); `attributes["location"]` is searchable."""
        return self._transport.send(
            create_product_call(category, name, price, unit, description, attributes, capacity, active)
        )

    def update_product(self, product_id: ProductRef, **changes: Unpack[ProductChanges]) -> Product:
        """Change what is given of your product (see `ProductChanges`; `capacity="unlimited"`
        lifts a limit); the rest stays. Orders already placed keep the price they were placed at."""
        return self._transport.send(update_product_call(product_id, changes))

    def deactivate_product(self, product_id: ProductRef) -> Product:
        """Take your product off sale (products are never deleted: orders refer to them)."""
        return self.update_product(product_id, active=False)

    def prices(self, product_id: ProductRef) -> ProductPrices:
        """A product's price in TFC, USD and every display currency."""
        return self._transport.send(prices_call(product_id))

    def display_prices(self, amount: AmountLike) -> dict[str, Decimal]:
        """An amount of TFC in TFC, USD and every display currency, by code (display only)."""
        return self._transport.send(display_prices_call(amount))

    def currencies(self) -> list[DisplayCurrency]:
        """The currencies prices may be shown in."""
        return self._transport.send(currencies_call())

    def config(self) -> MarketplaceConfig:
        """The platform fee and how long an order's hold lasts."""
        return self._transport.send(config_call())


class AsyncMarketplace:
    """The async twin of `Marketplace`: the same methods, awaited."""

    def __init__(self, transport: AsyncTransport, identity: Identity) -> None:
        self._transport, self._identity = transport, identity

    def search(
        self,
        query: str | None = None,
        *,
        after: ProductHit | Mapping[str, Any] | None = None,
        page_size: int = DEFAULT_SEARCH_PAGE_SIZE,
        **filters: Unpack[SearchFilters],
    ) -> AsyncIterator[ProductHit]:
        """`async for hit in marketplace.search(...)`."""
        start = cursor_of(after)
        return async_pages(
            lambda last: self._transport.send(
                search_call(query, filters, last.cursor if last else start, page_size)
            ),
            page_size,
        )

    async def product(self, product_id: ProductRef) -> Product:
        return await self._transport.send(product_call(product_id))

    async def own_products(self, provider_id: UserRef | None = None) -> list[Product]:
        return await self._transport.send(own_products_call(self._identity.user_or(provider_id)))

    async def create_product(
        self,
        category: ProductCategory | str,
        name: str,
        price: AmountLike,
        unit: ProductUnit | str,
        *,
        description: str = "",
        attributes: Mapping[str, Any] | None = None,
        capacity: int | None = None,
        active: bool = True,
    ) -> Product:
        return await self._transport.send(
            create_product_call(category, name, price, unit, description, attributes, capacity, active)
        )

    async def update_product(self, product_id: ProductRef, **changes: Unpack[ProductChanges]) -> Product:
        return await self._transport.send(update_product_call(product_id, changes))

    async def deactivate_product(self, product_id: ProductRef) -> Product:
        return await self.update_product(product_id, active=False)

    async def prices(self, product_id: ProductRef) -> ProductPrices:
        return await self._transport.send(prices_call(product_id))

    async def display_prices(self, amount: AmountLike) -> dict[str, Decimal]:
        return await self._transport.send(display_prices_call(amount))

    async def currencies(self) -> list[DisplayCurrency]:
        return await self._transport.send(currencies_call())

    async def config(self) -> MarketplaceConfig:
        return await self._transport.send(config_call())


__all__ = ["AsyncMarketplace", "Capacity", "Marketplace", "ProductChanges", "ProductRef", "SearchFilters"]
