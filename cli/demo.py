"""`mycelium demo`: bring up the local stack and walk through the credits, printing each step.

Everything goes through the gateway and PostgREST with real keys and user tokens, exactly as a
service or a dashboard would call it; the business rules that answer are the SQL in `sql/`.
"""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Annotated, Any

import httpx
import psycopg
import typer

from cli import keys, migrations
from cli.common import DevDirOption, JsonOption, reported
from cli.dev.stack import DEFAULT_DIR, LocalStack
from cli.dev.users import create_user
from cli.errors import CliError
from cli.output import emit_json, progress, say, table


class _Rest:
    def __init__(self, stack: LocalStack, token: str) -> None:
        self.client = httpx.Client(
            base_url=f"{stack.api_url}/rest/v1",
            headers={"apikey": stack.anon_key, "Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def _result(self, response: httpx.Response) -> Any:
        # parse_float=Decimal: amounts never pass through a binary float.
        data = json.loads(response.text or "null", parse_float=Decimal)
        if response.is_error:
            reason = data.get("code") if isinstance(data, dict) else response.status_code
            message = data.get("message") if isinstance(data, dict) else response.text
            raise CliError(f"{response.request.url.path}: {reason}: {message}")
        return data

    def rpc(self, name: str, **args: object) -> Any:
        body = json.dumps(args, default=str)
        return self._result(
            self.client.post(f"/rpc/{name}", content=body, headers={"Content-Type": "application/json"})
        )

    def get(self, path: str, **params: str) -> Any:
        return self._result(self.client.get(path, params=params))


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
    anon = _Rest(stack, stack.anon_key)
    service = _Rest(stack, stack.service_role_key)

    config = anon.get("/credit_config", select="credit_display_name,credit_symbol,tfc_to_usd_rate")[0]
    log(
        f"[bold]1.[/bold] Anyone can read the credit configuration: {config['credit_display_name']} "
        f"({config['credit_symbol']}), 1 {config['credit_symbol']} = {config['tfc_to_usd_rate']} USD"
    )

    run = uuid.uuid4().hex[:6]
    with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
        alice = create_user(conn, f"alice-{run}@demo.test")
        bob = create_user(conn, f"bob-{run}@demo.test")
    as_alice = _Rest(stack, keys.access_token(stack.jwt_secret, alice.id, email=alice.email))
    as_bob = _Rest(stack, keys.access_token(stack.jwt_secret, bob.id, email=bob.email))
    log(f"[bold]2.[/bold] Two users sign up: {alice.email} and {bob.email} (each gets a credit account)")

    payment = f"demo-payment-{run}"
    service.rpc("purchase_credits", user_id=str(alice.id), usd_amount="100.00", payment_reference=payment)
    again = service.rpc(
        "purchase_credits", user_id=str(alice.id), usd_amount="100.00", payment_reference=payment
    )
    log(
        f"[bold]3.[/bold] The payment service confirms a 100 USD payment for Alice; retried, it moves "
        f"nothing more (balance after: {again['balance_after']})"
    )

    as_alice.rpc(
        "transfer_credits", recipient=str(bob.id), amount="25.5", memo="for the gateway", idempotency_key=run
    )
    log("[bold]4.[/bold] Alice sends Bob 25.5 credits")

    try:
        as_bob.rpc("transfer_credits", recipient=str(alice.id), amount="1000")
    except CliError as refused:
        log(f"[bold]5.[/bold] Bob tries to send 1000 he does not have: refused ({refused})")

    balances = [
        (who.email, as_user.get("/credit_accounts", select="balance")[0]["balance"])
        for who, as_user in ((alice, as_alice), (bob, as_bob))
    ]
    rate = Decimal(str(config["tfc_to_usd_rate"]))
    broken = service.rpc("audit_ledger")
    summary = {
        "balances": {email: str(balance) for email, balance in balances},
        "ledger_audit": broken if broken else "clean",
        "seconds": round(time.monotonic() - started, 1),
        "env": stack.env(),
    }
    if as_json:
        emit_json(summary)
        return
    table(
        "Balances",
        ["user", config["credit_symbol"], "USD"],
        [(email, balance, Decimal(balance) * rate) for email, balance in balances],
    )
    say(f"Ledger audit: {broken if broken else 'clean'}. Done in {summary['seconds']} s.")
    say("The stack keeps running; its settings (`mycelium dev env`):")
    for key, value in stack.env().items():
        typer.echo(f"{key}={value}")
