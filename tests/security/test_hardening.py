"""Smaller holes, closed and held closed through PostgREST: admins' ids in the configurations
anyone reads and in the rows an order's or a product's parties read, display amounts nobody
checked, broadcasts readable on any topic."""

from __future__ import annotations

import uuid
from decimal import Decimal

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.support import Api, body, denied
from tests.support.marketplace import MakeUser, buyer, failure, list_product, moderation, placed
from tests.support.realtime import readable_messages

CONFIG_TABLES = ["credit_config", "marketplace_config", "display_currencies"]


def test_who_changed_a_configuration_is_for_admins_only(
    anon_api: Api, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    admin, user = make_user("admin"), make_user()
    code = "H" + uuid.uuid4().hex[:6].upper()
    # Each setting set to the value it has: a change (and its history) without changing anything.
    credit = body(anon_api.get("/credit_config"))[0]
    market = body(anon_api.get("/marketplace_config"))[0]
    changes = [
        admin.api.rpc("set_credit_config", credit_symbol=credit["credit_symbol"]),
        admin.api.rpc("set_marketplace_config", platform_fee_percent=str(market["platform_fee_percent"])),
        admin.api.rpc("set_display_currency", code=code, symbol="h", usd_per_unit="2"),
    ]
    # An operator writing the row by hand leaves no id behind either.
    db.execute("update public.credit_config set updated_by = %s", (admin.id,))
    try:
        for reply in changes:
            assert reply.status_code == 200, reply.text
            assert body(reply)["updated_by"] is None
        # `select=*` still works for everyone (supabase-py and supabase-js read these that way).
        for api in (anon_api, user.api, admin.api):
            for table in CONFIG_TABLES:
                reply = api.get(f"/{table}", select="*")
                assert reply.status_code == 200, reply.text
                assert [row["updated_by"] for row in body(reply)] == [None] * len(body(reply))

        for table in CONFIG_TABLES:
            history = body(admin.api.get(f"/{table}_history", order="id.desc", limit=10))
            assert admin.id in [entry["changed_by"] for entry in history], table
            assert denied(anon_api.get(f"/{table}_history")), table
            assert body(user.api.get(f"/{table}_history")) == [], table
        added = body(admin.api.get("/display_currencies_history", order="id.desc", limit=1))[0]
        assert added["old_config"] is None and added["new_config"]["code"] == code
    finally:
        removed = admin.api.rpc("set_display_currency", code=code, usd_per_unit=None)
        assert removed.status_code == 200, removed.text
    gone = body(admin.api.get("/display_currencies_history", order="id.desc", limit=1))[0]
    assert (
        gone["changed_by"] == admin.id and gone["old_config"]["code"] == code and gone["new_config"] is None
    )


def test_an_admins_id_is_for_admins_only_in_what_an_orders_and_a_products_parties_read(
    anon_api: Api, service_api: Api, make_user: MakeUser
) -> None:
    """An admin's refund, the status it sets and a take-down name no admin to the buyer or the
    provider; the parties' own ids stay; admins find theirs in staff_actions."""
    provider, admin = make_user("farmer"), make_user("admin")
    alice = buyer(service_api, make_user, "50")
    product = list_product(provider, price="5")
    order = placed(alice, (product["id"], 1))["id"]
    assert provider.api.rpc("fulfil_order", order_id=order).status_code == 200
    for refunder, amount in ((provider, "1"), (admin, None)):  # the admin refunds the rest: refunded
        reply = refunder.api.rpc("refund_order", order_id=order, reason="complaint", amount=amount)
        assert reply.status_code == 200, reply.text
    taken_down = admin.api.rpc("set_product_active", product_id=product["id"], active=False, reason="review")
    assert taken_down.status_code == 200, taken_down.text

    for party in (alice, provider):
        reads = [
            party.api.get("/order_refunds", order_id=f"eq.{order}", order="created_at"),
            party.api.get("/order_status_history", order_id=f"eq.{order}", order="id"),
            party.api.get("/product_moderation", product_id=f"eq.{product['id']}"),
        ]
        assert all(read.status_code == 200 for read in reads)
        assert not any(admin.id in read.text for read in reads)
        refunds, trail, _ = (body(read) for read in reads)
        assert [(r["refunded_by"], r["refunded_role"]) for r in refunds] == [
            (provider.id, "authenticated"),
            (None, "authenticated"),
        ]
        assert [(h["to_status"], h["changed_by"]) for h in trail] == [
            ("pending", alice.id),
            ("fulfilled", provider.id),
            ("partially_refunded", provider.id),
            ("refunded", None),
        ]
    assert moderation(provider.api, product) == [(False, "review", None, "authenticated")]

    actions = body(admin.api.get("/staff_actions", staff_id=f"eq.{admin.id}", order="id"))
    assert [action["table_name"] for action in actions] == [
        "order_refunds",
        "order_status_history",
        "product_moderation",
    ]
    assert body(provider.api.get("/staff_actions")) == [] and body(alice.api.get("/staff_actions")) == []
    assert denied(anon_api.get("/staff_actions"))


@pytest.mark.parametrize("function", ["tfc_to_usd", "display_prices"])
@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity", "-1", "-0.000001", "0.0000001", "1e15"])
def test_display_amounts_follow_the_amount_rules(anon_api: Api, function: str, amount: str) -> None:
    failure(anon_api.rpc(function, amount=amount), 400, "invalid_amount")


def test_display_amounts_still_show_zero_and_valid_amounts(anon_api: Api, make_user: MakeUser) -> None:
    rate = Decimal(str(body(anon_api.get("/credit_config"))[0]["tfc_to_usd_rate"]))
    assert body(anon_api.rpc("tfc_to_usd", amount="0")) == 0
    assert body(anon_api.rpc("tfc_to_usd", amount="2.500000")) == Decimal("2.5") * rate
    prices = body(anon_api.rpc("display_prices", amount="0"))
    assert prices["TFC"] == 0 and prices["USD"] == 0
    assert body(anon_api.rpc("display_prices", amount="12.345678"))["TFC"] == Decimal("12.345678")
    # An empty account is still shown in USD.
    empty = body(make_user().api.get("/credit_balances"))
    assert [(row["balance"], row["balance_usd"]) for row in empty] == [(0, 0)]


def test_a_broadcast_is_read_on_its_own_topic_only(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    owner, other = make_user(), make_user()
    for user in (owner, other):
        bought = service_api.rpc(
            "purchase_credits", user_id=user.id, usd_amount="3", payment_reference=f"h-{uuid.uuid4()}"
        )
        assert bought.status_code == 200, bought.text
    own_topic = f"balance:{owner.id}"

    # Joining their own topic, the owner reads that topic's messages, not every user's.
    # balance-row:<uid> topics are public by design (the watch's fallback ignores their broadcasts);
    # this policy governs the private balance:<uid> topics.
    readable = [m for m in readable_messages(db, owner.id, own_topic) if m[0].startswith("balance:")]
    assert {topic for topic, _, _ in readable} == {own_topic}
    assert [(event, payload["user_id"]) for _, event, payload in readable] == [("balance_changed", owner.id)]
    # Nobody reads another user's topic.
    assert readable_messages(db, owner.id, f"balance:{other.id}") == []
