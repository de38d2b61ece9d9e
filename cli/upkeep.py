"""`mycelium upkeep`: the periodic jobs, once or on a schedule. Orders pending past their hold's
time to live give their holds back, expired lots leave their balances, and complete days are
rolled up for the platform analytics. Each job is idempotent, so a run that fails half-way, or two
schedulers running at once, do no harm."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from decimal import Decimal
from types import FrameType
from typing import Annotated, Any

import typer

from cli.api import parse_duration
from cli.common import JsonOption, ServiceKeyOption, UrlOption, reported, service_client
from cli.output import emit_json, fail, say, table
from mycelium_client import MyceliumClient, MyceliumError


def run_jobs(client: MyceliumClient) -> dict[str, Any]:
    """One round of every job; what each did."""
    orders, credits = 0, Decimal(0)
    while True:
        released = client.admin.release_expired_holds()
        orders, credits = orders + released.orders_released, credits + released.credits_released
        if not released.more_waiting:
            break
    expired = client.admin.expire_credits()
    days = client.admin.refresh_ledger_rollups()
    return {
        "holds_released": {"orders": orders, "credits": credits},
        "expired": {"lots": expired.lots_expired, "users": expired.users, "credits": expired.credits_expired},
        "days_rolled_up": days,
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


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # `docker stop` and Kubernetes send SIGTERM: stop between rounds as Ctrl-C does.
    raise KeyboardInterrupt


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
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        try:
            while True:
                at = datetime.now(UTC)
                try:
                    done = run_jobs(client)
                except MyceliumError as error:
                    fail(f"upkeep at {at:%H:%M:%S}: {error}")
                    if as_json:
                        emit_json({"at": at.isoformat(), "ok": False, "error": str(error)}, line=True)
                else:
                    if as_json:
                        emit_json({"at": at.isoformat(), "ok": True, **done}, line=True)
                    else:
                        show(client, at, done)
                time.sleep(pause.total_seconds())
        except KeyboardInterrupt:
            if not as_json:
                say("Stopped.")
