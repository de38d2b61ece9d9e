"""A refund the provider cannot pay: refused with the shortfall, nothing moved, until they are funded."""

from __future__ import annotations

from typing import Any

from tests.support import Api, User, body
from tests.support.marketplace import (
    D,
    MakeUser,
    account,
    audit_is_clean,
    buyer,
    list_product,
    placed,
    setting,
)


def snapshot(admin: User, order_id: str, *users: User) -> tuple[Any, ...]:
    """Everything a refund would change: the order, its refunds, each user's account and history."""
    order = body(admin.api.get("/orders", id=f"eq.{order_id}", select="status,refunded_amount,fee_refunded"))
    refunds = body(admin.api.get("/order_refunds", order_id=f"eq.{order_id}"))
    movements = [body(user.api.get("/credit_transactions", select="id", order="id")) for user in users]
    return order, refunds, [account(user) for user in users], movements


def test_a_refund_the_provider_cannot_pay_names_the_shortfall_and_changes_nothing(
    service_api: Api, make_user: MakeUser
) -> None:
    provider, alice, friend, admin = (
        make_user("farmer"),
        buyer(service_api, make_user, "20"),
        make_user(),
        make_user("admin"),
    )
    with setting(service_api, "marketplace_config", "platform_fee_percent", "10"):
        order = placed(alice, (list_product(provider, price="10")["id"], 1))
    assert provider.api.rpc("fulfil_order", order_id=order["id"]).status_code == 200
    # The provider earned 9 and sends 7 of it away; a full refund takes 9 from them, 1 from the fee.
    assert provider.api.rpc("transfer_credits", recipient=friend.id, amount="7").status_code == 200
    before = snapshot(admin, order["id"], alice, provider, friend)

    refused = admin.api.rpc("refund_order", order_id=order["id"], reason="node down", idempotency_key="r1")
    assert refused.status_code == 409, refused.text
    error = body(refused)
    assert error["code"] == "provider_funds_short"
    assert "has 2 spendable credits" in error["message"] and "7 short" in error["message"], error
    assert snapshot(admin, order["id"], alice, provider, friend) == before
    assert account(provider) == (D(2), D(0))
    audit_is_clean(service_api)

    # Funded with the difference, the same refund (its key unused by the refusal) goes through.
    funded = admin.api.rpc("grant_credits", user_id=provider.id, amount="7", reason="refund of node down")
    assert funded.status_code == 200, funded.text
    refunded = admin.api.rpc("refund_order", order_id=order["id"], reason="node down", idempotency_key="r1")
    assert refunded.status_code == 200 and body(refunded)["status"] == "refunded", refunded.text
    assert account(alice) == (D(20), D(0)) and account(provider) == (D(0), D(0))
    audit_is_clean(service_api)
