"""`mycelium demo`: bring up the local stack and tell the marketplace's story in credits,
printing each step.

Everything goes through `mycelium_client`, the gateway and PostgREST with real keys and user
tokens, exactly as a service or a dashboard would; the business rules that answer are `sql/`.
The database is used directly only where Auth would be (signing users up: the local stack has
no GoTrue), to put the demo's credit package on sale, for the balance feed a trusted dashboard
listens to, and to make the hours of Bob's pay-as-you-go slice pass in an instant
(`cli.dev.clock`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, NamedTuple

import psycopg
import typer

from cli import keys, migrations, upkeep
from cli.common import DevDirOption, JsonOption, reported
from cli.dev.clock import pass_time
from cli.dev.stack import DEFAULT_DIR, LocalStack
from cli.dev.users import create_user
from cli.output import emit_json, progress, say, table
from mycelium_client import (
    Balance,
    BalanceChange,
    InsufficientCredits,
    MyceliumClient,
    SubscriptionEvent,
    SubscriptionStatus,
)
from mycelium_client.feeds import BalanceFeed

STARTER_PACKAGE = "Demo starter"  # 50 USD buys 50 credits plus a 5 credit bonus
PROMOTION_SECONDS = 2  # how long the demo's promotional credits last before the expiry sweep
# Before each line of the story: the watcher prints the changes just committed first.
WATCHER_PAUSE_SECONDS = 0.05
# How long the watcher may take to print the last changes, in flight when the story ends.
WATCHER_CATCH_UP_SECONDS = 10
# Bob's pay-as-you-go slice: its price an hour, and the subscription settings the demo borrows
# (put back afterwards) so that a few simulated hours tell the whole story.
SLICE_PRICE_AN_HOUR = "20"
DEMO_GRACE = timedelta(hours=1)
DEMO_LOW_BALANCE_HOURS = 2
Log = Callable[[str], None]


@dataclass
class Person:
    name: str
    id: uuid.UUID
    email: str
    client: MyceliumClient  # acting as this user, with their access token


def plain(amount: Decimal) -> str:
    """38.000000 as 38, 0.50 as 0.5: a change as the watcher prints it."""
    return f"{amount.normalize():f}"


class AccountState(NamedTuple):
    """What a change notification and a balance read agree on: the row after an update."""

    balance: Decimal
    held: Decimal
    updated_at: datetime

    @classmethod
    def of(cls, account: Balance | BalanceChange) -> AccountState:
        return cls(account.balance, account.held, account.updated_at)


class BalanceWatcher:
    """A dashboard's view: every committed balance change of the demo's users, printed as it
    arrives from the database feed (the local stack has no Realtime server)."""

    def __init__(self, db_url: str, people: list[Person], log: Log) -> None:
        self.people = people
        self.names = {person.id: person.name for person in people}
        self.feed = BalanceFeed(db_url, user_ids=list(self.names))
        self.log = log
        self.changes: list[BalanceChange] = []
        self.seen: dict[uuid.UUID, AccountState] = {}  # each person's account as last printed
        self._printed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-balance-watcher", daemon=True)

    def start(self) -> None:
        self.feed.start()  # listening before the first movement: none is missed
        # Read after listening: someone whose balance never moves has been seen as they are.
        self.seen = {person.id: AccountState.of(person.client.credits.balance()) for person in self.people}
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for change in self.feed.changes(timeout=0.1):
                held = f", {plain(change.held)} held" if change.held else ""
                name = self.names[change.user_id]
                self.log(f"    [cyan]watcher:[/cyan] {name} has {plain(change.balance)}{held}")
                with self._printed:
                    self.changes.append(change)
                    self.seen[change.user_id] = AccountState.of(change)
                    self._printed.notify_all()

    def catch_up(self, final: dict[uuid.UUID, Balance]) -> bool:
        """Wait until the watcher has printed each person's `final` (committed) balance; False
        when WATCHER_CATCH_UP_SECONDS pass first. The same balance may come back (Bob's 80.5
        before and after his promotion): the update time tells the last change from earlier ones."""
        wanted = {user: AccountState.of(balance) for user, balance in final.items()}
        with self._printed:
            return self._printed.wait_for(
                lambda: all(self.seen.get(user) == state for user, state in wanted.items()),
                timeout=WATCHER_CATCH_UP_SECONDS,
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.feed.close()


@reported
def demo(
    directory: DevDirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
    keep_quiet: Annotated[bool, typer.Option("--quiet", help="Print only the final summary.")] = False,
) -> None:
    """Run the marketplace story on the local stack.

    Brings the local stack up if it is not running; it keeps running afterwards.

    Example: mycelium demo
    """
    started = time.monotonic()
    log: Log = (lambda _: None) if (as_json or keep_quiet) else say
    stack = LocalStack(directory)
    stack.up(progress=progress)
    # A stack started before the latest migrations gets them now (a no-op otherwise).
    with migrations.connect(stack.db_url) as conn:
        try:
            migrations.push(conn, migrations.discover(stack.sql_dir))
        except migrations.DriftDetected as drift:
            raise migrations.DriftDetected(
                f"{drift}; this local stack was built from earlier versions of them: "
                "`mycelium dev reset` gives it a fresh database (its data goes)"
            ) from drift

    with (
        MyceliumClient(stack.api_url, stack.anon_key) as public,
        MyceliumClient(stack.api_url, stack.service_role_key) as service,
    ):
        config = service.admin.set_credit_config(
            tfc_to_usd_rate="1",
            credit_currency_code="TFC",
            credit_display_name="ThreeFold Credits",
            credit_symbol="TFC",
        )
        fee = service.admin.set_marketplace_config(platform_fee_percent="5").platform_fee_percent
        log(
            f"[bold]1.[/bold] The admin sets the credit configuration: {config.credit_display_name} "
            f"({config.credit_symbol}), 1 {config.credit_symbol} = {config.tfc_to_usd_rate} USD, "
            f"and the platform fee: {fee}% of every order."
        )
        run = uuid.uuid4().hex[:6]
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
            conn.execute(
                "insert into public.credit_packages (name, description, price_usd, bonus_credits) "
                "values (%s, 'Demo package: a bonus on top', 50, 5) on conflict (name) do nothing",
                (STARTER_PACKAGE,),
            )
            people = [
                _sign_up(conn, stack, public, name, run, roles)
                for name, roles in (
                    ("Alice", ()),
                    ("Bob", ()),
                    ("Fiona", ("farmer",)),
                    ("Paul", ("app_provider",)),
                )
            ]
        log(
            "[bold]2.[/bold] Four people sign up: Alice and Bob buy, Fiona is a farmer, Paul an app provider "
            "(each gets a credit account)."
        )
        watcher = BalanceWatcher(stack.db_url, people, log)
        watcher.start()
        log("[bold]3.[/bold] A dashboard starts watching their balances (the database feed).")
        try:
            slice_events = _story(service, public, *people, run=run, log=log, db_url=stack.superuser_db_url)
            final = {person.id: person.client.credits.balance() for person in people}
            if not watcher.catch_up(final):
                progress(f"the watcher had not seen every final balance after {WATCHER_CATCH_UP_SECONDS} s")
        finally:
            watcher.stop()

        balances = [(person, final[person.id].balance) for person in people]
        revenue = service.admin.credit_summary().platform_revenue
        findings = service.admin.audit_ledger()
        audit = "clean" if not findings else "; ".join(str(finding) for finding in findings)
        summary = {
            "balances": {person.email: str(balance) for person, balance in balances},
            "platform_revenue": str(revenue),
            "watched_changes": len(watcher.changes),
            "watched_balances": {person.email: str(watcher.seen[person.id].balance) for person in people},
            "subscription_events": [event.event.value for event in slice_events],
            "ledger_audit": audit,
            "seconds": round(time.monotonic() - started, 1),
            "env": stack.env(),
        }
        if as_json:
            emit_json(summary)
            return
        table(
            "Final balances",
            ["who", "e-mail", "balance", "in USD"],
            [
                (
                    person.name,
                    person.email,
                    public.credits.format(balance),
                    f"{public.credits.to_usd(balance):,.2f}",
                )
                for person, balance in balances
            ],
        )
    say(f"Platform revenue, all time: {public.credits.format(revenue)}. Ledger audit: {audit}.")
    say(f"Done in {summary['seconds']} s. The stack keeps running; its settings (`mycelium dev env`):")
    for key, value in stack.env().items():
        typer.echo(f"{key}={value}")


def _sign_up(
    conn: psycopg.Connection[tuple[object, ...]],
    stack: LocalStack,
    public: MyceliumClient,
    name: str,
    run: str,
    roles: tuple[str, ...],
) -> Person:
    user = create_user(conn, f"{name.lower()}-{run}@demo.test", roles=roles)
    token = keys.access_token(stack.jwt_secret, user.id, email=user.email)
    return Person(name, user.id, user.email, public.as_user(token))


def _story(
    service: MyceliumClient,
    public: MyceliumClient,
    alice: Person,
    bob: Person,
    fiona: Person,
    paul: Person,
    *,
    run: str,
    log: Log,
    db_url: str,
) -> list[SubscriptionEvent]:
    """Each step is announced, done, and its outcome told; the watcher's lines come in between,
    as the changes are committed. Returns the events of Bob's pay-as-you-go slice."""
    show = public.credits.format
    steps = iter(range(4, 100))

    def step(text: str) -> None:
        time.sleep(WATCHER_PAUSE_SECONDS)
        log(f"[bold]{next(steps)}.[/bold] {text}")

    def outcome(text: str) -> None:
        time.sleep(WATCHER_PAUSE_SECONDS)
        log(f"    → {text}")

    step("Fiona lists a compute slice, Paul a Nextcloud app.")
    slice_ = fiona.client.marketplace.create_product(
        "compute",
        f"Slice {run} 4 vCPU 8 GB",
        "20",
        "month",
        attributes={"cpu": 4, "memory_gb": 8, "location": "BE"},
    )
    nextcloud = paul.client.marketplace.create_product("app", f"Nextcloud {run}", "10", "month")
    outcome(
        f"{slice_.name} at {show(slice_.price)} a month; {nextcloud.name} at {show(nextcloud.price)} a month"
    )

    step("The payment service confirms a 100 USD payment for Alice, and retries it.")
    payment = f"demo-payment-{run}"
    service.admin.purchase_credits(alice.id, "100.00", payment)
    replay = service.admin.purchase_credits(alice.id, "100.00", payment)
    outcome(f"the retry moves nothing: she has {show(replay.balance_after or 0)}")

    starter = next(p for p in public.credits.packages() if p.name == STARTER_PACKAGE)
    step(f"Bob buys the {starter.name} package for {starter.price_usd} USD.")
    bought = service.admin.purchase_credits(
        bob.id, starter.price_usd, f"demo-package-{run}", package_id=starter.id
    )
    outcome(f"{show(bought.amount)}, the bonus included")

    step("Alice searches for a compute slice in BE and orders 2 months of it.")
    found = next(alice.client.marketplace.search(run, category="compute", location="BE"))
    order = alice.client.orders.place({found.id: 2})
    outcome(f"found {found.name} ({show(found.price)}, {found.price_usd} USD); {show(order.total)} held")

    step("Fiona provisions the slice and fulfils the order.")
    captured = fiona.client.orders.fulfil(order.id)
    fee = captured.fee_amount or 0
    outcome(
        f"Fiona earns {show(captured.total - fee)}; the platform's {captured.fee_percent}% fee is {show(fee)}"
    )

    step("Alice sends Bob 25.5 credits.")
    alice.client.credits.transfer(bob.id, "25.5", memo="for the gateway")

    step(f"Bob orders {nextcloud.name}; Paul cannot provision it and fails the order.")
    failed = bob.client.orders.place({nextcloud.id: 1})
    paul.client.orders.fail(failed.id, "no capacity in that region")
    outcome("the hold goes back to Bob")

    step("Bob orders again; Paul fulfils, then refunds it in full.")
    second = bob.client.orders.place({nextcloud.id: 1})
    paul.client.orders.fulfil(second.id)
    refunded = paul.client.orders.refund(second.id, "the instance never came up")
    outcome(f"{show(refunded.refunded_amount)} back to Bob, {show(refunded.fee_refunded)} of it from the fee")

    step(f"The admin grants Bob 10 promotional credits, valid for {PROMOTION_SECONDS} s.")
    expires = datetime.now(UTC) + timedelta(seconds=PROMOTION_SECONDS)
    service.admin.grant_credits(bob.id, "10", "demo promotion", expires_at=expires)

    step("Bob tries to send Alice 1000 credits he does not have.")
    try:
        bob.client.credits.transfer(alice.id, "1000")
    except InsufficientCredits as refused:
        outcome(f"refused ({refused.reason}); nothing moved")

    step("The promotion ends; the expiry sweep runs.")
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    swept = service.admin.expire_credits()
    outcome(f"{show(swept.credits_expired)} expired from {swept.users} user(s)")
    return _pay_as_you_go(service, public, bob, fiona, run=run, step=step, outcome=outcome, db_url=db_url)


def _pay_as_you_go(
    service: MyceliumClient,
    public: MyceliumClient,
    bob: Person,
    fiona: Person,
    *,
    run: str,
    step: Log,
    outcome: Log,
    db_url: str,
) -> list[SubscriptionEvent]:
    """Bob runs an hourly slice until his credits run out: warned, then unpaid (grace), then
    suspended; he tops up, the upkeep resumes it, and he stops it. The hours pass in an instant
    (`pass_time`); the upkeep's batch charges what fell due, as `mycelium upkeep` does."""
    show = public.credits.format
    before = service.subscriptions.config()
    service.admin.set_subscription_config(grace_period=DEMO_GRACE, low_balance_hours=DEMO_LOW_BALANCE_HOURS)
    try:
        step(
            f"Fiona lists an hourly slice; Bob runs it pay-as-you-go, paid while it runs "
            f"(the demo's grace: {DEMO_GRACE.seconds // 3600} hour; a balance is low below "
            f"{DEMO_LOW_BALANCE_HOURS} hours of running costs)."
        )
        hourly = fiona.client.marketplace.create_product(
            "compute", f"Slice {run} hourly", SLICE_PRICE_AN_HOUR, "hour", attributes={"location": "BE"}
        )
        running = bob.client.subscriptions.start(hourly.id)
        outcome(f"{hourly.name} at {show(hourly.price)} an hour; the first hour is held from Bob's balance")
        seen = _provider_events(fiona, after=0)
        last_seen = seen[-1].id

        def an_hour_passes(what: str) -> SubscriptionStatus:
            nonlocal last_seen
            with psycopg.connect(db_url, autocommit=True) as conn:
                pass_time(conn, running.id, timedelta(hours=1))
            upkeep.charge_due_subscriptions(service)
            status = bob.client.subscriptions.get(running.id).status
            new = _provider_events(fiona, after=last_seen)
            if new:
                last_seen = new[-1].id
            told = ", ".join(event.event.value for event in new) or "nothing new"
            outcome(f"{what}: the upkeep charges what is due; Fiona's service reads: {told}")
            return status

        step("Three simulated hours pass.")
        warned = False
        for hour in range(1, 4):
            an_hour_passes(f"hour {hour}")
            warnings = bob.client.subscriptions.low_balance_warnings()
            if warnings and not warned:
                warned = True
                outcome(
                    f"Bob is warned: his {show(warnings[0].balance)} last {warnings[0].runway_hours} hours "
                    f"at {show(warnings[0].cost_per_hour)} an hour"
                )
        step("A fourth hour passes: Bob's balance cannot pay the next one.")
        status = an_hour_passes("hour 4")
        outcome(f"the slice is in {status}: it runs on, unpaid, for the grace hour")
        step("The grace hour passes.")
        status = an_hour_passes("hour 5")
        outcome(f"the slice is {status}: Fiona's service stops the workload")

        starter = next(p for p in public.credits.packages() if p.name == STARTER_PACKAGE)
        step(f"Bob tops up: the {starter.name} package again.")
        service.admin.purchase_credits(bob.id, starter.price_usd, f"demo-top-up-{run}", package_id=starter.id)
        upkeep.charge_due_subscriptions(service)
        back = bob.client.subscriptions.get(running.id)
        outcome(f"charged the unpaid hour, held the next: the slice is {back.status} again")
        step("Bob is done with the slice and stops it.")
        stopped = bob.client.subscriptions.stop(running.id)
        outcome(f"the started hour is charged; the slice is {stopped.status}")
    finally:
        service.admin.set_subscription_config(
            grace_period=before.grace_period, low_balance_hours=before.low_balance_hours
        )
    return list(service.subscriptions.events(subscription_id=running.id))


def _provider_events(provider: Person, after: int) -> list[SubscriptionEvent]:
    """The subscription events a provider's service has not read yet."""
    return list(provider.client.subscriptions.events(provider_id=provider.id, after=after))
