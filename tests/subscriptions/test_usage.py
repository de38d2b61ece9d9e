"""Metered usage through PostgREST: reported by the provider or the service with idempotency keys,
priced at the product's usage price, charged once at the period's end; owed when credits run out."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from tests.support import Api, User, body, denied
from tests.support.marketplace import D, MakeUser, account, audit_is_clean, buyer, failure, list_product
from tests.support.subscriptions import backdate, charge, charge_all_due, periods, start, stop, subscription

PRICES = {"usage_prices": {"egress_gb": "0.05", "ipv4": "1"}}


def report(api: Api, subscription_id: str, unit: str, quantity: str, key: str | None = None) -> Any:
    return api.rpc(
        "report_usage",
        subscription_id=subscription_id,
        unit=unit,
        quantity=quantity,
        idempotency_key=key or f"use-{uuid.uuid4()}",
    )


def metered(service_api: Api, make_user: MakeUser, usd: str) -> tuple[User, User, dict[str, Any]]:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, usd)
    product = list_product(provider, price="1", unit="hour", attributes={"location": "BE", **PRICES})
    return provider, alice, start(alice, product["id"])


def test_usage_is_reported_once_per_key_and_charged_at_the_periods_end(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    charge_all_due(service_api)
    provider, alice, started = metered(service_api, make_user, "10")
    first = report(provider.api, started["id"], "egress_gb", "10.5", key="egress-1")
    assert first.status_code == 200, first.text
    assert D(str(body(first)["unit_price"])) == D("0.05")
    # A retry returns the same report; the same key for other usage is refused.
    assert (
        body(report(provider.api, started["id"], "egress_gb", "10.5", key="egress-1"))["id"]
        == body(first)["id"]
    )
    failure(
        report(provider.api, started["id"], "egress_gb", "11", key="egress-1"), 409, "duplicate_reference"
    )
    assert report(service_api, started["id"], "ipv4", "1").status_code == 200  # the provisioning service
    assert account(alice) == (D("9"), D("1"))  # nothing charged before the period ends

    backdate(db, started["id"], "1 hour")
    charge(service_api)
    rows = periods(alice.api, started["id"])
    assert [(r["seq"], r["kind"], r["status"], D(str(r["amount"]))) for r in rows] == [
        (1, "period", "charged", D("1")),
        (2, "usage", "charged", D("1.525")),  # 10.5 * 0.05 + 1 * 1
        (3, "period", "held", D("1")),
    ]
    reports = body(alice.api.get("/subscription_usage", subscription_id=f"eq.{started['id']}"))
    assert {r["charge_id"] for r in reports} == {rows[1]["id"]}
    assert account(alice) == (D("6.475"), D("1"))
    # Charged once: the next batch finds nothing more to charge.
    charge(service_api)
    assert len(periods(alice.api, started["id"])) == 3
    stop(alice.api, started["id"])
    audit_is_clean(service_api)


def test_only_the_provider_or_the_service_reports_known_units_of_running_subscriptions(
    anon_api: Api, service_api: Api, make_user: MakeUser
) -> None:
    provider, alice, started = metered(service_api, make_user, "10")
    failure(report(alice.api, started["id"], "egress_gb", "1"), 403, "not_authorized")
    failure(report(make_user("farmer").api, started["id"], "egress_gb", "1"), 404, "subscription_not_found")
    assert denied(report(anon_api, started["id"], "egress_gb", "1"))
    failure(report(provider.api, started["id"], "gpu_hours", "1"), 400, "unknown_usage_unit")
    failure(report(provider.api, started["id"], "egress_gb", "0.0000001"), 400, "invalid_amount")
    failure(report(provider.api, started["id"], "egress_gb", "-1"), 400, "invalid_amount")
    assert body(make_user("farmer").api.get("/subscription_usage")) == []
    stop(alice.api, started["id"])
    failure(report(provider.api, started["id"], "egress_gb", "1"), 409, "invalid_transition")
    assert body(alice.api.get("/subscription_usage", subscription_id=f"eq.{started['id']}")) == []
    audit_is_clean(service_api)


def test_usage_the_balance_cannot_pay_is_owed_then_settled_as_far_as_it_goes(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    charge_all_due(service_api)
    provider, alice, started = metered(service_api, make_user, "1")
    assert report(provider.api, started["id"], "ipv4", "3").status_code == 200
    backdate(db, started["id"], "1 hour")
    assert charge(service_api)["grace"] >= 1  # 3 credits of usage owed, none left
    assert subscription(alice.api, started["id"])["status"] == "grace"
    service_api.rpc(
        "purchase_credits", user_id=alice.id, usd_amount="2", payment_reference=f"use-{uuid.uuid4()}"
    )
    stopped = stop(alice.api, started["id"])
    assert stopped["status"] == "stopped"
    usage = periods(alice.api, started["id"])[-1]
    assert (usage["kind"], D(str(usage["charged_amount"]))) == ("usage", D("2"))
    assert account(alice) == (D("0"), D("0"))
    audit_is_clean(service_api)
