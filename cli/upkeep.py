"""`mycelium upkeep`: the periodic jobs, once or on a schedule. Orders pending past their hold's
time to live give their holds back, expired lots leave their balances, the subscriptions' periods
that ended are paid and the next ones held, and complete days are rolled up for the platform
analytics. Each job is idempotent, so a run that fails half-way, or two
schedulers running at once, do no harm; a job that fails does not keep the others from running."""

from __future__ import annotations

import contextvars
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Annotated, Any

import typer

from cli import traces
from cli.api import parse_duration
from cli.common import JsonOption, ServiceKeyOption, UrlOption, reported, service_client
from cli.errors import EXIT_FAILED
from cli.output import emit_json, fail, progress, say, table
from mycelium_client import ConfigurationError, ExpiryResult, MyceliumClient, ServiceUnavailable
from mycelium_client._observe import event

log = logging.getLogger("mycelium.upkeep")

# How much each call does: a call must end well inside the API's statement timeout (8 s on
# Supabase); a job calls again while a call did a full batch. (A day of a million movements takes
# about 1.5 s to roll up.)
HOLDS_PER_CALL = 1000
LOTS_PER_CALL = 1000
DAYS_PER_CALL = 1
# A subscription's step pays a period and holds the next (or moves an unpaid one on): the SQL's
# default batch.
PERIODS_PER_CALL = 500
# Batches of subscriptions charged side by side (--charging-workers): each keeps one database core
# busy while it runs. One by default: on a two-core database two doubled the charging rate and made
# a balance read's p99 six times slower meanwhile (bench/metering.py); a database with cores to
# spare charges faster with more.
CHARGING_WORKERS = 1
SUBSCRIPTION_STEPS = ("renewed", "grace", "suspended", "resumed", "cancelled")


ChargingWorkersOption = Annotated[
    int | None,
    typer.Option(
        "--charging-workers",
        metavar="N",
        min=1,
        envvar="MYCELIUM_CHARGING_WORKERS",
        help=f"Charge subscriptions in N batches side by side, each on a database core "
        f"(default {CHARGING_WORKERS}; more than the database's cores slows its other work).",
    ),
]


def release_expired_holds(client: MyceliumClient, stopped: threading.Event | None = None) -> dict[str, Any]:
    """Every order pending past its hold's time to live, a batch at a time."""
    orders, credits = 0, Decimal(0)
    while True:
        released = client.admin.release_expired_holds(max_orders=HOLDS_PER_CALL)
        orders, credits = orders + released.orders_released, credits + released.credits_released
        if released.orders_released < HOLDS_PER_CALL or (stopped and stopped.is_set()):
            return {"orders_released": orders, "credits_released": credits}


def expire_credits(
    client: MyceliumClient, as_of: datetime | None = None, stopped: threading.Event | None = None
) -> ExpiryResult:
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
        if batch.lots_expired < LOTS_PER_CALL or (stopped and stopped.is_set()):
            return total


def refresh_ledger_rollups(client: MyceliumClient, stopped: threading.Event | None = None) -> dict[str, Any]:
    """Every complete day not rolled up yet, a batch at a time."""
    days = 0
    while True:
        added = client.admin.refresh_ledger_rollups(max_days=DAYS_PER_CALL)
        days += added
        if added < DAYS_PER_CALL or (stopped and stopped.is_set()):
            return {"days": days}


def charge_due_subscriptions(
    client: MyceliumClient, stopped: threading.Event | None = None, workers: int | None = None
) -> dict[str, Any]:
    """Every subscription period due by now, a batch (one transaction) at a time, by `workers`
    callers side by side (default CHARGING_WORKERS); the batches' totals. Batches at once charge
    different providers (the SQL claims them); a caller stops when its batch says `done`, or
    moved nothing on (the others hold what is left). A run of more than one batch tells its progress
    on stderr after each full one."""
    totals: dict[str, Any] = {"periods_charged": 0, "credits_charged": Decimal(0)}
    totals |= dict.fromkeys(SUBSCRIPTION_STEPS, 0)
    counted = threading.Lock()

    def charge_until_done() -> None:
        while True:
            batch = client.admin.charge_due_subscriptions(max_periods=PERIODS_PER_CALL)
            with counted:
                totals["periods_charged"] += batch.periods_charged
                totals["credits_charged"] += batch.credits_charged
                for step in SUBSCRIPTION_STEPS:
                    totals[step] += getattr(batch, step)
                so_far = totals["periods_charged"], totals["credits_charged"]
            moved = batch.periods_charged or any(getattr(batch, step) for step in SUBSCRIPTION_STEPS)
            if batch.done or not moved or (stopped and stopped.is_set()):
                return
            progress(
                f"subscriptions: {so_far[0]} period(s) charged so far, {client.credits.format(so_far[1])}; "
                "charging the next batch"
            )

    side_by_side(charge_until_done, workers or CHARGING_WORKERS)
    return totals


def side_by_side(work: Callable[[], None], workers: int) -> None:
    """`work` in `workers` threads at once, each in the caller's context (its trace span); the
    first failure is raised once all have ended."""
    if workers == 1:
        work()
        return
    failures: list[BaseException] = []

    def run(context: contextvars.Context) -> None:
        try:
            context.run(work)
        except BaseException as error:  # raised again on the caller's thread
            failures.append(error)

    threads = [threading.Thread(target=run, args=(contextvars.copy_context(),)) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def _expired(client: MyceliumClient, stopped: threading.Event | None) -> dict[str, Any]:
    swept = expire_credits(client, stopped=stopped)
    return swept.model_dump(include={"lots_expired", "users", "credits_expired"})


# Each job by the SQL function it calls (the names rpc/upkeep_backlog reports), in running order:
# holds come back first, with the expiry they had, so that the sweep after them finds them;
# subscriptions renew from what is left after the sweep, and the days rolled up after them
# include their charges.
JOBS: dict[str, Callable[[MyceliumClient, threading.Event | None], dict[str, Any]]] = {
    "release_expired_holds": release_expired_holds,
    "expire_credits": _expired,
    "charge_due_subscriptions": charge_due_subscriptions,
    "refresh_ledger_rollups": refresh_ledger_rollups,
}


def run_round(
    client: MyceliumClient, stopped: threading.Event | None = None, charging_workers: int | None = None
) -> dict[str, Any]:
    """Every job once, each on its own: one that fails (its error is kept) does not stop the
    others. A project that cannot be reached fails the round as a whole (ServiceUnavailable,
    ConfigurationError). A job not run because the command was stopped is left out."""
    jobs: dict[str, Any] = {}
    charging = partial(charge_due_subscriptions, workers=charging_workers)
    for name, job in (JOBS | {"charge_due_subscriptions": charging}).items():
        if stopped and stopped.is_set():
            break
        began = time.perf_counter()
        try:
            with traces.span(f"upkeep {name}"):
                jobs[name] = {"ok": True, **job(client, stopped)}
        except (ServiceUnavailable, ConfigurationError) as error:
            _log_job(name, {"ok": False, "error": _one_line(error)}, began)
            raise
        except Exception as error:  # this job's failure: kept with it, and the next job runs
            jobs[name] = {"ok": False, "error": _one_line(error)}
        _log_job(name, jobs[name], began)
    return {"ok": all(job["ok"] for job in jobs.values()), "jobs": jobs}


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _log_job(name: str, job: dict[str, Any], began: float) -> None:
    """A job's outcome and totals as the event `upkeep_job`: INFO, or ERROR when it failed."""
    totals = {key: value for key, value in job.items() if key != "ok"}
    event(
        log,
        logging.INFO if job["ok"] else logging.ERROR,
        "upkeep_job",
        f"{name}: " + ("ok" if job["ok"] else "failed") + "".join(f", {k} {v}" for k, v in totals.items()),
        job=name,
        outcome="ok" if job["ok"] else "error",
        duration_ms=round((time.perf_counter() - began) * 1000, 1),
        **totals,
    )


def _done(client: MyceliumClient, name: str, job: dict[str, Any]) -> str:
    if not job["ok"]:
        return f"FAILED: {job['error']}"
    if name == "release_expired_holds":
        return f"{job['orders_released']} order(s), {client.credits.format(job['credits_released'])}"
    if name == "expire_credits":
        expired = client.credits.format(job["credits_expired"])
        return f"{job['lots_expired']} lot(s) of {job['users']} user(s), {expired}"
    if name == "charge_due_subscriptions":
        steps = ", ".join(f"{job[step]} {step}" for step in SUBSCRIPTION_STEPS if job[step])
        charged = f"{job['periods_charged']} period(s), {client.credits.format(job['credits_charged'])}"
        return f"{charged} ({steps})" if steps else charged
    return f"{job['days']} day(s)"


TITLES = {
    "release_expired_holds": "release expired order holds",
    "expire_credits": "expire credits",
    "charge_due_subscriptions": "charge due subscriptions",
    "refresh_ledger_rollups": "roll up complete days",
}


def report(
    client: MyceliumClient, at: datetime, result: dict[str, Any], *, as_json: bool, line: bool
) -> None:
    """A round's result on stdout (a table, or JSON); each failure also on stderr."""
    jobs: dict[str, Any] = result.get("jobs", {})
    if as_json:
        emit_json({"at": at.isoformat(), **result}, line=line)
    elif jobs:
        table(
            f"Upkeep at {at:%Y-%m-%d %H:%M:%S} UTC",
            ["job", "done"],
            [(TITLES[name], _done(client, name, job)) for name, job in jobs.items()],
        )
    if "error" in result:
        fail(f"upkeep at {at:%H:%M:%S}: {result['error']}")
    for name, job in jobs.items():
        if not job["ok"]:
            fail(f"{name}: {job['error']}")


def stop_on_sigterm() -> threading.Event:
    """An event that SIGTERM (`docker stop`, Kubernetes) sets; a job ends after the batch under
    way. Set from a new thread: the handler runs on the main thread, which may be inside the
    event's own lock (waiting on it)."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=stopped.set).start())
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
    charging_workers: ChargingWorkersOption = None,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the periodic jobs once, or every DURATION until stopped.

    The jobs:
      release the order holds past their time to live
      expire credits
      charge the subscriptions' periods that ended, hold the next ones
      roll up complete days for the analytics

    Run once, it exits 1 if a job failed. With --every, SIGTERM ends the round after its current batch.

    Example: mycelium upkeep --every 5m
    """
    pause = None if every is None else parse_duration(every, "--every")
    with service_client(url, service_key) as client:
        if pause is None:
            at = datetime.now(UTC)
            result = run_round(client, charging_workers=charging_workers)
            report(client, at, result, as_json=as_json, line=False)
            if not result["ok"]:
                raise typer.Exit(EXIT_FAILED)
            return
        stopped = stop_on_sigterm()
        try:
            while not stopped.is_set():
                at = datetime.now(UTC)
                try:
                    # Each round a trace of its own: a span is sent when it ends.
                    with traces.span("mycelium upkeep round", new_trace=True):
                        result = run_round(client, stopped, charging_workers)
                except Exception as error:  # the project unreachable: this round fails, the next runs
                    result = {"ok": False, "error": " ".join(str(error).split())}
                try:
                    report(client, at, result, as_json=as_json, line=True)
                except Exception as error:  # the credit format could not be read for the table
                    fail(f"upkeep at {at:%H:%M:%S}: {error}")
                stopped.wait(pause.total_seconds())
        except KeyboardInterrupt:
            pass
        if not as_json:
            say("Stopped.")
