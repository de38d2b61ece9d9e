"""`client.orders` (and the hold sweep of `client.admin`) end to end: orders paid through holds,
captured, released and refunded by the real SQL, balances checked to the last digit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from mycelium_client import (
    Conflict,
    InsufficientCredits,
    InvalidArgument,
    NotAuthorized,
    NotFound,
    Order,
    OrderStatus,
    ProductCategory,
    RoleName,
    TransactionKind,
)
from tests.support.client import (
    Account,
    DropsResponses,
    MakeAccount,
    Target,
    async_clients,
    listed,
    signed_in,
)


def balances(account: Account) -> tuple[Decimal, Decimal]:
    balance = account.client.credits.balance()
    return balance.balance, balance.held


def test_an_order_is_placed_fulfilled_and_refunded_to_the_last_digit(
    target: Target, account: MakeAccount
) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=100)
    product = listed(provider, "2.5", capacity=3)
    fee_percent = target.client().marketplace.config().platform_fee_percent

    order = buyer.client.orders.place({product.id: 2})
    assert isinstance(order, Order) and order.status is OrderStatus.PENDING
    assert order.total == Decimal(5) and order.held_amount == 5 and order.fee_percent == fee_percent
    assert order.buyer_id == buyer.id and order.provider_id == provider.id and order.fee_amount is None
    [item] = order.items
    assert (item.product_id, item.quantity, item.unit_price) == (product.id, 2, Decimal("2.5"))
    assert item.line_total == 5
    assert item.category is ProductCategory.COMPUTE and item.product_name == product.name
    assert order.idempotency_key and order.idempotency_key.startswith("mycelium-client-")
    assert balances(buyer) == (Decimal(95), Decimal(5))
    assert buyer.client.orders.get(order.id) == order == provider.client.orders.get(order.id)
    assert provider.client.marketplace.product(product.id).units_in_use == 2

    fulfilled = provider.client.orders.fulfil(order.id)
    fee = (Decimal(5) * fee_percent / 100).quantize(Decimal("0.000001"))
    assert fulfilled.status is OrderStatus.FULFILLED and fulfilled.fee_amount == fee
    assert fulfilled.held_amount == 0 and fulfilled.fulfilled_at is not None
    assert balances(buyer) == (Decimal(95), Decimal(0))
    assert balances(provider) == (Decimal(5) - fee, Decimal(0))

    partly = provider.client.orders.refund(order.id, "one slice was down", "2")
    platform_part = (Decimal(2) * fee / 5).quantize(Decimal("0.000001"))
    assert partly.status is OrderStatus.PARTIALLY_REFUNDED and partly.refunded_amount == 2
    assert partly.fee_refunded == platform_part
    assert balances(buyer) == (Decimal(97), Decimal(0))
    assert balances(provider) == (Decimal(5) - fee - (2 - platform_part), Decimal(0))

    refunded = provider.client.orders.refund(order.id, "the rest")  # all that is left
    assert refunded.status is OrderStatus.REFUNDED
    assert refunded.refunded_amount == 5 and refunded.fee_refunded == fee
    assert balances(buyer) == (Decimal(100), Decimal(0)) and balances(provider) == (Decimal(0), Decimal(0))
    assert provider.client.marketplace.product(product.id).units_in_use == 0

    kinds = [entry.kind for entry in buyer.client.credits.history()]
    assert kinds[-2:] == [TransactionKind.ORDER_HOLD, TransactionKind.PURCHASE]
    assert set(kinds[:-2]) == {TransactionKind.REFUND}
    earned = provider.client.credits.history(kinds=[TransactionKind.PROVIDER_EARNING])
    assert [entry.amount for entry in earned] == [Decimal(5) - fee]

    today = datetime.now(UTC).date()
    [day] = provider.client.orders.earnings_by_day(since=today, until=today)
    assert (day.day, day.orders) == (today, 1)
    assert (day.gross, day.fee, day.refunded, day.fee_refunded, day.net) == (
        Decimal(5),
        fee,
        Decimal(5),
        fee,
        Decimal(0),
    )
    [month] = provider.client.orders.earnings_by_month()
    assert month.month == today.replace(day=1) and month.gross == 5 and month.net == 0
    [by_product] = provider.client.orders.earnings_by_product()
    assert (by_product.product_id, by_product.units) == (product.id, 2)
    assert (by_product.gross, by_product.fee, by_product.net) == (Decimal(5), fee, Decimal(0))
    [spent] = buyer.client.orders.spending_by_category()
    assert (spent.category, spent.orders, spent.units) == (ProductCategory.COMPUTE, 1, 2)
    assert (spent.paid, spent.refunded, spent.spent) == (Decimal(5), Decimal(5), Decimal(0))


def test_cancelled_failed_and_expired_orders_give_the_hold_back(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded="10.5")
    product = listed(provider, "1.5")
    orders = buyer.client.orders

    cancelled = orders.cancel(orders.place([(product.id, 3)]).id)
    assert cancelled.status is OrderStatus.CANCELLED and cancelled.held_amount == 0
    failed = provider.client.orders.fail(orders.place({product.id: 1}).id, "no capacity left on the node")
    assert failed.status is OrderStatus.FAILED
    assert balances(buyer) == (Decimal("10.5"), Decimal(0))

    expiring = orders.place({str(product.id): 7})
    assert balances(buyer) == (Decimal(0), Decimal("10.5"))
    with target.connect() as conn:  # let the hold run past its time to live
        conn.execute(
            "update public.orders set created_at = now() - interval '91 days' where id = %s", (expiring.id,)
        )
    released = target.service().admin.release_expired_holds()
    assert released.orders_released >= 1 and released.credits_released >= Decimal("10.5")
    assert released.hold_ttl.total_seconds() > 0 and released.as_of.tzinfo is not None
    assert orders.get(expiring.id).status is OrderStatus.CANCELLED
    assert balances(buyer) == (Decimal("10.5"), Decimal(0))

    # newest first: the expired order was moved 91 days back
    assert [order.id for order in orders.history()] == [failed.id, cancelled.id, expiring.id]
    assert [order.id for order in orders.history(statuses=["failed"])] == [failed.id]


def test_orders_page_by_keyset_for_buyers_and_providers(account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=50)
    product = listed(provider, "1")
    placed = [buyer.client.orders.place({product.id: quantity}) for quantity in range(1, 6)]
    newest_first = [order.id for order in reversed(placed)]
    assert [order.id for order in buyer.client.orders.history(page_size=2)] == newest_first
    received = list(provider.client.orders.history(side="provider", page_size=2))
    assert [order.id for order in received] == newest_first
    assert [order.items[0].quantity for order in received] == [5, 4, 3, 2, 1]
    provider.client.orders.fulfil(placed[0].id)
    fulfilled = provider.client.orders.history(side="provider", statuses=[OrderStatus.FULFILLED])
    assert [order.id for order in fulfilled] == [placed[0].id]
    assert list(provider.client.orders.history()) == []  # bought nothing


def test_an_order_whose_response_was_lost_is_placed_once(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=20)
    product = listed(provider, "3.25")
    transport = DropsResponses("/rpc/place_order", drops=2)
    order = signed_in(target, buyer.email, transport).orders.place({product.id: 2})
    assert transport.sent == 3  # placed by the first, replayed by the next two
    assert order.total == Decimal("6.5") and order.status is OrderStatus.PENDING
    assert [placed.id for placed in buyer.client.orders.history()] == [order.id]
    assert balances(buyer) == (Decimal("13.5"), Decimal("6.5"))


def test_a_refund_whose_response_was_lost_is_applied_once(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=20)
    order = buyer.client.orders.place({listed(provider, "4").id: 1})
    provider.client.orders.fulfil(order.id)
    transport = DropsResponses("/rpc/refund_order", drops=1)
    refunded = signed_in(target, provider.email, transport).orders.refund(order.id, "late", "1.5")
    assert transport.sent == 2 and refunded.refunded_amount == Decimal("1.5")
    assert balances(buyer) == (Decimal("17.5"), Decimal(0))


def test_a_capture_whose_response_was_lost_is_applied_once(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=20)
    order = buyer.client.orders.place({listed(provider, "4").id: 1})
    transport = DropsResponses("/rpc/fulfil_order", drops=1)
    fulfilled = signed_in(target, provider.email, transport).orders.fulfil(order.id)
    assert transport.sent == 2 and fulfilled.status is OrderStatus.FULFILLED
    assert balances(buyer) == (Decimal("16"), Decimal(0))
    assert fulfilled.fee_amount is not None
    assert balances(provider)[0] == Decimal("4") - fulfilled.fee_amount


def test_a_trusted_service_fulfils_orders_and_reads_anyones(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    order = buyer.client.orders.place({listed(provider, "4").id: 1})
    service = target.service()
    assert [found.id for found in service.orders.history(user_id=buyer.id)] == [order.id]
    assert service.orders.fulfil(order.id).status is OrderStatus.FULFILLED  # the provisioning service
    provided = service.orders.history(side="provider", user_id=provider.id, statuses=["fulfilled"])
    assert [found.id for found in provided] == [order.id]
    [day] = service.orders.earnings_by_day(provider_id=provider.id)
    assert day.provider_id == provider.id and day.gross == 4
    assert [row.provider_id for row in service.orders.earnings_by_product(provider_id=provider.id)] == [
        provider.id
    ]
    [spent] = service.orders.spending_by_category(buyer_id=buyer.id)
    assert spent.buyer_id == buyer.id and spent.spent == 4


def test_the_same_key_places_the_same_order(account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product, key = listed(provider, "2"), f"basket-{uuid.uuid4()}"
    first = buyer.client.orders.place({product.id: 1}, idempotency_key=key)
    assert buyer.client.orders.place({product.id: 1}, idempotency_key=key) == first
    assert balances(buyer) == (Decimal(8), Decimal(2))
    with pytest.raises(Conflict) as raised:
        buyer.client.orders.place({product.id: 2}, idempotency_key=key)
    assert raised.value.reason == "duplicate_reference" and raised.value.status == 409


# -- every marketplace error, raised from a real SQL error -------------------------------------------
def test_order_errors_are_typed(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=5)
    product, scarce = listed(provider, "2"), listed(provider, "1", capacity=1)
    orders = buyer.client.orders

    def refused(error: type[Exception], reason: str, status: int, call: object) -> None:
        with pytest.raises(error) as raised:
            call()  # type: ignore[operator]
        assert (raised.value.reason, raised.value.status) == (reason, status)  # type: ignore[attr-defined]

    refused(InsufficientCredits, "insufficient_credits", 409, lambda: orders.place({product.id: 3}))
    refused(NotFound, "product_not_found", 404, lambda: orders.place({uuid.uuid4(): 1}))
    refused(NotFound, "order_not_found", 404, lambda: orders.cancel(uuid.uuid4()))
    refused(Conflict, "capacity_exceeded", 409, lambda: orders.place({scarce.id: 2}))
    refused(InvalidArgument, "invalid_quantity", 400, lambda: orders.place({product.id: 0}))
    refused(InvalidArgument, "own_product", 400, lambda: provider.client.orders.place({product.id: 1}))
    other = listed(account(role=RoleName.FARMER), "1")
    refused(InvalidArgument, "mixed_providers", 400, lambda: orders.place({product.id: 1, other.id: 1}))

    order = orders.place({product.id: 1})
    refused(NotAuthorized, "not_authorized", 403, lambda: orders.fulfil(order.id))  # buyers do not fulfil
    refused(NotFound, "PGRST116", 406, lambda: account().client.orders.get(order.id))  # not theirs to see
    sold = provider.client.orders
    refused(Conflict, "invalid_transition", 409, lambda: sold.refund(order.id, "x"))  # still pending
    fulfilled = sold.fulfil(order.id)
    assert sold.fulfil(order.id) == fulfilled  # a repeat moves nothing
    refused(Conflict, "invalid_transition", 409, lambda: orders.cancel(order.id))
    refused(Conflict, "refund_exceeds_paid", 409, lambda: sold.refund(order.id, "x", "2.000001"))

    provider.client.marketplace.deactivate_product(product.id)
    refused(Conflict, "product_inactive", 409, lambda: orders.place({product.id: 1}))
    with pytest.raises(NotAuthorized):
        target.client().orders.place({product.id: 1})  # refused before sending: nobody signed in


# -- the async twins ---------------------------------------------------------------------------------
def test_async_orders(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=30)
    product = listed(provider, "2.5")

    async def scenario() -> None:
        async with async_clients(target, buyer, provider) as (as_buyer, as_provider, service):
            order = await as_buyer.orders.place({product.id: 4})
            assert (await as_buyer.orders.get(order.id)).total == 10
            fulfilled = await as_provider.orders.fulfil(order.id)
            refunded = await as_provider.orders.refund(order.id, "sorry", idempotency_key="r-1")
            assert refunded.status is OrderStatus.REFUNDED
            assert await as_provider.orders.refund(order.id, "sorry", idempotency_key="r-1") == refunded
            cancelled = await as_buyer.orders.cancel((await as_buyer.orders.place({product.id: 1})).id)
            to_fail = await as_buyer.orders.place({product.id: 1})
            failed = await as_provider.orders.fail(to_fail.id, "broken")
            placed = [placed.id async for placed in as_buyer.orders.history(page_size=1)]
            assert placed == [failed.id, cancelled.id, order.id]
            refunded_ones = as_provider.orders.history(side="provider", statuses=["refunded"])
            assert [received.id async for received in refunded_ones] == [order.id]
            [day] = await as_provider.orders.earnings_by_day()
            assert day.gross == 10 and day.fee == fulfilled.fee_amount and day.net == 0
            [by_product] = await as_provider.orders.earnings_by_product()
            assert by_product.product_id == product.id and by_product.refunded == 10
            [spent] = await as_buyer.orders.spending_by_category()
            assert spent.paid == 10 and spent.spent == 0
            released = await service.admin.release_expired_holds()
            assert released.orders_released >= 0
            ttl = (await as_buyer.marketplace.config()).hold_ttl
            assert (await service.admin.set_marketplace_config(hold_ttl=ttl)).hold_ttl == ttl
            currency = await service.admin.set_display_currency("XASYNC", "2")
            assert currency.symbol == "XASYNC"
            await service.admin.remove_display_currency("XASYNC")

    asyncio.run(scenario())
    assert balances(buyer) == (Decimal(30), Decimal(0))
