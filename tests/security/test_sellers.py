"""Who may go on selling, proven through PostgREST: a provider whose role is revoked sells and
captures nothing more, admins and the service take products off sale (and only they put them
back), a hidden product's name stays hidden, and one buyer cannot hold the marketplace with
pending orders."""

from __future__ import annotations

from typing import Any

from tests.support import Api, User, body, denied
from tests.support.marketplace import (
    D,
    MakeUser,
    account,
    audit_is_clean,
    buyer,
    failure,
    list_product,
    moderation,
    place,
    placed,
    setting,
)


def product_row(user: User, product: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = body(user.api.get("/products", id=f"eq.{product['id']}"))[0]
    return row


def test_a_provider_whose_role_is_revoked_sells_and_captures_nothing_more(
    anon_api: Api, service_api: Api, make_user: MakeUser
) -> None:
    provider, admin = make_user("farmer", "app_provider"), make_user("admin")
    alice = buyer(service_api, make_user, "50")
    slice_, node = list_product(provider, price="5"), list_product(provider, category="node", price="1")
    app = list_product(provider, category="app", price="2")
    to_cancel, to_fail = placed(alice, (slice_["id"], 1)), placed(alice, (node["id"], 2))

    assert admin.api.rpc("revoke_role", user_id=provider.id, role="farmer").status_code == 200

    # What the farmer role covered is off sale and refused with the reason; the app is not.
    failure(place(alice, (slice_["id"], 1)), 409, "provider_not_selling")
    failure(place(alice, (node["id"], 1)), 409, "provider_not_selling")
    assert [product_row(provider, p)["active"] for p in (slice_, node, app)] == [False, False, True]
    assert body(anon_api.get("/products", id=f"in.({slice_['id']},{node['id']})")) == []
    failure(provider.api.patch("/products", {"active": True}, id=f"eq.{slice_['id']}"), 403, "not_authorized")
    placed(alice, (app["id"], 1))

    # Pending orders are not captured, by the provider or the service; they are given back.
    for api in (provider.api, service_api):
        failure(api.rpc("fulfil_order", order_id=to_cancel["id"]), 409, "provider_not_selling")
    assert account(alice) == (D("41"), D("9"))
    assert alice.api.rpc("cancel_order", order_id=to_cancel["id"]).status_code == 200
    assert (
        provider.api.rpc("fail_order", order_id=to_fail["id"], reason="no longer a farmer").status_code == 200
    )
    assert account(alice) == (D("48"), D("2"))

    # The role granted again: the provider puts back on sale what they want to sell.
    assert admin.api.rpc("grant_role", user_id=provider.id, role="farmer").status_code == 200
    failure(place(alice, (slice_["id"], 1)), 409, "product_inactive")
    assert provider.api.patch("/products", {"active": True}, id=f"eq.{slice_['id']}").status_code == 200
    order = placed(alice, (slice_["id"], 1))
    assert provider.api.rpc("fulfil_order", order_id=order["id"]).status_code == 200
    audit_is_clean(service_api)


def test_product_inactive_names_the_product_by_id_only(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    product = list_product(provider, name="secret prototype gpu node")
    assert provider.api.patch("/products", {"active": False}, id=f"eq.{product['id']}").status_code == 200
    reply = place(alice, (product["id"], 1))
    failure(reply, 409, "product_inactive")
    assert product["id"] in reply.text and "secret" not in reply.text


def test_admins_and_the_service_take_products_off_sale_and_only_they_put_them_back(
    anon_api: Api, service_api: Api, make_user: MakeUser
) -> None:
    provider, admin, alice = make_user("farmer"), make_user("admin"), buyer(service_api, make_user, "10")
    stranger = make_user("farmer")
    product = list_product(provider, price="1")

    # Nobody but admins and the service, and not through a plain PATCH (RLS: 0 rows, or refused).
    assert body(admin.api.patch("/products", {"active": False}, id=f"eq.{product['id']}")) == []
    assert denied(service_api.patch("/products", {"active": False}, id=f"eq.{product['id']}"))
    assert denied(anon_api.rpc("set_product_active", product_id=product["id"], active=False, reason="x"))
    for intruder in (provider, stranger, alice):
        reply = intruder.api.rpc("set_product_active", product_id=product["id"], active=False, reason="x")
        failure(reply, 403, "not_authorized")
    assert product_row(provider, product)["active"] is True

    taken = admin.api.rpc(
        "set_product_active", product_id=product["id"], active=False, reason="fraud report 17"
    )
    assert taken.status_code == 200 and body(taken)["active"] is False, taken.text
    assert body(anon_api.get("/products", id=f"eq.{product['id']}")) == []
    failure(place(alice, (product["id"], 1)), 409, "product_inactive")
    # The provider sees why, and cannot put it back on sale; nobody else reads the record.
    # Who took it down is for admins (staff_actions), not for the provider.
    assert moderation(provider.api, product) == [(False, "fraud report 17", None, "authenticated")]
    failure(
        provider.api.patch("/products", {"active": True}, id=f"eq.{product['id']}"), 403, "not_authorized"
    )
    assert product_row(provider, product)["active"] is False
    assert moderation(stranger.api, product) == [] and moderation(alice.api, product) == []
    assert denied(anon_api.get("/product_moderation"))
    # The admin's exception is `active` alone, through the function.
    assert body(admin.api.patch("/products", {"name": "renamed"}, id=f"eq.{product['id']}")) == []

    lifted = service_api.rpc("set_product_active", product_id=product["id"], active=True, reason="cleared")
    assert lifted.status_code == 200 and body(lifted)["active"] is True, lifted.text
    assert moderation(admin.api, product)[1] == (True, "cleared", None, "service_role")
    placed(alice, (product["id"], 1))
    # Lifting again is a retry: the product back, nothing recorded.
    again = admin.api.rpc("set_product_active", product_id=product["id"], active=True, reason="cleared")
    assert again.status_code == 200 and len(moderation(admin.api, product)) == 2

    # What the provider took off sale is theirs to put back.
    assert provider.api.patch("/products", {"active": False}, id=f"eq.{product['id']}").status_code == 200
    reply = admin.api.rpc("set_product_active", product_id=product["id"], active=True, reason="x")
    failure(reply, 403, "not_authorized")
    assert provider.api.patch("/products", {"active": True}, id=f"eq.{product['id']}").status_code == 200
    audit_is_clean(service_api)


def test_a_take_down_is_lifted_only_while_the_provider_holds_the_role(
    service_api: Api, make_user: MakeUser
) -> None:
    provider = make_user("farmer")
    product_id = list_product(provider)["id"]
    reply = service_api.rpc("set_product_active", product_id=product_id, active=False, reason=" ")
    failure(reply, 400, "invalid_argument")
    reply = service_api.rpc("set_product_active", product_id=product_id, active=None, reason="x")
    failure(reply, 400, "invalid_argument")
    reply = service_api.rpc(
        "set_product_active", product_id="00000000-0000-4000-8000-000000000000", active=False, reason="x"
    )
    failure(reply, 404, "product_not_found")
    assert (
        service_api.rpc("set_product_active", product_id=product_id, active=False, reason="x").status_code
        == 200
    )
    assert service_api.rpc("revoke_role", user_id=provider.id, role="farmer").status_code == 200
    reply = service_api.rpc("set_product_active", product_id=product_id, active=True, reason="x")
    failure(reply, 409, "provider_not_selling")


def test_one_buyer_cannot_hold_too_many_orders_pending(service_api: Api, make_user: MakeUser) -> None:
    provider, alice, bob = make_user("farmer"), buyer(service_api, make_user), buyer(service_api, make_user)
    product = list_product(provider, price="1")
    with setting(service_api, "marketplace_config", "max_pending_orders", "2"):
        first, second = placed(alice, (product["id"], 1)), placed(alice, (product["id"], 1), key="last")
        failure(place(alice, (product["id"], 1)), 409, "too_many_pending_orders")
        # A retry of an order placed is a replay, whatever the bound says now.
        assert placed(alice, (product["id"], 1), key="last")["id"] == second["id"]
        placed(bob, (product["id"], 1))
        # Fulfilled and cancelled orders do not count.
        assert provider.api.rpc("fulfil_order", order_id=first["id"]).status_code == 200
        third = placed(alice, (product["id"], 1))
        assert alice.api.rpc("cancel_order", order_id=third["id"]).status_code == 200
        placed(alice, (product["id"], 1))
        failure(place(alice, (product["id"], 1)), 409, "too_many_pending_orders")
    assert account(alice) == (D("97"), D("2"))
    audit_is_clean(service_api)


def test_one_buyer_cannot_hold_a_products_capacity_pending(service_api: Api, make_user: MakeUser) -> None:
    provider, alice, bob = make_user("farmer"), buyer(service_api, make_user), buyer(service_api, make_user)
    node = list_product(provider, category="node", price="1", capacity=4)
    single = list_product(provider, category="node", price="1", capacity=1)
    with setting(service_api, "marketplace_config", "max_pending_capacity_percent", "50"):
        held = placed(alice, (node["id"], 2))
        failure(place(alice, (node["id"], 1)), 409, "too_many_pending_units")
        failure(place(alice, (single["id"], 1), (node["id"], 1)), 409, "too_many_pending_units")
        placed(bob, (node["id"], 1))
        # Fulfilled units do not count: alice may end up with more than her pending share.
        assert provider.api.rpc("fulfil_order", order_id=held["id"]).status_code == 200
        placed(alice, (node["id"], 1))
        # At least one unit, whatever the share.
        placed(alice, (single["id"], 1))
    assert body(provider.api.get("/products", id=f"eq.{node['id']}"))[0]["units_in_use"] == 4
    audit_is_clean(service_api)


def test_the_bounds_are_set_by_admins_within_limits(
    anon_api: Api, service_api: Api, make_user: MakeUser
) -> None:
    admin, user = make_user("admin"), make_user()
    for bad in ({"max_pending_orders": 0}, {"max_pending_orders": 10001}):
        failure(admin.api.rpc("set_marketplace_config", **bad), 400, "invalid_argument")
    for percent in ("0", "-1", "100.0001", "12.34567", "NaN"):
        reply = admin.api.rpc("set_marketplace_config", max_pending_capacity_percent=percent)
        failure(reply, 400, "invalid_argument")
    failure(user.api.rpc("set_marketplace_config", max_pending_orders=5), 403, "not_authorized")
    assert denied(anon_api.rpc("set_marketplace_config", max_pending_orders=5))
    with setting(service_api, "marketplace_config", "max_pending_capacity_percent", "33.3300") as share:
        config = body(anon_api.get("/marketplace_config"))[0]
        assert D(str(config["max_pending_capacity_percent"])) == share and config["max_pending_orders"] >= 1
