"""Security of the marketplace, proven through PostgREST as anon, buyers, other providers and in
the catalog: who writes products, who sees and moves which orders."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support import Api, body, denied
from tests.support.marketplace import (
    D,
    MakeUser,
    account,
    audit_is_clean,
    buyer,
    failure,
    list_product,
    placed,
)

ORDER_TABLES = ["orders", "order_items", "order_status_history", "order_refunds"]
PRIVATE_VIEWS = [
    "marketplace_config_history",
    "provider_earnings_daily",
    "provider_earnings_monthly",
    "provider_earnings_by_product",
    "buyer_spending_by_category",
    "order_item_shares",
]


def fulfilled_order(service_api: Api, make_user: MakeUser) -> tuple[Any, Any, dict[str, Any]]:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "50")
    order = placed(alice, (list_product(provider, price="5")["id"], 2))
    assert provider.api.rpc("fulfil_order", order_id=order["id"]).status_code == 200
    return provider, alice, order


@pytest.mark.parametrize("table", ORDER_TABLES + PRIVATE_VIEWS)
def test_anon_reads_no_orders_or_earnings(
    anon_api: Api, service_api: Api, make_user: MakeUser, table: str
) -> None:
    fulfilled_order(service_api, make_user)
    reply = anon_api.get(f"/{table}")
    assert denied(reply) or body(reply) == [], reply.text


@pytest.mark.parametrize("table", ORDER_TABLES + PRIVATE_VIEWS[1:])
def test_strangers_read_nothing_of_an_order(service_api: Api, make_user: MakeUser, table: str) -> None:
    fulfilled_order(service_api, make_user)
    assert body(make_user("farmer").api.get(f"/{table}")) == []


def test_buyer_and_provider_see_the_order_and_nothing_else(service_api: Api, make_user: MakeUser) -> None:
    provider, alice, order = fulfilled_order(service_api, make_user)
    other_provider, bob = make_user("farmer"), buyer(service_api, make_user, "50")
    bobs = placed(bob, (list_product(other_provider)["id"], 1))
    for who in (alice, provider):
        assert [o["id"] for o in body(who.api.get("/orders"))] == [order["id"]]
        assert {i["order_id"] for i in body(who.api.get("/order_items"))} == {order["id"]}
        assert body(who.api.get("/orders", id=f"eq.{bobs['id']}")) == []
        assert body(who.api.get("/order_items", order_id=f"eq.{bobs['id']}")) == []
    # The provider does not see the buyer's account or history.
    assert body(provider.api.get("/credit_accounts", user_id=f"eq.{alice.id}")) == []
    assert body(provider.api.get("/credit_transactions", user_id=f"eq.{alice.id}")) == []
    admin = make_user("admin")
    assert {o["id"] for o in body(admin.api.get("/orders", id=f"in.({order['id']},{bobs['id']})"))} == {
        order["id"],
        bobs["id"],
    }


def test_no_one_moves_someone_elses_order(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "50")
    pending = placed(alice, (list_product(provider, price="5")["id"], 1))
    other_provider, stranger = make_user("farmer"), buyer(service_api, make_user, "5")
    for intruder in (other_provider, stranger):
        failure(intruder.api.rpc("fulfil_order", order_id=pending["id"]), 404, "order_not_found")
        failure(intruder.api.rpc("cancel_order", order_id=pending["id"]), 404, "order_not_found")
        failure(intruder.api.rpc("fail_order", order_id=pending["id"], reason="x"), 404, "order_not_found")
        failure(intruder.api.rpc("refund_order", order_id=pending["id"], reason="x"), 404, "order_not_found")
    failure(alice.api.rpc("fulfil_order", order_id=pending["id"]), 403, "not_authorized")
    failure(make_user("admin").api.rpc("fulfil_order", order_id=pending["id"]), 403, "not_authorized")
    failure(alice.api.rpc("fulfil_order", order_id=str(uuid.uuid4())), 404, "order_not_found")
    assert account(alice) == (D("45"), D("5"))
    assert provider.api.rpc("fulfil_order", order_id=pending["id"]).status_code == 200
    for intruder in (other_provider, stranger):
        failure(intruder.api.rpc("refund_order", order_id=pending["id"], reason="x"), 404, "order_not_found")
    failure(alice.api.rpc("refund_order", order_id=pending["id"], reason="x"), 403, "not_authorized")
    assert account(alice) == (D("45"), D(0))
    audit_is_clean(service_api)


def test_no_api_role_writes_orders(anon_api: Api, service_api: Api, make_user: MakeUser) -> None:
    provider, alice, order = fulfilled_order(service_api, make_user)
    rows: dict[str, dict[str, Any]] = {
        "orders": {
            "buyer_id": alice.id,
            "provider_id": provider.id,
            "total": "1",
            "held_amount": "0",
            "fee_percent": "0",
        },
        "order_items": {
            "order_id": order["id"],
            "product_id": order["items"][0]["product_id"],
            "quantity": 1,
        },
        "order_status_history": {"order_id": order["id"], "to_status": "refunded", "changed_role": "x"},
        "order_refunds": {
            "order_id": order["id"],
            "amount": "10",
            "provider_part": "10",
            "platform_part": "0",
        },
    }
    changes = {
        "orders": {"status": "refunded", "total": "0.01"},
        "order_items": {"unit_price": "0.01"},
        "order_status_history": {"to_status": "pending"},
        "order_refunds": {"amount": "1"},
    }
    for table in ORDER_TABLES:
        column = "id" if table == "orders" else "order_id"
        for api in (anon_api, alice.api, provider.api, service_api):
            assert denied(api.post(f"/{table}", rows[table])), table
            patched = api.patch(f"/{table}", changes[table], **{column: f"eq.{order['id']}"})
            assert denied(patched) or body(patched) == [], (table, patched.text)
            deleted = api.delete(f"/{table}", **{column: f"eq.{order['id']}"})
            assert denied(deleted) or body(deleted) == [], (table, deleted.text)
    assert body(alice.api.get("/orders", select="status,total"))[0] == {"status": "fulfilled", "total": 10}
    audit_is_clean(service_api)


def test_products_are_written_by_their_provider_only(anon_api: Api, make_user: MakeUser) -> None:
    farmer, other_farmer, nobody = make_user("farmer"), make_user("farmer"), make_user()
    product = list_product(farmer, price="3")
    row = {"category": "compute", "name": "x", "price": "1", "unit": "hour"}
    assert denied(anon_api.post("/products", row))
    failure(nobody.api.post("/products", row), 403, "not_authorized")
    failure(farmer.api.post("/products", {**row, "category": "app"}), 403, "not_authorized")
    failure(make_user("app_provider").api.post("/products", row), 403, "not_authorized")
    failure(farmer.api.post("/products", {**row, "provider_id": other_farmer.id}), 403, "not_authorized")
    assert denied(farmer.api.post("/products", {**row, "units_in_use": 5}))
    assert denied(farmer.api.post("/products", {**row, "id": str(uuid.uuid4())}))
    # Someone else's product: invisible to PATCH, unchanged.
    assert body(other_farmer.api.patch("/products", {"price": "0.01"}, id=f"eq.{product['id']}")) == []
    assert body(nobody.api.patch("/products", {"active": False}, id=f"eq.{product['id']}")) == []
    assert denied(anon_api.patch("/products", {"price": "0.01"}, id=f"eq.{product['id']}"))
    # Your own: never its owner, id, creation time or units in use.
    for change in (
        {"provider_id": other_farmer.id},
        {"units_in_use": 0},
        {"id": str(uuid.uuid4())},
        {"created_at": "2020-01-01T00:00:00Z"},
    ):
        assert denied(farmer.api.patch("/products", change, id=f"eq.{product['id']}")), change
    for price in ("NaN", "-1", "0", "0.0000001", "Infinity", "1e15"):
        failure(
            farmer.api.patch("/products", {"price": price}, id=f"eq.{product['id']}"), 400, "invalid_amount"
        )
        failure(farmer.api.post("/products", {**row, "price": price}), 400, "invalid_amount")
    # No one deletes a product: it is deactivated.
    for api in (farmer.api, other_farmer.api, anon_api):
        deleted = api.delete("/products", id=f"eq.{product['id']}")
        assert denied(deleted) or body(deleted) == [], deleted.text
    mine = body(farmer.api.get("/products", id=f"eq.{product['id']}"))[0]
    assert (mine["provider_id"], D(str(mine["price"])), mine["active"]) == (farmer.id, D("3"), True)


def test_a_provider_without_the_role_can_only_take_products_off_sale(
    service_api: Api, make_user: MakeUser
) -> None:
    farmer = make_user("farmer")
    product = list_product(farmer)
    assert service_api.rpc("revoke_role", user_id=farmer.id, role="farmer").status_code == 200
    # The revocation took the product off sale (tests/security/test_sellers.py): it stays off.
    back = farmer.api.patch("/products", {"active": True, "price": "1"}, id=f"eq.{product['id']}")
    failure(back, 403, "not_authorized")
    failure(
        farmer.api.post("/products", {"category": "node", "name": "x", "price": "1", "unit": "hour"}),
        403,
        "not_authorized",
    )
    off = farmer.api.patch("/products", {"active": False}, id=f"eq.{product['id']}")
    assert off.status_code == 200 and body(off)[0]["active"] is False


def test_inactive_products_are_seen_by_their_provider_only(anon_api: Api, make_user: MakeUser) -> None:
    farmer = make_user("farmer")
    product = list_product(farmer, active=False)
    assert body(anon_api.get("/products", id=f"eq.{product['id']}")) == []
    assert body(make_user().api.get("/products", id=f"eq.{product['id']}")) == []
    assert len(body(farmer.api.get("/products", id=f"eq.{product['id']}"))) == 1
    assert len(body(make_user("admin").api.get("/products", id=f"eq.{product['id']}"))) == 1


def test_marketplace_settings_are_for_admins(anon_api: Api, make_user: MakeUser) -> None:
    user = make_user("farmer")
    for api in (anon_api, user.api):
        assert denied(api.rpc("set_marketplace_config", platform_fee_percent="0"))
        assert denied(api.rpc("set_display_currency", code="XAU", usd_per_unit="2000"))
        assert denied(api.rpc("release_expired_holds"))
        assert denied(api.post("/marketplace_config", {"id": False}))
        assert denied(api.patch("/marketplace_config", {"platform_fee_percent": "0"}, id="eq.true"))
        assert denied(api.post("/display_currencies", {"code": "XAU", "symbol": "g", "usd_per_unit": "1"}))
    assert D(str(body(anon_api.get("/marketplace_config"))[0]["platform_fee_percent"])) >= 0
    assert denied(anon_api.rpc("place_order", items=[]))
