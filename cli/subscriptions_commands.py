"""`mycelium subscriptions`: pay-as-you-go subscriptions, for operators (through the API with the
service_role key): list and inspect them, stop one, run the batch that charges due periods (the
step `mycelium upkeep` runs), and read or change the grace and suspension periods and the
low-balance threshold."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from cli import upkeep
from cli.api import find_user, parse_duration
from cli.common import JsonOption, ServiceKeyOption, UrlOption, reported, service_client
from cli.errors import UsageError
from cli.output import emit_json, say, table
from mycelium_client import Subscription, SubscriptionConfig, SubscriptionStatus

app = typer.Typer(help="Pay-as-you-go subscriptions: list, stop, charge, configure.")
config_app = typer.Typer(help="The grace and suspension periods, and the low-balance threshold.")
app.add_typer(config_app, name="config")

SubscriptionArgument = Annotated[str, typer.Argument(metavar="SUBSCRIPTION", help="The subscription's id.")]
MAX_LISTED = 10000


def _when(moment: object) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _subscription_rows(subscriptions: list[Subscription]) -> list[tuple[object, ...]]:
    return [
        (s.id, s.buyer_id, s.provider_id, s.product_id, f"{s.quantity} / {s.unit}", s.status, _when(s.due_at))
        for s in subscriptions
    ]


@app.command("list")
@reported
def list_subscriptions(
    user: Annotated[
        str | None, typer.Option("--user", help="The buyer: an e-mail address or a user id.")
    ] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="The provider: an e-mail address or a user id.")
    ] = None,
    statuses: Annotated[
        list[SubscriptionStatus] | None,
        typer.Option("--status", help="Only in this status (repeat for several)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LISTED, help="At most this many, newest first.")] = 50,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List subscriptions, newest first.

    Example: mycelium subscriptions list --user bob@example.com --status grace --status suspended
    """
    with service_client(url, service_key) as client:
        found = client.subscriptions.list(
            buyer_id=None if user is None else find_user(client, user).id,
            provider_id=None if provider is None else find_user(client, provider).id,
            statuses=statuses,
            page_size=min(limit, 1000),
        )
        listed = [subscription for _, subscription in zip(range(limit), found, strict=False)]
    if as_json:
        emit_json([subscription.model_dump(mode="json", exclude={"period"}) for subscription in listed])
        return
    table(
        f"Subscriptions ({len(listed)}{' or more' if len(listed) == limit else ''})",
        ["id", "buyer", "provider", "product", "quantity", "status", "due"],
        _subscription_rows(listed),
    )


@app.command()
@reported
def show(
    subscription: SubscriptionArgument,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a subscription with its periods and its events.

    Example: mycelium subscriptions show 3f2c9a4e-6b1d-4f0a-9c8e-2d7b5a1e0f43
    """
    with service_client(url, service_key) as client:
        found = client.subscriptions.get(subscription)
        periods = client.subscriptions.periods(found.id)
        events = list(client.subscriptions.events(subscription_id=found.id))
        if as_json:
            emit_json(
                {
                    "subscription": found.model_dump(mode="json", exclude={"period"}),
                    "periods": [period.model_dump(mode="json") for period in periods],
                    "events": [event.model_dump(mode="json") for event in events],
                }
            )
            return
        show_amount = client.credits.format
        table(
            f"Subscription {found.id}",
            ["buyer", "provider", "product", "quantity", "status", "paid until", "due", "ended"],
            [
                (
                    found.buyer_id,
                    found.provider_id,
                    found.product_id,
                    f"{found.quantity} / {found.unit}",
                    found.status,
                    _when(found.paid_until),
                    _when(found.due_at),
                    _when(found.ended_at),
                )
            ],
        )
        table(
            "Periods",
            ["#", "kind", "from", "to", "amount", "status", "charged", "fee"],
            [
                (
                    p.seq,
                    p.kind,
                    _when(p.starts_at),
                    _when(p.ends_at),
                    show_amount(p.amount),
                    p.status,
                    "" if p.charged_amount is None else show_amount(p.charged_amount),
                    "" if p.fee_amount is None else show_amount(p.fee_amount),
                )
                for p in periods
            ],
        )
        table(
            "Events",
            ["#", "at", "event", "amount", "by", "reason"],
            [
                (
                    e.id,
                    _when(e.at),
                    e.event,
                    "" if e.amount is None else show_amount(e.amount),
                    e.changed_role,
                    e.reason,
                )
                for e in events
            ],
        )


@app.command()
@reported
def stop(
    subscription: SubscriptionArgument,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop a subscription, charging its running period by the hour.

    The running period is charged by the started hour, the rest of its hold goes back to the buyer.

    Its provider is told (a `stopped` event). Stopping a stopped subscription changes nothing.

    Example: mycelium subscriptions stop 3f2c9a4e-6b1d-4f0a-9c8e-2d7b5a1e0f43
    """
    with service_client(url, service_key) as client:
        stopped = client.subscriptions.stop(subscription)
    if as_json:
        emit_json(stopped.model_dump(mode="json"))
    else:
        say(f"{stopped.id} is {stopped.status} (ended {_when(stopped.ended_at)} UTC).")


@app.command()
@reported
def charge(
    charging_workers: upkeep.ChargingWorkersOption = None,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Charge every period due now: the upkeep step on its own.

    A batch (one transaction) at a time, or N side by side, as `mycelium upkeep` does:
      pays each period that ended and holds the next
      moves unpaid subscriptions on: grace, suspended, cancelled
      resumes those whose balance now covers them

    Example: mycelium subscriptions charge --json
    """
    with service_client(url, service_key) as client:
        done = upkeep.charge_due_subscriptions(client, workers=charging_workers)
        if as_json:
            emit_json(done)
            return
        table(
            "Subscriptions charged",
            ["periods", "credits", *upkeep.SUBSCRIPTION_STEPS],
            [
                (
                    done["periods_charged"],
                    client.credits.format(done["credits_charged"]),
                    *(done[step] for step in upkeep.SUBSCRIPTION_STEPS),
                )
            ],
        )


def _show_config(config: SubscriptionConfig, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "grace_period": _seconds(config.grace_period),
                "suspension_period": _seconds(config.suspension_period),
                "low_balance_hours": config.low_balance_hours,
                "updated_at": config.updated_at.isoformat(),
            }
        )
        return
    table(
        "Subscription configuration",
        ["setting", "value"],
        [
            ("grace_period", config.grace_period),
            ("suspension_period", config.suspension_period),
            ("low_balance_hours", config.low_balance_hours),
            ("updated_at", _when(config.updated_at)),
        ],
    )


def _seconds(duration: timedelta) -> int:
    """A period in JSON: whole seconds (the SQL's intervals here are whole seconds and days)."""
    return int(duration.total_seconds())


@config_app.command("show")
@reported
def show_config(
    url: UrlOption = None, service_key: ServiceKeyOption = None, as_json: JsonOption = False
) -> None:
    """Show the configuration (periods in JSON: seconds).

    Example: mycelium subscriptions config show
    """
    with service_client(url, service_key) as client:
        _show_config(client.subscriptions.config(), as_json)


DurationOption = Annotated[str | None, typer.Option(metavar="DURATION", help="0, 90s, 30m, 24h or 7d.")]


@config_app.command("set")
@reported
def set_config(
    grace_period: DurationOption = None,
    suspension_period: DurationOption = None,
    low_balance_hours: Annotated[
        int | None,
        typer.Option(
            min=0, max=720, help="Warn a buyer whose balance lasts fewer hours than this (0: never)."
        ),
    ] = None,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change the settings given; the others stay as they are.

    Shows the configuration after the change.

    The settings:
      grace_period       how long a subscription the balance cannot renew runs on, unpaid (at most 30 days)
      suspension_period  how long it then stays suspended, resumable by a top-up (at most 90 days)
      low_balance_hours  warn a buyer whose balance lasts fewer hours than this (0: never)

    Example: mycelium subscriptions config set --grace-period 24h --suspension-period 7d
    """
    changes: dict[str, Any] = {
        name: parse_duration(text, f"--{name.replace('_', '-')}", zero=True)
        for name, text in (("grace_period", grace_period), ("suspension_period", suspension_period))
        if text is not None
    }
    if low_balance_hours is not None:
        changes["low_balance_hours"] = low_balance_hours
    if not changes:
        raise UsageError("nothing to change: give --grace-period, --suspension-period or --low-balance-hours")
    with service_client(url, service_key) as client:
        _show_config(client.admin.set_subscription_config(**changes), as_json)
