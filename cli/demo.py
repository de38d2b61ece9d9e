"""`mycelium demo`: bring up the local stack and walk through the credits, printing each step.

Everything goes through `mycelium_client`, the gateway and PostgREST with real keys and user
tokens, exactly as a service or a dashboard would; the business rules that answer are `sql/`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import psycopg
import typer

from cli import keys, migrations
from cli.common import DevDirOption, JsonOption, reported
from cli.dev.stack import DEFAULT_DIR, LocalStack
from cli.dev.users import create_user
from cli.output import emit_json, progress, say, table
from mycelium_client import InsufficientCredits, MyceliumClient


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
    log = (lambda _: None) if (as_json or keep_quiet) else say
    stack = LocalStack(directory)
    stack.up(progress=progress)
    # A stack started before the latest migrations gets them now (a no-op otherwise).
    with migrations.connect(stack.db_url) as conn:
        migrations.push(conn, migrations.discover(stack.sql_dir))

    with (
        MyceliumClient(stack.api_url, stack.anon_key) as public,
        MyceliumClient(stack.api_url, stack.service_role_key) as service,
    ):
        config = public.credits.config()
        log(
            f"[bold]1.[/bold] Anyone can read the credit configuration: {config.name} "
            f"({config.symbol}), 1 {config.symbol} = {config.usd_rate} USD"
        )

        run = uuid.uuid4().hex[:6]
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
            alice = create_user(conn, f"alice-{run}@demo.test")
            bob = create_user(conn, f"bob-{run}@demo.test")
        as_alice = public.as_user(keys.access_token(stack.jwt_secret, alice.id, email=alice.email))
        as_bob = public.as_user(keys.access_token(stack.jwt_secret, bob.id, email=bob.email))
        log(f"[bold]2.[/bold] Two users sign up: {alice.email} and {bob.email} (each gets a credit account)")

        payment = f"demo-payment-{run}"
        service.admin.purchase_credits(alice.id, "100.00", payment)
        replay = service.admin.purchase_credits(alice.id, "100.00", payment)
        log(
            "[bold]3.[/bold] The payment service confirms a 100 USD payment for Alice; retried, it moves "
            f"nothing more (balance after: {public.credits.format(replay.balance_after or 0)})"
        )

        as_alice.credits.transfer(bob.id, "25.5", memo="for the gateway")
        log("[bold]4.[/bold] Alice sends Bob 25.5 credits")

        try:
            as_bob.credits.transfer(alice.id, "1000")
        except InsufficientCredits as refused:
            log(f"[bold]5.[/bold] Bob tries to send 1000 he does not have: refused ({refused.reason})")

        balances = [
            (who.email, as_user.credits.balance().balance)
            for who, as_user in ((alice, as_alice), (bob, as_bob))
        ]
        findings = service.admin.audit_ledger()
        audit = "clean" if not findings else "; ".join(str(finding) for finding in findings)
        summary = {
            "balances": {email: str(balance) for email, balance in balances},
            "ledger_audit": audit,
            "seconds": round(time.monotonic() - started, 1),
            "env": stack.env(),
        }
        if as_json:
            emit_json(summary)
            return
        table(
            "Balances",
            ["user", "balance", "in USD"],
            [
                (email, public.credits.format(balance), public.credits.to_usd(balance))
                for email, balance in balances
            ],
        )
    say(f"Ledger audit: {audit}. Done in {summary['seconds']} s.")
    say("The stack keeps running; its settings (`mycelium dev env`):")
    for key, value in stack.env().items():
        typer.echo(f"{key}={value}")
