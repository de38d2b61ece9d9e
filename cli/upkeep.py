"""`mycelium upkeep`: the periodic jobs, once or on a schedule. Orders pending past their hold's
time to live give their holds back, expired lots leave their balances, and complete days are
rolled up for the platform analytics. Each job is idempotent, so a run that fails half-way, or two
schedulers running at once, do no harm."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import typer

from cli.api import parse_duration
from cli.common import JsonOption, ServiceKeyOption, UrlOption, reported, service_client
from cli.output import emit_json, fail, say, table
from mycelium_client import ExpiryResult, MyceliumClient

# How much each call does: a call must end well inside the API's statement timeout (8 s on
# Supabase); a round calls again while a call did a full batch. (A day of a million movements
# takes about 1.5 s to roll up.)
HOLDS_PER_CALL = 1000
LOTS_PER_CALL = 1000
DAYS_PER_CALL = 1


def release_expired_holds(client: MyceliumClient) -> tuple[int, Decimal]:
    """Every order pending past its hold's time to live, a batch at a time: (orders, credits)."""
    orders, credits = 0, Decimal(0)
    while True:
        released = client.admin.release_expired_holds(max_orders=HOLDS_PER_CALL)
        orders, credits = orders + released.orders_released, credits + released.credits_released
        if released.orders_released < HOLDS_PER_CALL:
            return orders, credits


def expire_credits(client: MyceliumClient, as_of: datetime | None = None) -> ExpiryResult:
    """Every lot expired by `as_of` (default: now), a batch at a time; the totals, as of the last
    batch."""
    total: ExpiryResult | None = None
    while True:
        batch = client.admin.expire_credits(as_of, max_lots=LOTS_PER_CALL)
        total = (
            batch
            if total is None
            else batch.model_copy(
                update={
                    "lots_expired": total.lots_expired + batch.lots_expired,
                    "users": total.users + batch.users,
                    "credits_expired": total.credits_expired + batch.credits_expired,
                }
            )
        )
        if batch.lots_expired < LOTS_PER_CALL:
            return total


def roll_up_days(client: MyceliumClient) -> int:
    """Every complete day not rolled up yet, a batch at a time: how many."""
    days = 0
    while True:
        added = client.admin.refresh_ledger_rollups(max_days=DAYS_PER_CALL)
        days += added
        if added < DAYS_PER_CALL:
            return days


def run_jobs(client: MyceliumClient) -> dict[str, Any]:
    """One round of every job; what each did."""
    orders, held = release_expired_holds(client)
    expired = expire_credits(client)
    return {
        "holds_released": {"orders": orders, "credits": held},
        "expired": {"lots": expired.lots_expired, "users": expired.users, "credits": expired.credits_expired},
        "days_rolled_up": roll_up_days(client),
    }


def show(client: MyceliumClient, at: datetime, done: dict[str, Any]) -> None:
    released, expired = done["holds_released"], done["expired"]
    table(
        f"Upkeep at {at:%Y-%m-%d %H:%M:%S} UTC",
        ["job", "done"],
        [
            (
                "release expired order holds",
                f"{released['orders']} order(s), {client.credits.format(released['credits'])}",
            ),
            (
                "expire credits",
                f"{expired['lots']} lot(s) of {expired['users']} user(s), "
                f"{client.credits.format(expired['credits'])}",
            ),
            ("roll up complete days", f"{done['days_rolled_up']} day(s)"),
        ],
    )


def stopped_by_sigterm() -> threading.Event:
    """Set by SIGTERM (`docker stop`, Kubernetes): the round under way ends, then the command."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    return stopped


@reported
def upkeep(
    every: Annotated[
        str | None,
        typer.Option(
            "--every",
            metavar="DURATION",
            help="Run again this long after each round (90s, 5m, 1h) until stopped; a failed round "
            "is reported and the next one runs.",
        ),
    ] = None,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the periodic jobs: release order holds past their time to live, expire credits, roll
    up complete days for analytics. Once (a failed job ends the command with an error), or
    --every DURATION.

    Example: mycelium upkeep --every 5m
    """
    pause = None if every is None else parse_duration(every, "--every")
    with service_client(url, service_key) as client:
        if pause is None:
            at = datetime.now(UTC)
            done = run_jobs(client)
            if as_json:
                emit_json({"at": at.isoformat(), "ok": True, **done})
            else:
                show(client, at, done)
            return
        stopped = stopped_by_sigterm()
        try:
            while not stopped.is_set():
                at = datetime.now(UTC)
                try:
                    done = run_jobs(client)
                    if as_json:
                        emit_json({"at": at.isoformat(), "ok": True, **done}, line=True)
                    else:
                        show(client, at, done)
                except Exception as error:  # any failure ends this round only: the next one runs
                    fail(f"upkeep at {at:%H:%M:%S}: {error}")
                    if as_json:
                        emit_json({"at": at.isoformat(), "ok": False, "error": str(error)}, line=True)
                stopped.wait(pause.total_seconds())
        except KeyboardInterrupt:
            pass
        if not as_json:
            say("Stopped.")
