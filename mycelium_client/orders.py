"""`client.orders`: buying and selling in TFC. A buyer places an order (its total is held from
their balance) and may cancel it while pending; its provider (or the provisioning service)
fulfils it (the hold is captured: the provider gets the total less the platform fee) or fails it
(the hold is released), and may refund it after. Earnings and spending are summed by the SQL.

Every call that moves credits is retried safely on network errors: placing and refunding carry
idempotency keys; cancel, fulfil and fail repeated on an order already in that state return it
unchanged and move nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from datetime import date
from typing import Literal, TypeVar

from mycelium_client._http import (
    OBJECT,
    AsyncTransport,
    Call,
    SyncTransport,
    async_pages,
    newest_first_after,
    pages,
    rows,
    rpc,
)
from mycelium_client._identity import Identity
from mycelium_client.amounts import AmountLike, amount
from mycelium_client.credits import UserRef, new_idempotency_key
from mycelium_client.models import (
    CategorySpending,
    DailyEarnings,
    MonthlyEarnings,
    Order,
    OrderStatus,
    ProductEarnings,
)

OrderRef = uuid.UUID | str
Basket = Mapping[uuid.UUID, int] | Mapping[str, int] | Iterable[tuple[uuid.UUID | str, int]]
"""What an order buys: {product_id: quantity}, or (product_id, quantity) pairs."""
Side = Literal["buyer", "provider"]
Earnings = TypeVar("Earnings", DailyEarnings, MonthlyEarnings)
# Each period's view, and its column naming the period.
EARNINGS_VIEWS: dict[type[DailyEarnings | MonthlyEarnings], tuple[str, str]] = {
    DailyEarnings: ("provider_earnings_daily", "day"),
    MonthlyEarnings: ("provider_earnings_monthly", "month"),
}
DEFAULT_PAGE_SIZE = 100

# An order with its items in the shape the order functions return them.
ORDER_COLUMNS = "*,items:order_items(product_id,product_name,category,unit,quantity,unit_price,line_total)"


# -- requests, shared by both namespaces --------------------------------------------------------
def place_call(items: Basket, idempotency_key: str | None) -> Call[Order]:
    # The key makes placing idempotent (the SQL replays the order for the same key and items),
    # so it is safe to retry with the same body.
    pairs = items.items() if isinstance(items, Mapping) else items
    return rpc(
        "place_order",
        Order.model_validate,
        safe=True,
        items=[{"product_id": str(product), "quantity": quantity} for product, quantity in pairs],
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def order_call(order_id: OrderRef) -> Call[Order]:
    params = {"select": ORDER_COLUMNS, "id": f"eq.{order_id}", "items.order": "id"}
    return Call("GET", "/orders", Order.model_validate, params, accept=OBJECT)


def order_pages(
    identity: Identity,
    side: Side,
    user_id: UserRef | None,
    statuses: Iterable[OrderStatus | str] | None,
    page_size: int,
) -> Callable[[Order | None], Call[list[Order]]]:
    """The call for each page of a buyer's or a provider's orders, newest first, after the last
    order of the previous page."""
    params = {
        "select": ORDER_COLUMNS,
        f"{side}_id": f"eq.{identity.user_or(user_id)}",
        "order": "created_at.desc,id.desc",
        "limit": str(page_size),
        "items.order": "id",
    }
    if statuses is not None:
        params["status"] = "in.(" + ",".join(OrderStatus(status).value for status in statuses) + ")"

    def page_call(after: Order | None) -> Call[list[Order]]:
        keyset = {} if after is None else newest_first_after(after.created_at, after.id)
        return Call("GET", "/orders", rows(Order), params | keyset)

    return page_call


def transition_call(function: Literal["cancel_order", "fulfil_order"], order_id: OrderRef) -> Call[Order]:
    # Repeated on an order already in the target state, the SQL returns it and moves nothing.
    return rpc(function, Order.model_validate, safe=True, order_id=str(order_id))


def fail_call(order_id: OrderRef, reason: str) -> Call[Order]:
    return rpc("fail_order", Order.model_validate, safe=True, order_id=str(order_id), reason=reason)


def refund_call(
    order_id: OrderRef, reason: str, value: AmountLike | None, idempotency_key: str | None
) -> Call[Order]:
    # The key makes the refund idempotent for this order: safe to retry with the same body.
    return rpc(
        "refund_order",
        Order.model_validate,
        safe=True,
        order_id=str(order_id),
        reason=reason,
        amount=None if value is None else amount(value),
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def earnings_call(
    model: type[Earnings], provider_id: UserRef | None, since: date | None, until: date | None
) -> Call[list[Earnings]]:
    """Periods starting from `since` to `until` (both included), oldest first."""
    view, period = EARNINGS_VIEWS[model]
    params = {"select": "*", "order": f"{period},provider_id"}
    if provider_id is not None:
        params["provider_id"] = f"eq.{provider_id}"
    bounds = []
    if since is not None:
        bounds.append(f"{period}.gte.{since}")
    if until is not None:
        bounds.append(f"{period}.lte.{until}")
    if bounds:
        params["and"] = f"({','.join(bounds)})"
    return Call("GET", f"/{view}", rows(model), params)


def product_earnings_call(provider_id: UserRef | None) -> Call[list[ProductEarnings]]:
    params = {"select": "*", "order": "net.desc,product_id"}
    if provider_id is not None:
        params["provider_id"] = f"eq.{provider_id}"
    return Call("GET", "/provider_earnings_by_product", rows(ProductEarnings), params)


def spending_call(buyer_id: UserRef | None) -> Call[list[CategorySpending]]:
    params = {"select": "*", "order": "spent.desc,category"}
    if buyer_id is not None:
        params["buyer_id"] = f"eq.{buyer_id}"
    return Call("GET", "/buyer_spending_by_category", rows(CategorySpending), params)


# -- the namespaces ----------------------------------------------------------------------------
class Orders:
    def __init__(self, transport: SyncTransport, identity: Identity) -> None:
        self._transport, self._identity = transport, identity

    def place(self, items: Basket, idempotency_key: str | None = None) -> Order:
        """Order products of one provider at their current prices; the total is held from your
        balance until the order is fulfilled, cancelled, failed or its hold expires. Retried
        safely on network errors: the same idempotency key (yours, or one made up here) is sent
        every time, and the SQL places an order once per key."""
        return self._transport.send(place_call(items, idempotency_key))

    def get(self, order_id: OrderRef) -> Order:
        """One order you bought or sold (admins: any)."""
        return self._transport.send(order_call(order_id))

    def history(
        self,
        *,
        side: Side = "buyer",
        statuses: Iterable[OrderStatus | str] | None = None,
        user_id: UserRef | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[Order]:
        """Your orders, newest first, fetched a keyset page at a time as you iterate: those you
        placed as a buyer, or with `side="provider"` those for your products."""
        page_call = order_pages(self._identity, side, user_id, statuses, page_size)
        return pages(lambda last: self._transport.send(page_call(last)), page_size)

    def cancel(self, order_id: OrderRef) -> Order:
        """Cancel your pending order as its buyer: the hold comes back in full."""
        return self._transport.send(transition_call("cancel_order", order_id))

    def fulfil(self, order_id: OrderRef) -> Order:
        """As the order's provider (or service_role): capture the hold. The provider is paid
        the total less the fee at the order's `fee_percent`."""
        return self._transport.send(transition_call("fulfil_order", order_id))

    def fail(self, order_id: OrderRef, reason: str) -> Order:
        """As the order's provider (or service_role): provisioning failed; the hold comes back."""
        return self._transport.send(fail_call(order_id, reason))

    def refund(
        self,
        order_id: OrderRef,
        reason: str,
        amount: AmountLike | None = None,
        idempotency_key: str | None = None,
    ) -> Order:
        """As the order's provider or an admin, after fulfilment: give back `amount` (None:
        all that is left), taken from the provider and the platform's fee in proportion."""
        return self._transport.send(refund_call(order_id, reason, amount, idempotency_key))

    def earnings_by_day(
        self, *, provider_id: UserRef | None = None, since: date | None = None, until: date | None = None
    ) -> list[DailyEarnings]:
        """Your earnings as a provider per UTC day (admins: every provider's, or `provider_id`'s)."""
        return self._transport.send(earnings_call(DailyEarnings, provider_id, since, until))

    def earnings_by_month(
        self, *, provider_id: UserRef | None = None, since: date | None = None, until: date | None = None
    ) -> list[MonthlyEarnings]:
        """Your earnings as a provider per UTC month, each from its first day (admins: every
        provider's, or `provider_id`'s)."""
        return self._transport.send(earnings_call(MonthlyEarnings, provider_id, since, until))

    def earnings_by_product(self, *, provider_id: UserRef | None = None) -> list[ProductEarnings]:
        """Your earnings as a provider per product, the best earning first."""
        return self._transport.send(product_earnings_call(provider_id))

    def spending_by_category(self, *, buyer_id: UserRef | None = None) -> list[CategorySpending]:
        """What you spent as a buyer per category (orders net of refunds, and charged subscription
        periods), the largest first."""
        return self._transport.send(spending_call(buyer_id))


class AsyncOrders:
    """The async twin of `Orders`: the same methods, awaited."""

    def __init__(self, transport: AsyncTransport, identity: Identity) -> None:
        self._transport, self._identity = transport, identity

    async def place(self, items: Basket, idempotency_key: str | None = None) -> Order:
        return await self._transport.send(place_call(items, idempotency_key))

    async def get(self, order_id: OrderRef) -> Order:
        return await self._transport.send(order_call(order_id))

    def history(
        self,
        *,
        side: Side = "buyer",
        statuses: Iterable[OrderStatus | str] | None = None,
        user_id: UserRef | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[Order]:
        page_call = order_pages(self._identity, side, user_id, statuses, page_size)
        return async_pages(lambda last: self._transport.send(page_call(last)), page_size)

    async def cancel(self, order_id: OrderRef) -> Order:
        return await self._transport.send(transition_call("cancel_order", order_id))

    async def fulfil(self, order_id: OrderRef) -> Order:
        return await self._transport.send(transition_call("fulfil_order", order_id))

    async def fail(self, order_id: OrderRef, reason: str) -> Order:
        return await self._transport.send(fail_call(order_id, reason))

    async def refund(
        self,
        order_id: OrderRef,
        reason: str,
        amount: AmountLike | None = None,
        idempotency_key: str | None = None,
    ) -> Order:
        return await self._transport.send(refund_call(order_id, reason, amount, idempotency_key))

    async def earnings_by_day(
        self, *, provider_id: UserRef | None = None, since: date | None = None, until: date | None = None
    ) -> list[DailyEarnings]:
        return await self._transport.send(earnings_call(DailyEarnings, provider_id, since, until))

    async def earnings_by_month(
        self, *, provider_id: UserRef | None = None, since: date | None = None, until: date | None = None
    ) -> list[MonthlyEarnings]:
        return await self._transport.send(earnings_call(MonthlyEarnings, provider_id, since, until))

    async def earnings_by_product(self, *, provider_id: UserRef | None = None) -> list[ProductEarnings]:
        return await self._transport.send(product_earnings_call(provider_id))

    async def spending_by_category(self, *, buyer_id: UserRef | None = None) -> list[CategorySpending]:
        return await self._transport.send(spending_call(buyer_id))


__all__ = ["AsyncOrders", "Basket", "OrderRef", "Orders"]
