"""`mycelium demo`: bring up the local stack and tell the credits' story, printing each step.

Everything goes through `mycelium_client`, the gateway and PostgREST with real keys and user
tokens, exactly as a service or a dashboard would; the business rules that answer are `sql/`.
The database is used directly only where Auth would be (signing users up; the local stack has
no GoTrue) and for the balance feed a trusted dashboard listens to.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import psycopg
import typer

from cli import keys, migrations
from cli.common import DevDirOption, JsonOption, reported
from cli.dev.stack import DEFAULT_DIR, LocalStack
from cli.dev.users import DevUser, create_user
from cli.output import emit_json, progress, say, table
from mycelium_client import BalanceChange, InsufficientCredits, MyceliumClient
from mycelium_client.feeds import BalanceFeed

STARTER_PACKAGE = "Demo starter"  # 50 USD buys 50 credits plus a 5 credit bonus
PROMOTION_SECONDS = 2  # how long the demo's promotional credits last before the expiry sweep


class BalanceWatcher:
    """A dashboard's view: every committed balance change of the demo's users, printed as it
    arrives from the database feed (the local stack has no Realtime server)."""

    def __init__(self, db_url: str, names: dict[uuid.UUID, str], log: Callable[[str], None]) -> None:
        self.feed = BalanceFeed(db_url, user_ids=list(names))
        self.names, self.log = names, log
        self.changes: list[BalanceChange] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-balance-watcher", daemon=True)

    def start(self) -> None:
        self.feed.start()  # listening before the first movement: none is missed
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for change in self.feed.changes(timeout=0.1):
                self.changes.append(change)
                self.log(f"    [cyan]watcher:[/cyan] {self.names[change.user_id]} now holds {change.balance}")

    def stop(self, settle_seconds: float = 0.3) -> None:
        time.sleep(settle_seconds)  # the last notifications are in flight
        self._stop.set()
        self._thread.join()
        self.feed.close()


@reported
def demo(
    directory: DevDirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
    keep_quiet: Annotated[bool, typer.Option("--quiet", help="Print only the final summary.")] = False,
) -> None:
    """Bring up the local stack and show the credits working end to end.

    Example: mycelium demo
    """
    started = time.monotonic()
    log: Callable[[str], None] = (lambda _: None) if (as_json or keep_quiet) else say
    stack = LocalStack(directory)
    stack.up(progress=progress)
    # A stack started before the latest migrations gets them now (a no-op otherwise).
    with migrations.connect(stack.db_url) as conn:
        migrations.push(conn, migrations.discover(stack.sql_dir))

    with (
        MyceliumClient(stack.api_url, stack.anon_key) as public,
        MyceliumClient(stack.api_url, stack.service_role_key) as service,
    ):
        config = service.admin.set_credit_config(
            usd_rate="1", code="TFC", name="ThreeFold Credits", symbol="TFC"
        )
        log(
            f"[bold]1.[/bold] The admin sets the credit configuration: {config.name} ({config.symbol}), "
            f"1 {config.symbol} = {config.usd_rate} USD; anyone can read it."
        )
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
            conn.execute(
                "insert into public.credit_packages (name, description, price_usd, bonus_credits) "
                "values (%s, 'Demo package: a bonus on top', 50, 5) on conflict (name) do nothing",
                (STARTER_PACKAGE,),
            )
            run = uuid.uuid4().hex[:6]
            alice = create_user(conn, f"alice-{run}@demo.test")
            bob = create_user(conn, f"bob-{run}@demo.test")
        starter = next(p for p in public.credits.packages() if p.name == STARTER_PACKAGE)
        log(
            f"    and puts a package on sale: {starter.name}, {starter.price_usd} USD with "
            f"{starter.bonus_credits} bonus credits."
        )
        as_user: dict[uuid.UUID, MyceliumClient] = {
            user.id: public.as_user(keys.access_token(stack.jwt_secret, user.id, email=user.email))
            for user in (alice, bob)
        }
        log(f"[bold]2.[/bold] Two users sign up: {alice.email} and {bob.email} (each gets a credit account).")

        watcher = BalanceWatcher(stack.db_url, {alice.id: "Alice", bob.id: "Bob"}, log)
        watcher.start()
        log("[bold]3.[/bold] A dashboard starts watching their balances (the database feed).")
        try:
            _story(service, public, as_user, alice, bob, starter.id, run, log)
        finally:
            watcher.stop()

        balances = [(user.email, as_user[user.id].credits.balance().balance) for user in (alice, bob)]
        findings = service.admin.audit_ledger()
        audit = "clean" if not findings else "; ".join(str(finding) for finding in findings)
        summary = {
            "balances": {email: str(balance) for email, balance in balances},
            "watched_changes": len(watcher.changes),
            "ledger_audit": audit,
            "seconds": round(time.monotonic() - started, 1),
            "env": stack.env(),
        }
        if as_json:
            emit_json(summary)
            return
        table(
            "Final balances",
            ["user", "balance", "in USD"],
            [
                (email, public.credits.format(balance), f"{public.credits.to_usd(balance):,.2f}")
                for email, balance in balances
            ],
        )
    say(f"Ledger audit: {audit}. Done in {summary['seconds']} s.")
    say("The stack keeps running; its settings (`mycelium dev env`):")
    for key, value in stack.env().items():
        typer.echo(f"{key}={value}")


def _story(
    service: MyceliumClient,
    public: MyceliumClient,
    as_user: dict[uuid.UUID, MyceliumClient],
    alice: DevUser,
    bob: DevUser,
    starter: uuid.UUID,
    run: str,
    log: Callable[[str], None],
) -> None:
    credits = public.credits
    payment = f"demo-payment-{run}"
    service.admin.purchase_credits(alice.id, "100.00", payment)
    replay = service.admin.purchase_credits(alice.id, "100.00", payment)
    log(
        "[bold]4.[/bold] The payment service confirms a 100 USD payment for Alice; retried, it moves "
        f"nothing more (balance: {credits.format(replay.balance_after or 0)})."
    )
    bought = service.admin.purchase_credits(bob.id, "50", f"demo-package-{run}", package_id=starter)
    log(f"[bold]5.[/bold] Bob buys the starter package: 50 USD gives him {credits.format(bought.amount)}.")

    expires = datetime.now(UTC) + timedelta(seconds=PROMOTION_SECONDS)
    service.admin.grant_credits(bob.id, "10", "demo promotion", expires_at=expires)
    log(f"[bold]6.[/bold] The admin grants Bob 10 promotional credits, valid for {PROMOTION_SECONDS} s.")

    as_user[alice.id].credits.transfer(bob.id, "25.5", memo="for the gateway")
    log("[bold]7.[/bold] Alice sends Bob 25.5 credits.")
    try:
        as_user[bob.id].credits.transfer(alice.id, "1000")
    except InsufficientCredits as refused:
        log(f"[bold]8.[/bold] Bob tries to send 1000 he does not have: refused ({refused.reason}).")

    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    swept = service.admin.expire_credits()
    log(
        f"[bold]9.[/bold] The promotion ends; the expiry sweep takes what is left of it: "
        f"{credits.format(swept.credits_expired)} from {swept.users} user(s)."
    )
