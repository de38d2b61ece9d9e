"""`mycelium subscriptions`: operators list, inspect and stop subscriptions, charge what is due and
change the configuration, through the client against the session's stack; tables for people,
JSON for scripts, one-line errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow
from typer.testing import CliRunner

from cli.dev.stack import LocalStack
from cli.main import app
from tests.support import Api, User, body
from tests.support.marketplace import MakeUser, account, audit_is_clean, buyer, list_product
from tests.support.subscriptions import charge_all_due, due_subscription, overdue_subscriptions, start


@pytest.fixture
def run(stack: LocalStack) -> Iterator[Any]:
    def invoke(*args: str) -> Any:
        # Wide enough that a table's ids are not folded.
        return CliRunner().invoke(app, ["subscriptions", *args], env={**stack.env(), "COLUMNS": "300"})

    yield invoke


def run_json(run: Any, *args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout, parse_float=Decimal)


def two_subscriptions(service_api: Api, make_user: MakeUser) -> tuple[User, User, list[str]]:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    product = list_product(provider, price="1", unit="hour")["id"]
    return provider, alice, [start(alice, product)["id"] for _ in range(2)]


def test_operators_list_show_and_stop_subscriptions(run: Any, service_api: Api, make_user: MakeUser) -> None:
    provider, alice, (first, second) = two_subscriptions(service_api, make_user)

    listed = run_json(run, "list", "--user", alice.email)
    assert [row["id"] for row in listed] == [second, first]  # newest first
    assert set(listed[0]) >= {"buyer_id", "provider_id", "product_id", "status", "due_at", "paid_until"}
    assert (
        run_json(run, "list", "--provider", provider.id, "--status", "active", "--limit", "1")[0]["id"]
        == second
    )
    assert run_json(run, "list", "--user", alice.id, "--status", "stopped") == []
    shown = run(*["list", "--user", alice.email])
    assert shown.exit_code == 0, shown.stderr
    assert "Subscriptions (2)" in shown.stdout and first in shown.stdout and "1 / hour" in shown.stdout

    stopped = run_json(run, "stop", first)
    assert (
        stopped["id"] == first and stopped["status"] == "stopped" and stopped["period"]["status"] == "charged"
    )
    assert Decimal(stopped["period"]["charged_amount"]) == 1  # the started hour, exact in JSON
    again = run("stop", first)
    assert again.exit_code == 0 and f"{first} is stopped (ended " in again.stdout

    detail = run_json(run, "show", first)
    assert detail["subscription"]["status"] == "stopped"
    assert [(p["seq"], p["kind"], p["status"]) for p in detail["periods"]] == [(1, "period", "charged")]
    assert [e["event"] for e in detail["events"]] == ["started", "stopped"]
    told = run("show", first)
    assert told.exit_code == 0, told.stderr
    for seen in (f"Subscription {first}", "Periods", "Events", "started", "stopped", "1.00 TFC"):
        assert seen in told.stdout
    run("stop", second)
    assert account(alice) == (Decimal(8), Decimal(0))
    audit_is_clean(service_api)


def test_charge_runs_the_upkeep_step_on_its_own(
    run: Any, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    charge_all_due(service_api)
    alice, subscription_id = due_subscription(service_api, make_user, db)
    charged = run_json(run, "charge")
    assert (charged["periods_charged"], charged["renewed"], charged["grace"]) == (2, 2, 0)
    assert Decimal(charged["credits_charged"]) == 2
    assert overdue_subscriptions(service_api) == 0
    shown = run("charge")
    assert shown.exit_code == 0 and "Subscriptions charged" in shown.stdout and "renewed" in shown.stdout
    run("stop", subscription_id)
    assert account(alice)[1] == 0


def test_the_configuration_is_shown_and_changed(run: Any, service_api: Api) -> None:
    before = run_json(run, "config", "show")
    assert set(before) == {"grace_period", "suspension_period", "low_balance_hours", "updated_at"}
    try:
        changed = run_json(run, "config", "set", "--grace-period", "2h", "--low-balance-hours", "12")
        assert (changed["grace_period"], changed["low_balance_hours"]) == (7200, 12)
        assert changed["suspension_period"] == before["suspension_period"]
        assert run_json(run, "config", "set", "--grace-period", "0")["grace_period"] == 0
        assert body(service_api.get("/subscription_config"))[0]["grace_period"] == "00:00:00"
        shown = run("config", "show")
        assert shown.exit_code == 0 and "low_balance_hours" in shown.stdout and "12" in shown.stdout
    finally:
        run(
            "config",
            "set",
            "--grace-period",
            f"{before['grace_period']}s",
            "--suspension-period",
            f"{before['suspension_period']}s",
            "--low-balance-hours",
            str(before["low_balance_hours"]),
        )
    assert run_json(run, "config", "show") | {"updated_at": None} == before | {"updated_at": None}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["config", "set"], 2, "nothing to change"),
        (["config", "set", "--grace-period", "5x"], 2, "--grace-period '5x' is not a duration"),
        (["config", "set", "--grace-period", "31d"], 1, "grace_period must be between 0 and 30 days"),
        (["config", "set", "--low-balance-hours", "721"], 2, "less than or equal to 720"),
        (["show", str(uuid.UUID(int=1))], 1, "no subscription 00000000-0000-0000-0000-000000000001"),
        (["show", "not-an-id"], 1, "invalid input syntax for type uuid"),
        (["stop", str(uuid.UUID(int=1))], 1, "(subscription_not_found, HTTP 404)"),
        (["list", "--user", "nobody-at-all@example.test"], 1, "no user nobody-at-all@example.test"),
        (["list", "--status", "paused"], 2, "paused"),
    ],
)
def test_bad_input_is_one_helpful_line(run: Any, args: list[str], code: int, message: str) -> None:
    result = run(*args)
    assert result.exit_code == code, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert message in said, said
    if code == 1:
        assert said.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
