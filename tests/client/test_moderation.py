"""`client.admin.set_product_active` and the bounds on pending orders, end to end: a product taken
off sale and put back, and the refusals a buyer meets, as exceptions with their reasons."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from mycelium_client import AsyncMyceliumClient, Conflict, InvalidArgument, NotAuthorized, Product, RoleName
from tests.support.client import FAST_RETRY, MakeAccount, Target, listed


def test_admins_take_a_product_off_sale_and_put_it_back(target: Target, account: MakeAccount) -> None:
    provider, buyer, admin = account(role=RoleName.FARMER), account(funded=10), account(role=RoleName.ADMIN)
    product = listed(provider, "1")

    taken = admin.client.admin.set_product_active(product.id, False, "fraud report 17")
    assert isinstance(taken, Product) and taken.id == product.id and not taken.active
    with pytest.raises(Conflict) as raised:
        buyer.client.orders.place({product.id: 1})
    assert (raised.value.reason, raised.value.status) == ("product_inactive", 409)
    with pytest.raises(NotAuthorized):
        provider.client.marketplace.update_product(product.id, active=True)
    with pytest.raises(NotAuthorized):
        provider.client.admin.set_product_active(product.id, True, "mine")
    with pytest.raises(InvalidArgument) as refused:
        admin.client.admin.set_product_active(product.id, True, " ")
    assert refused.value.status == 0  # never sent

    async def lift() -> Product:
        async with AsyncMyceliumClient(target.url, target.service_role_key, retry=FAST_RETRY) as service:
            return await service.admin.set_product_active(str(product.id), True, "cleared")

    assert asyncio.run(lift()).active
    assert buyer.client.orders.place({product.id: 1}).total == Decimal(1)


def test_buyers_meet_the_sellers_and_the_bounds_reasons(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1")
    service = target.service().admin
    before = target.client().marketplace.config()
    try:
        changed = service.set_marketplace_config(max_pending_orders=1, max_pending_capacity_percent="12.5")
        assert (changed.max_pending_orders, changed.max_pending_capacity_percent) == (1, Decimal("12.5"))
        buyer.client.orders.place({product.id: 1})
        with pytest.raises(Conflict) as raised:
            buyer.client.orders.place({product.id: 1})
        assert raised.value.reason == "too_many_pending_orders"
    finally:
        service.set_marketplace_config(
            max_pending_orders=before.max_pending_orders,
            max_pending_capacity_percent=before.max_pending_capacity_percent,
        )
    service.revoke_role(provider.id, RoleName.FARMER)
    with pytest.raises(Conflict) as raised:
        account(funded=10).client.orders.place({product.id: 1})
    assert raised.value.reason == "provider_not_selling"
