"""Who sees and moves which subscription, through PostgREST as the buyer, the provider, another
user, an admin and anon; the events' append-only ledger; the audit catching a period charged twice.
(The manifest's refusals of every other role: tests/security/test_privileges.py.)"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.support import Api, User, body, denied
from tests.support.marketplace import D, MakeUser, account, audit_is_clean, buyer, failure, list_product
from tests.support.subscriptions import charge, events, periods, start, stop

TABLES = ["subscriptions", "subscription_periods", "subscription_events"]
AUDIT = "select check_name, subject from mycelium_private.audit_subscriptions()"


def running(service_api: Api, make_user: MakeUser) -> tuple[User, User, dict[str, Any]]:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "20")
    return provider, alice, start(alice, list_product(provider, price="2", unit="hour")["id"], quantity=2)


@pytest.mark.parametrize("table", TABLES)
def test_anon_reads_no_subscriptions(
    anon_api: Api, service_api: Api, make_user: MakeUser, table: str
) -> None:
    running(service_api, make_user)
    reply = anon_api.get(f"/{table}")
    assert denied(reply) or body(reply) == [], reply.text


def test_anon_starts_stops_and_charges_nothing(anon_api: Api, service_api: Api, make_user: MakeUser) -> None:
    _, alice, started = running(service_api, make_user)
    product_id = started["product_id"]
    assert denied(anon_api.rpc("start_subscription", product_id=product_id))
    assert denied(anon_api.rpc("stop_subscription", subscription_id=started["id"]))
    assert denied(anon_api.rpc("charge_due_subscriptions"))
    assert denied(anon_api.rpc("subscription_burn_rate"))
    assert account(alice) == (D("16"), D("4"))


def test_buyer_and_provider_see_the_subscription_strangers_nothing(
    service_api: Api, make_user: MakeUser
) -> None:
    provider, alice, started = running(service_api, make_user)
    for party in (alice, provider):
        assert [s["id"] for s in body(party.api.get("/subscriptions"))] == [started["id"]]
        assert [p["seq"] for p in periods(party.api, started["id"])] == [1]
        assert events(party.api, started["id"]) == ["started"]
    stranger = make_user("farmer")
    for table in TABLES:
        assert body(stranger.api.get(f"/{table}")) == []
    admin = make_user("admin")
    assert [s["id"] for s in body(admin.api.get("/subscriptions", id=f"eq.{started['id']}"))] == [
        started["id"]
    ]
    assert events(admin.api, started["id"]) == ["started"]


def test_no_one_else_stops_or_charges_a_subscription(service_api: Api, make_user: MakeUser) -> None:
    provider, alice, started = running(service_api, make_user)
    stranger = buyer(service_api, make_user, "5")
    failure(
        stranger.api.rpc("stop_subscription", subscription_id=started["id"]), 404, "subscription_not_found"
    )
    # An admin sees it, but stopping is the parties' and the service's.
    failure(
        make_user("admin").api.rpc("stop_subscription", subscription_id=started["id"]), 403, "not_authorized"
    )
    for user in (alice, provider):
        assert denied(user.api.rpc("charge_due_subscriptions"))
    # Rows are written only by the functions.
    assert denied(alice.api.patch("/subscriptions", {"status": "stopped"}, id=f"eq.{started['id']}"))
    assert denied(
        provider.api.post("/subscription_events", {"subscription_id": started["id"], "event": "stopped"})
    )
    assert body(alice.api.get("/subscriptions", id=f"eq.{started['id']}"))[0]["status"] == "active"
    # The service stops it, as the provisioning service does when a workload is gone.
    assert stop(service_api, started["id"])["status"] == "stopped"
    assert events(provider.api, started["id"]) == ["started", "stopped"]
    audit_is_clean(service_api)


def test_events_are_append_only_even_for_the_owner(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    _, _, started = running(service_api, make_user)
    for statement in (
        "update public.subscription_events set event = 'stopped' where subscription_id = %s",
        "delete from public.subscription_events where subscription_id = %s",
    ):
        with pytest.raises(psycopg.Error, match="append_only"):
            db.execute(statement, (started["id"],))


def test_burn_rate_and_runway_of_the_callers_running_subscriptions(
    service_api: Api, make_user: MakeUser
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "1000")
    hourly = start(alice, list_product(provider, price="2", unit="hour")["id"], quantity=3)  # 6 an hour
    monthly = start(alice, list_product(provider, price="730", unit="month")["id"])  # 1 an hour
    rate = body(alice.api.rpc("subscription_burn_rate"))[0]
    # The periods running are paid: what is left lasts 264 / 7 hours.
    assert {k: D(str(v)) for k, v in rate.items()} == {
        "running_subscriptions": D("2"),
        "cost_per_hour": D("7"),
        "balance": D("264"),
        "runway_hours": D("37.71"),
    }
    # The provider's own rate counts what they buy, not what they sell.
    assert body(provider.api.rpc("subscription_burn_rate"))[0]["runway_hours"] is None
    for sub in (hourly, monthly):
        stop(alice.api, sub["id"])
    assert body(alice.api.rpc("subscription_burn_rate"))[0]["cost_per_hour"] == 0


def test_the_audit_finds_a_period_charged_twice(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    _, alice, started = running(service_api, make_user)
    period = started["period"]["id"]
    charge(service_api)
    with db.transaction(force_rollback=True):
        db.execute(
            "select mycelium_private.create_transfer('order_hold', 4, p_from_user => %(buyer)s,"
            " p_to_system => 'holds', p_reference => %(period)s, p_holder => %(buyer)s)",
            {"buyer": alice.id, "period": period},
        )
        found = db.execute(
            "select check_name, subject from mycelium_private.audit_subscriptions()"
        ).fetchall()
        assert ("subscription_period_transfers", period) in found
    with db.transaction(force_rollback=True):
        db.execute(
            "update public.subscriptions set periods = periods + 1 where id = %s",
            (started["id"],),
        )
        found = db.execute(
            "select check_name, subject from mycelium_private.audit_subscriptions()"
        ).fetchall()
        assert ("subscription_periods", started["id"]) in found
    stop(alice.api, started["id"])
    audit_is_clean(service_api)
