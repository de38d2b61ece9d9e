"""`mycelium credits`: balances, history, grants, purchases, the expiry sweep, the ledger audit,
analytics and live balance changes, for operators (through the API with the service_role key)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from cli import report as credits_report
from cli import upkeep
from cli.api import find_user, parse_day, parse_decimal, parse_time
from cli.common import (
    DbUrlOption,
    JsonOption,
    ServiceKeyOption,
    UrlOption,
    reported,
    resolve_db_url,
    service_client,
)
from cli.errors import EXIT_FAILED, UsageError
from cli.output import emit_json, out, progress, say, table
from mycelium_client import BalanceChange, CreditPackage, Movement, MyceliumClient
from mycelium_client.feeds import BalanceFeed

app = typer.Typer(help="Credits: balances, grants, purchases, the audit, reports.")

UserArgument = Annotated[str, typer.Argument(metavar="USER", help="An e-mail address or a user id.")]


def _json(model: Any) -> Any:
    """A model as JSON data; pydantic writes Decimals as exact strings."""
    return model.model_dump(mode="json")


@app.command()
@reported
def balance(
    user: UserArgument,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a user's balance, held credits, burn rate and runway.

    The spendable balance (of which expiring), the credits held, and its USD value.

    Burn rate: what the running subscriptions cost an hour (metered usage: of the last 24 hours).

    Runway: the hours the spendable balance lasts at that rate (none while nothing runs).

    Example: mycelium credits balance ada@example.com
    """
    with service_client(url, service_key) as client:
        who = find_user(client, user)
        account = client.credits.balance(who.id)
        in_usd = client.credits.to_usd(account.balance)
        if as_json:
            emit_json({**_json(account), "balance_usd": str(in_usd)})
            return
        burn_rate = "-" if account.burn_rate is None else client.credits.format(account.burn_rate)
        runway = "-" if account.runway_hours is None else f"{account.runway_hours:,} h"
        table(
            f"Balance of {who.email or who.id}",
            ["balance", "of which expiring", "held", "in USD", "burn rate / hour", "runway", "updated"],
            [
                (
                    client.credits.format(account.balance),
                    client.credits.format(account.expiring),
                    client.credits.format(account.held),
                    f"{in_usd:,.2f}",
                    burn_rate,
                    runway,
                    account.updated_at,
                )
            ],
        )


@app.command()
@reported
def history(
    user: UserArgument,
    since: Annotated[
        str | None, typer.Option(help="Only movements at or after this ISO date or time.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many movements, newest first.")] = 50,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a user's movements, newest first.

    Example: mycelium credits history ada@example.com --since 2026-11-01 --limit 20
    """
    not_before = None if since is None else parse_time(since, "--since")
    with service_client(url, service_key) as client:
        who = find_user(client, user)
        movements = client.credits.history(user_id=who.id, page_size=min(limit, 500))
        recent = itertools.takewhile(lambda m: not_before is None or m.created_at >= not_before, movements)
        rows = list(itertools.islice(recent, limit))
        if as_json:
            emit_json([_json(row) for row in rows])
            return
        table(
            f"History of {who.email or who.id}",
            ["when", "kind", "amount", "balance after", "memo", "reference"],
            [
                (row.created_at, row.kind.value, row.amount, row.balance_after, row.memo, row.reference)
                for row in rows
            ],
        )


def _show_movement(movement: Movement, client: MyceliumClient, what: str, as_json: bool) -> None:
    if as_json:
        emit_json(_json(movement))
        return
    after = (
        ""
        if movement.balance_after is None
        else f"; balance now {client.credits.format(movement.balance_after)}"
    )
    say(f"{what} {client.credits.format(movement.amount)} (transfer {movement.transfer_id}){after}")


@app.command()
@reported
def grant(
    user: UserArgument,
    amount: Annotated[str, typer.Argument(help="Credits, a decimal with at most 6 fractional digits.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the ledger's memo).")],
    expires: Annotated[
        str | None, typer.Option(help="When the granted credits expire (ISO date or time; UTC if no zone).")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Grant once per key: a retry with the same key moves nothing.")
    ] = None,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Grant promotional credits, optionally expiring.

    Example: mycelium credits grant ada@example.com 25 --reason "launch bonus" --expires 2027-01-31
    """
    credits = parse_decimal(amount, "AMOUNT")
    expires_at = None if expires is None else parse_time(expires, "--expires")
    with service_client(url, service_key) as client:
        who = find_user(client, user)
        movement = client.admin.grant_credits(
            who.id, credits, reason, expires_at=expires_at, idempotency_key=idempotency_key
        )
        _show_movement(movement, client, f"Granted {who.email or who.id}", as_json)


def _package(packages: list[CreditPackage], wanted: str) -> CreditPackage:
    for package in packages:
        if wanted in (str(package.id), package.name):
            return package
    names = ", ".join(package.name for package in packages) or "none"
    raise UsageError(f"no credit package {wanted!r} on sale (on sale: {names})")


@app.command()
@reported
def purchase(
    user: UserArgument,
    usd: Annotated[str, typer.Option("--usd", help="The USD amount the payment provider confirmed.")],
    payment_ref: Annotated[
        str, typer.Option("--payment-ref", help="The payment's reference: the same one again buys nothing.")
    ],
    package: Annotated[
        str | None, typer.Option(help="A credit package, by name or id (its bonus applies).")
    ] = None,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Credit a confirmed payment, plus the package's bonus.

    The USD amount is converted at the configured rate; the same --payment-ref again buys nothing.

    Example: mycelium credits purchase ada@example.com --usd 100 --payment-ref stripe_pi_123 --package Starter
    """
    usd_amount = parse_decimal(usd, "--usd")
    with service_client(url, service_key) as client:
        who = find_user(client, user)
        package_id = None if package is None else _package(client.credits.packages(), package).id
        movement = client.admin.purchase_credits(who.id, usd_amount, payment_ref, package_id)
        _show_movement(movement, client, f"{who.email or who.id} bought", as_json)


@app.command()
@reported
def expire(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Expire lots that expired by then (default: now).")
    ] = None,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the expiry sweep: expired lots leave their balances.

    Each lot expires once, so running it again is safe.

    Example: mycelium credits expire
    """
    moment = None if as_of is None else parse_time(as_of, "--as-of")
    with service_client(url, service_key) as client:
        result = upkeep.expire_credits(client, moment)
        if as_json:
            emit_json(_json(result))
            return
        say(
            f"Expired {client.credits.format(result.credits_expired)} from {result.lots_expired} lot(s) "
            f"of {result.users} user(s), as of {result.as_of}"
        )


@app.command()
@reported
def audit(url: UrlOption = None, service_key: ServiceKeyOption = None, as_json: JsonOption = False) -> None:
    """Check every ledger invariant; exit 1 and report what is broken.

    Example: mycelium credits audit --json
    """
    with service_client(url, service_key) as client:
        findings = client.admin.audit_ledger()
    if as_json:
        emit_json({"ok": not findings, "findings": [_json(finding) for finding in findings]})
    elif findings:
        table(
            "Ledger audit: broken invariants",
            ["check", "subject", "detail"],
            [(f.check_name, f.subject, f.detail) for f in findings],
        )
    else:
        say("Ledger audit: clean (every invariant holds).")
    if findings:
        raise typer.Exit(EXIT_FAILED)


@app.command()
@reported
def report(
    from_day: Annotated[
        str | None, typer.Option("--from", help="First UTC day (default: 29 days before --to).")
    ] = None,
    to_day: Annotated[str | None, typer.Option("--to", help="Last UTC day (default: today).")] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report with charts here.")
    ] = None,
    top: Annotated[int, typer.Option(min=1, max=1000, help="How many top spenders.")] = 10,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Report the credits analytics: totals, days, top spenders.

    Per day: the credits issued, spent and expired, and the platform's revenue.

    With --html, also a self-contained page with charts (it opens offline).

    Example: mycelium credits report --from 2026-11-01 --to 2026-11-30 --html credits.html
    """
    first, last = parse_day(from_day, "--from"), parse_day(to_day, "--to")
    if first and last and first > last:
        raise UsageError(f"--from {first} is after --to {last}")
    with service_client(url, service_key) as client:
        data = credits_report.collect(client, first, last, top)
    if html is not None:
        try:
            html.write_text(credits_report.render_html(data), encoding="utf-8")
        except OSError as error:
            raise UsageError(f"cannot write {html}: {error.strerror}") from None
    if as_json:
        emit_json(data.as_json())
        return
    credits_report.print_tables(data)
    if html is not None:
        say(f"HTML report written to {html}")


# -- watching ----------------------------------------------------------------------------------
WATCH_COLUMNS = ("when", "user", "balance", "held", "source")
SHOWN_CHANGES = 20


def _row(change: BalanceChange) -> tuple[str, ...]:
    return (
        change.updated_at.isoformat(timespec="seconds"),
        str(change.user_id),
        str(change.balance),
        str(change.held),
        change.source.value,
    )


def _changes(
    user: str | None, db_url: str | None, url: str | None, service_key: str | None
) -> Iterator[BalanceChange]:
    """From the database feed with --db-url (every user, or one), else from Realtime (one user)."""
    if db_url is not None:
        user_id = None
        if user is not None:
            with service_client(url, service_key) as client:
                user_id = find_user(client, user).id
        with BalanceFeed(resolve_db_url(db_url), user_ids=None if user_id is None else [user_id]) as feed:
            progress(f"watching {user or 'every user'} through the database feed (Ctrl-C to stop)")
            yield from feed
        return
    if user is None:
        raise UsageError(
            "Realtime delivers one user's changes: name a USER, or pass --db-url to watch everyone"
        )
    with (
        service_client(url, service_key) as client,
        client.credits.watch(user_id=find_user(client, user).id) as changes,
    ):
        progress(f"watching {user} through Realtime (Ctrl-C to stop)")
        yield from changes


@app.command()
@reported
def watch(
    user: Annotated[
        str | None, typer.Argument(metavar="USER", help="An e-mail address or a user id.")
    ] = None,
    db_url: DbUrlOption = None,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print balance changes as they are committed, until Ctrl-C.

    A user's come through Realtime; with --db-url, everyone's (or a user's) come from the database feed.

    Example: mycelium credits watch ada@example.com
    Example: mycelium credits watch --db-url postgresql://postgres:secret@db:5432/postgres
    """
    shown: deque[tuple[str, ...]] = deque(maxlen=SHOWN_CHANGES)

    def render() -> Table:
        grid = Table(title="Balance changes (Ctrl-C to stop)", title_justify="left")
        for column in WATCH_COLUMNS:
            grid.add_column(column)
        for row in shown:
            grid.add_row(*row)
        return grid

    # A live table on a terminal; one line per change when piped (and JSON lines with --json).
    live: AbstractContextManager[Any] = (
        Live(render(), console=out, auto_refresh=False) if out.is_terminal and not as_json else nullcontext()
    )
    try:
        with live:
            for change in _changes(user, db_url, url, service_key):
                if as_json:
                    emit_json(_json(change), line=True)
                elif isinstance(live, Live):
                    shown.append(_row(change))
                    live.update(render(), refresh=True)
                else:
                    out.print("  ".join(_row(change)), soft_wrap=True)
    except KeyboardInterrupt:
        if not as_json:
            say("Stopped.")
