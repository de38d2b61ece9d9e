"""Orders through PostgREST: holds placed, captured, released and refunded, with the ledger sound."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.support import Api, User, body
from tests.support.marketplace import (
    D,
    MakeUser,
    account,
    audit_is_clean,
    buyer,
    failure,
    list_product,
    place,
    placed,
    setting,
)


@pytest.fixture
def fee_percent(service_api: Api) -> Iterator[Decimal]:
    with setting(service_api, "marketplace_config", "platform_fee_percent", "10") as fee:
        yield fee


def history(user_api: Api) -> list[tuple[str, Decimal, Decimal]]:
    rows = body(user_api.get("/credit_transactions", select="kind,amount,balance_after", order="id"))
    return [(r["kind"], D(str(r["amount"])), D(str(r["balance_after"]))) for r in rows]


def test_place_holds_the_total_at_the_current_price(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "100")
    slice_, node = (
        list_product(provider, price="2.5"),
        list_product(provider, category="node", price="10.000001"),
    )
    # A price or total sent by the client is ignored: the server prices every item.
    reply = alice.api.rpc(
        "place_order",
        items=[
            {"product_id": slice_["id"], "quantity": 3, "unit_price": "0.01"},
            {"product_id": node["id"], "quantity": 2},
        ],
        total="1",
    )
    assert reply.status_code in (300, 400, 404), reply.text  # no such signature with `total`
    order = placed(alice, (slice_["id"], 3), (node["id"], 2))
    assert (
        order["status"] == "pending" and order["buyer_id"] == alice.id and order["provider_id"] == provider.id
    )
    assert D(str(order["total"])) == D("27.500002") == D(str(order["held_amount"]))
    lines = {i["product_id"]: (i["quantity"], D(str(i["unit_price"]))) for i in order["items"]}
    assert lines == {slice_["id"]: (3, D("2.5")), node["id"]: (2, D("10.000001"))}
    assert account(alice) == (D("72.499998"), D("27.500002"))
    assert history(alice.api)[-1] == ("order_hold", D("-27.500002"), D("72.499998"))
    # The provider sees nothing of the buyer's account.
    assert body(provider.api.get("/credit_accounts", user_id=f"eq.{alice.id}")) == []
    audit_is_clean(service_api)


def test_fulfil_pays_the_provider_and_the_platform_fee(
    service_api: Api, make_user: MakeUser, fee_percent: Decimal
) -> None:
    provider, alice = make_user("app_provider"), buyer(service_api, make_user, "50")
    app = list_product(provider, category="app", price="3.333333", unit="once")
    order = placed(alice, (app["id"], 1))
    assert D(str(order["fee_percent"])) == fee_percent
    done = provider.api.rpc("fulfil_order", order_id=order["id"])
    assert done.status_code == 200, done.text
    fulfilled = body(done)
    fee = D("0.333333")
    assert fulfilled["status"] == "fulfilled" and D(str(fulfilled["fee_amount"])) == fee
    assert account(alice) == (D("46.666667"), D(0))
    assert account(provider) == (D("3.333333") - fee, D(0))
    assert history(provider.api) == [("provider_earning", D("3.000000"), D("3.000000"))]
    # Capture happens once: a retry gets the fulfilled order back and moves nothing.
    for again in (
        provider.api.rpc("fulfil_order", order_id=order["id"]),
        service_api.rpc("fulfil_order", order_id=order["id"]),
    ):
        assert again.status_code == 200 and body(again) == fulfilled
    failure(alice.api.rpc("cancel_order", order_id=order["id"]), 409, "invalid_transition")
    assert account(provider) == (D("3"), D(0))
    audit_is_clean(service_api)


def test_the_fee_is_the_one_in_force_when_the_order_was_placed(
    service_api: Api, make_user: MakeUser, fee_percent: Decimal
) -> None:
    provider, alice = make_user("service_provider"), buyer(service_api, make_user, "50")
    service = list_product(provider, category="service", price="20")
    order = placed(alice, (service["id"], 1))
    assert service_api.rpc("set_marketplace_config", platform_fee_percent="50").status_code == 200
    fulfilled = body(service_api.rpc("fulfil_order", order_id=order["id"]))
    assert D(str(fulfilled["fee_amount"])) == D("2") and account(provider) == (D("18"), D(0))
    changes = body(service_api.get("/marketplace_config_history", order="id.desc", limit=1))[0]
    assert (
        D(str(changes["new_config"]["platform_fee_percent"])) == 50
        and changes["changed_by_role"] == "service_role"
    )


def test_cancel_and_fail_release_the_hold_in_full(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    product = list_product(provider, price="4")
    first, second = placed(alice, (product["id"], 1)), placed(alice, (product["id"], 1))
    assert account(alice) == (D("2"), D("8"))
    failure(provider.api.rpc("cancel_order", order_id=first["id"]), 403, "not_authorized")
    cancelled = alice.api.rpc("cancel_order", order_id=first["id"])
    assert cancelled.status_code == 200 and body(cancelled)["status"] == "cancelled"
    assert body(alice.api.rpc("cancel_order", order_id=first["id"])) == body(cancelled)  # a retry: no-op
    failure(provider.api.rpc("fail_order", order_id=first["id"], reason="late"), 409, "invalid_transition")
    failure(alice.api.rpc("fail_order", order_id=second["id"], reason="no"), 403, "not_authorized")
    failure(provider.api.rpc("fail_order", order_id=second["id"], reason=" "), 400, "invalid_argument")
    failed = provider.api.rpc("fail_order", order_id=second["id"], reason="node offline")
    assert failed.status_code == 200 and body(failed)["status"] == "failed"
    assert body(provider.api.rpc("fail_order", order_id=second["id"], reason="node offline")) == body(failed)
    failure(provider.api.rpc("fulfil_order", order_id=second["id"]), 409, "invalid_transition")
    assert account(alice) == (D("10"), D(0))
    assert [k for k, _, _ in history(alice.api)][-4:] == [
        "order_hold",
        "order_hold",
        "order_release",
        "order_release",
    ]
    trail = body(alice.api.get("/order_status_history", order_id=f"eq.{second['id']}", order="id"))
    assert [(h["from_status"], h["to_status"], h["changed_by"], h["changed_role"]) for h in trail] == [
        (None, "pending", alice.id, "authenticated"),
        ("pending", "failed", provider.id, "authenticated"),
    ]
    assert trail[1]["reason"] == "node offline"
    audit_is_clean(service_api)


def lots_and_account(user: User) -> tuple[list[tuple[Decimal, dt.datetime]], Decimal, Decimal]:
    """The user's lots (remaining, expires_at), balance and expiring."""
    lots = body(user.api.get("/credit_lots", select="remaining,expires_at", order="id"))
    account = body(user.api.get("/credit_accounts", select="balance,expiring"))[0]
    return (
        [(D(str(lot["remaining"])), dt.datetime.fromisoformat(lot["expires_at"])) for lot in lots],
        D(str(account["balance"])),
        D(str(account["expiring"])),
    )


def test_released_credits_keep_their_expiry(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "5")
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).replace(microsecond=0)
    grant = service_api.rpc(
        "grant_credits", user_id=alice.id, amount="4", reason="promo", expires_at=expires.isoformat()
    )
    assert grant.status_code == 200, grant.text
    order = placed(alice, (list_product(provider, price="6")["id"], 1))
    # The expiring credits went first: the lot is spent, 2 of the 5 non-expiring credits too.
    assert lots_and_account(alice) == ([(D(0), expires)], D(3), D(0))
    assert alice.api.rpc("cancel_order", order_id=order["id"]).status_code == 200
    # Released: a lot of 4 with the old expiry, and the 2 non-expiring credits back.
    assert lots_and_account(alice) == ([(D(0), expires), (D(4), expires)], D(9), D(4))
    audit_is_clean(service_api)


def test_refunds_partial_then_full_split_exactly(
    service_api: Api, make_user: MakeUser, fee_percent: Decimal
) -> None:
    provider, alice, admin = make_user("farmer"), buyer(service_api, make_user, "20"), make_user("admin")
    order = placed(alice, (list_product(provider, price="3.333337")["id"], 3))  # total 10.000011
    assert provider.api.rpc("fulfil_order", order_id=order["id"]).status_code == 200
    fee = D("1.000001")  # 10% of 10.000011, rounded to 6 decimals
    assert account(provider) == (D("10.000011") - fee, D(0))
    failure(alice.api.rpc("refund_order", order_id=order["id"], reason="mine"), 403, "not_authorized")
    failure(
        provider.api.rpc("refund_order", order_id=order["id"], reason="x", amount="0"), 400, "invalid_amount"
    )
    failure(
        provider.api.rpc("refund_order", order_id=order["id"], reason="x", amount="10.000012"),
        409,
        "refund_exceeds_paid",
    )
    part = provider.api.rpc(
        "refund_order", order_id=order["id"], reason="one slice down", amount="3.333337", idempotency_key="r1"
    )
    assert part.status_code == 200 and body(part)["status"] == "partially_refunded"
    again = provider.api.rpc(
        "refund_order", order_id=order["id"], reason="one slice down", amount="3.333337", idempotency_key="r1"
    )
    assert again.status_code == 200 and D(str(body(again)["refunded_amount"])) == D("3.333337")
    failure(
        provider.api.rpc("refund_order", order_id=order["id"], reason="x", amount="1", idempotency_key="r1"),
        409,
        "duplicate_reference",
    )
    rest = admin.api.rpc("refund_order", order_id=order["id"], reason="service ended")
    assert rest.status_code == 200 and body(rest)["status"] == "refunded"
    assert D(str(body(rest)["fee_refunded"])) == fee
    refunds = body(alice.api.get("/order_refunds", order_id=f"eq.{order['id']}", order="created_at"))
    assert [(D(str(r["provider_part"])), D(str(r["platform_part"]))) for r in refunds] == [
        (D("3.000003"), D("0.333334")),
        (D("6.000007"), D("0.666667")),
    ]
    assert account(alice) == (D("20"), D(0)) and account(provider) == (D(0), D(0))
    failure(admin.api.rpc("refund_order", order_id=order["id"], reason="x"), 409, "invalid_transition")
    audit_is_clean(service_api)


def test_a_refund_is_paid_from_the_providers_earnings_first_then_from_their_expiring_credits(
    service_api: Api, make_user: MakeUser
) -> None:
    provider, alice, friend = make_user("farmer"), buyer(service_api, make_user, "20"), make_user()
    order = placed(alice, (list_product(provider, price="10")["id"], 1))
    assert provider.api.rpc("fulfil_order", order_id=order["id"]).status_code == 200
    # The provider passes 5 of the earning on, and then receives promotional credits.
    assert provider.api.rpc("transfer_credits", recipient=friend.id, amount="5").status_code == 200
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    promo = service_api.rpc(
        "grant_credits", user_id=provider.id, amount="50", reason="promo", expires_at=expires.isoformat()
    )
    assert promo.status_code == 200, promo.text
    assert provider.api.rpc("refund_order", order_id=order["id"], reason="down").status_code == 200

    # What is left of the earning goes back first; the 5 missing come from the expiring credits
    # and reach Alice as a lot with the same expiry. Alice paid with credits that never expire.
    lots = body(alice.api.get("/credit_lots"))
    assert [(D(str(lot["remaining"])), dt.datetime.fromisoformat(lot["expires_at"])) for lot in lots] == [
        (D("5"), expires)
    ]
    alice_account = body(alice.api.get("/credit_accounts"))[0]
    assert (D(str(alice_account["balance"])), D(str(alice_account["expiring"]))) == (D("20"), D("5"))
    provider_account = body(provider.api.get("/credit_accounts"))[0]
    assert (D(str(provider_account["balance"])), D(str(provider_account["expiring"]))) == (D("45"), D("45"))
    audit_is_clean(service_api)


def test_a_refund_gives_back_as_lots_what_was_paid_from_expiring_credits(
    service_api: Api, make_user: MakeUser
) -> None:
    """Else a provider could turn a buyer's promotional credits into permanent ones: fulfil, then
    refund."""
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    later = soon + dt.timedelta(days=1)
    for amount, expires in (("4", soon), ("6", later)):
        promo = service_api.rpc(
            "grant_credits", user_id=alice.id, amount=amount, reason="promo", expires_at=expires.isoformat()
        )
        assert promo.status_code == 200, promo.text
    # 15 paid: the 10 expiring credits (soonest first), then 5 of the 10 bought.
    order = placed(alice, (list_product(provider, price="15")["id"], 1))
    assert provider.api.rpc("fulfil_order", order_id=order["id"]).status_code == 200

    def expiring_and_not() -> tuple[dict[dt.datetime, Decimal], Decimal]:
        """What Alice's lots hold by expiry, and her credits that never expire."""
        account = body(alice.api.get("/credit_accounts"))[0]
        by_expiry: dict[dt.datetime, Decimal] = {}
        for lot in body(alice.api.get("/credit_lots", remaining="gt.0")):
            expires = dt.datetime.fromisoformat(lot["expires_at"])
            by_expiry[expires] = by_expiry.get(expires, D(0)) + D(str(lot["remaining"]))
        return by_expiry, D(str(account["balance"])) - D(str(account["expiring"]))

    assert expiring_and_not() == ({}, D("5"))
    # The refund undoes the spending: the latest expiry comes back first.
    refunded = provider.api.rpc("refund_order", order_id=order["id"], reason="part", amount="4")
    assert refunded.status_code == 200, refunded.text
    assert expiring_and_not() == ({later: D("4")}, D("5"))
    rest = provider.api.rpc("refund_order", order_id=order["id"], reason="rest")
    assert rest.status_code == 200, rest.text
    assert expiring_and_not() == ({soon: D("4"), later: D("6")}, D("10"))
    audit_is_clean(service_api)


def test_refund_before_fulfilment_is_refused(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "20")
    order = placed(alice, (list_product(provider)["id"], 1))
    failure(provider.api.rpc("refund_order", order_id=order["id"], reason="x"), 409, "invalid_transition")


def test_same_idempotency_key_same_order(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "20")
    product = list_product(provider, price="1")
    first = placed(alice, (product["id"], 2), key="basket-1")
    second = placed(alice, (product["id"], 1), (product["id"], 1.0), key="basket-1")
    assert second == first and account(alice) == (D("18"), D("2"))
    failure(place(alice, (product["id"], 3), key="basket-1"), 409, "duplicate_reference")
    other = placed(buyer(service_api, make_user, "5"), (product["id"], 2), key="basket-1")
    assert other["id"] != first["id"]


def test_bad_orders_hold_nothing(service_api: Api, make_user: MakeUser) -> None:
    farmer, app_provider = make_user("farmer"), make_user("app_provider")
    alice = buyer(service_api, make_user, "10")
    product, app = list_product(farmer, price="4"), list_product(app_provider, category="app", price="1")
    for quantity in (0, -1, 1.5, "2", None, 10001):
        reply = alice.api.rpc("place_order", items=[{"product_id": product["id"], "quantity": quantity}])
        failure(reply, 400, "invalid_quantity")
    failure(alice.api.rpc("place_order", items=[]), 400, "invalid_argument")
    failure(alice.api.rpc("place_order", items={"product_id": product["id"]}), 400, "invalid_argument")
    failure(alice.api.rpc("place_order", items=[{"product_id": "x", "quantity": 1}]), 400, "invalid_argument")
    failure(place(alice, (str(uuid.uuid4()), 1)), 404, "product_not_found")
    failure(place(alice, (product["id"], 3)), 409, "insufficient_credits")
    failure(place(alice, (product["id"], 1), (app["id"], 1)), 400, "mixed_providers")
    failure(place(farmer, (product["id"], 1)), 400, "own_product")
    assert farmer.api.patch("/products", {"active": False}, id=f"eq.{product['id']}").status_code == 200
    failure(place(alice, (product["id"], 1)), 409, "product_inactive")
    assert account(alice) == (D("10"), D(0))
    assert body(alice.api.get("/orders")) == []
    audit_is_clean(service_api)


def test_capacity_counts_open_orders(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "100")
    # One buyer takes the whole capacity here; the bound on a buyer's pending share of it is
    # tests/security/test_sellers.py's.
    with setting(service_api, "marketplace_config", "max_pending_capacity_percent", "100"):
        node = list_product(provider, category="node", price="1", capacity=2)
        first = placed(alice, (node["id"], 2))
        failure(place(alice, (node["id"], 1)), 409, "capacity_exceeded")
        assert alice.api.rpc("cancel_order", order_id=first["id"]).status_code == 200
        second = placed(alice, (node["id"], 1))
        assert service_api.rpc("fulfil_order", order_id=second["id"]).status_code == 200
        placed(alice, (node["id"], 1))
        failure(place(alice, (node["id"], 1)), 409, "capacity_exceeded")
        assert provider.api.rpc("refund_order", order_id=second["id"], reason="x").status_code == 200
        placed(alice, (node["id"], 1))
        # A capacity set later counts the orders already open.
        unlimited = list_product(provider, price="1")
        placed(alice, (unlimited["id"], 3))
        limited = body(provider.api.patch("/products", {"capacity": 4}, id=f"eq.{unlimited['id']}"))[0]
        assert limited["units_in_use"] == 3
        failure(place(alice, (unlimited["id"], 2)), 409, "capacity_exceeded")
        audit_is_clean(service_api)


def test_expired_holds_are_released_by_the_service(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    product = list_product(provider, price="1")
    old, fresh = placed(alice, (product["id"], 2)), placed(alice, (product["id"], 3))
    db.execute(
        "update public.orders set created_at = now() - interval '25 hours' where id = %s", (old["id"],)
    )
    assert alice.api.rpc("release_expired_holds").status_code in (401, 403)
    released = body(service_api.rpc("release_expired_holds"))
    assert released["orders_released"] >= 1
    assert body(alice.api.get("/orders", id=f"eq.{old['id']}", select="status"))[0]["status"] == "cancelled"
    assert body(alice.api.get("/orders", id=f"eq.{fresh['id']}", select="status"))[0]["status"] == "pending"
    assert account(alice) == (D("7"), D("3"))
    trail = body(alice.api.get("/order_status_history", order_id=f"eq.{old['id']}", order="id"))
    assert (trail[-1]["reason"], trail[-1]["changed_role"]) == ("hold expired", "service_role")
    failure(service_api.rpc("release_expired_holds", as_of="2999-01-01T00:00:00Z"), 400, "invalid_argument")
    audit_is_clean(service_api)


def test_audit_reports_broken_orders(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "20")
    node = list_product(provider, category="node", price="2", capacity=5)
    pending, paid = placed(alice, (node["id"], 1)), placed(alice, (node["id"], 2))
    assert provider.api.rpc("fulfil_order", order_id=paid["id"]).status_code == 200
    audit_is_clean(service_api)
    with db.transaction(force_rollback=True):
        # Credits held behind the ledger's back, an order whose hold vanished, a capture that
        # paid too much, a capacity miscounted.
        db.execute("update public.credit_accounts set held = held + 1 where user_id = %s", (alice.id,))
        db.execute("update public.orders set held_amount = 0 where id = %s", (pending["id"],))
        db.execute(
            "insert into mycelium_private.transfers (kind, from_system, to_system, amount, reference) "
            "values ('platform_fee', 'holds', 'platform_revenue', 1, %s)",
            (paid["id"],),
        )
        db.execute("update public.products set units_in_use = 1 where id = %s", (node["id"],))
        found = {(check, subject) for check, subject, _ in db.execute("select * from public.audit_ledger()")}
    assert ("holds_equal_held", "holds") in found
    assert ("held_equals_open_orders", alice.id) in found
    assert ("order_held_amount", pending["id"]) in found
    assert ("order_transfers", paid["id"]) in found
    assert ("units_in_use", node["id"]) in found
    audit_is_clean(service_api)
