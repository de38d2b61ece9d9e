"""`mycelium legacy import`: the old JSON user files into PostgreSQL, in one transaction."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from psycopg.types.json import set_json_loads
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli import migrations
from cli.api import parse_decimal
from cli.common import DbUrlOption, JsonOption, reported, resolve_db_url
from cli.errors import EXIT_FAILED, UsageError
from cli.legacy.files import (
    CATEGORIES,
    Converter,
    Finding,
    Reading,
    locate,
    read_old_config,
    read_user_files,
)
from cli.output import emit_json, err, say, table
from mycelium_client.amounts import loads

app = typer.Typer(help="The move from the old marketplace's JSON files to PostgreSQL.")


def _sql_json(data: Any) -> str:
    """JSON for the import function: Decimals as exact plain strings (no exponent)."""

    def default(value: object) -> object:
        if isinstance(value, Decimal):
            return format(value, "f")
        raise TypeError(f"cannot send {type(value).__name__} as JSON")

    return json.dumps(data, default=default)


def _credit_usd_rate(conn: psycopg.Connection[tuple[object, ...]]) -> Decimal:
    try:
        row = conn.execute("select tfc_to_usd_rate from public.credit_config where id").fetchone()
    except psycopg.errors.UndefinedTable:  # the migrations never reached this database
        row = None
    if row is None or not isinstance(row[0], Decimal):
        raise UsageError("the database has no credit configuration: push the migrations (mycelium sql push)")
    return row[0]


def _role_for_category(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, str]:
    """The catalogue's rule, from the database: which role may list each category."""
    rows = conn.execute(
        "select c, mycelium_private.role_for_category(c) from unnest(%s::text[]) c", (list(CATEGORIES),)
    ).fetchall()
    return {str(category): str(role) for category, role in rows}


def _read(files: list[Path], converter: Converter, role_for_category: dict[str, str], quiet: bool) -> Reading:
    with Progress(
        TextColumn("reading user files"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=quiet,
    ) as bar:
        task = bar.add_task("read", total=len(files))
        return read_user_files(files, converter, role_for_category, advance=lambda: bar.advance(task))


def _findings(title: str, findings: list[Finding]) -> None:
    if findings:
        table(title, ["file", "field", "what"], [(f.file, f.field, f.message) for f in findings])


def _not_claimed(accounts: list[dict[str, str]]) -> None:
    if accounts:
        table("Not claimed (waiting)", ["e-mail", "why"], [(a["email"], a["reason"]) for a in accounts])


def _admin_not_granted(emails: list[str]) -> None:
    # A claim proves only that someone confirmed the address: admin is for a person to grant.
    if emails:
        say(
            f"[yellow]Admin is never granted automatically:[/yellow] {len(emails)} imported account(s) "
            f"had it in the old files ({', '.join(emails)}). Once you have checked who owns the "
            "address, grant it with rpc/grant_role (as an admin or with the service_role key) or "
            "`select public.grant_role('<user id>', 'admin')` as the database login; claimed accounts "
            "waiting for it are listed in mycelium_private.legacy_admin_roles_waiting."
        )


@app.command("import")
@reported
def import_files(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="The old `user_data` folder, or the folder holding it.")
    ],
    tfp_usd_rate: Annotated[
        str, typer.Option("--tfp-usd-rate", help="How many USD one TFP was worth (converted once, here).")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and count everything; write nothing.")
    ] = False,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Import the valid files and report the invalid ones.")
    ] = False,
    truncate_excess: Annotated[
        bool,
        typer.Option(
            "--truncate-excess",
            help="Cut amounts past 6 decimal places (each one reported) instead of refusing.",
        ),
    ] = False,
    db_url: DbUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import the old users: balances as opening credits, history, products, roles, settings.
    All or nothing; running it again writes nothing. Users not in Auth yet claim their credits
    when they sign up and confirm their e-mail address. The admin role is never granted by a
    claim: grant it yourself (rpc/grant_role) once you know who owns the address.

    Example: mycelium legacy import /srv/old-marketplace --tfp-usd-rate 0.1 --dry-run

    Exit codes: 0 imported (or nothing new), 1 invalid files (nothing written), 2 bad arguments
    or cannot connect.
    """
    rate = parse_decimal(tfp_usd_rate, "--tfp-usd-rate")
    if rate <= 0:
        raise UsageError(f"--tfp-usd-rate must be greater than zero, not {tfp_usd_rate}")
    source = locate(directory)
    files = sorted(source.user_data.glob("*.json"))
    with migrations.connect(resolve_db_url(db_url)) as conn, conn.transaction() as transaction:
        set_json_loads(loads, conn)  # the import's totals as Decimals, never floats
        converter = Converter(rate, _credit_usd_rate(conn), truncate_excess)
        reading = _read(files, converter, _role_for_category(conn), quiet=as_json)
        settings = read_old_config(source.config, rate, reading)
        blocked = bool(reading.problems) and not skip_invalid
        result: dict[str, Any] = {}
        if not blocked:
            row = conn.execute(
                "select mycelium_private.legacy_import(%s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb)",
                (
                    str(source.user_data.resolve()),
                    rate,
                    _sql_json([user.account for user in reading.valid]),
                    _sql_json([row for user in reading.valid for row in user.transactions]),
                    _sql_json([row for user in reading.valid for row in user.products]),
                    _sql_json(settings),
                ),
            ).fetchone()
            assert row is not None
            result = row[0]  # type: ignore[assignment]
            if result["run_id"] is not None:  # something new: the old settings come along
                applied = conn.execute(
                    "select mycelium_private.apply_legacy_settings(%s::jsonb)", (_sql_json(settings),)
                ).fetchone()
                result["settings_applied"] = applied[0] if applied else {}
        if dry_run or blocked:
            raise psycopg.Rollback(transaction)  # nothing at all is written: no rows, no run record
    summary = {
        "dry_run": dry_run,
        "written": not (dry_run or blocked) and result.get("run_id") is not None,
        "files": len(files),
        "valid_files": len(reading.valid),
        "invalid_files": sorted(reading.invalid_files),
        "users": result.get("users", 0),
        "already_imported": result.get("already_imported", 0),
        "claimed_now": result.get("claimed", 0),
        "not_claimed": result.get("not_claimed", []),
        "admin_not_granted": result.get("admin_not_granted", []),
        "credits": str(result.get("credits", 0)),
        "transactions": result.get("transactions", 0),
        "products": result.get("products", 0),
        "settings_kept": settings,
        "settings_applied": result.get("settings_applied", {}),
        "problems": [vars(finding) for finding in reading.problems],
        "warnings": [vars(finding) for finding in reading.warnings],
        "run_id": result.get("run_id"),
    }
    if as_json:
        emit_json(summary)
    else:
        _findings("Problems (invalid files)", reading.problems)
        _findings("Warnings", reading.warnings)
        table(
            "Legacy import" + (" (dry run: nothing written)" if dry_run else ""),
            [
                "files",
                "users",
                "already imported",
                "claimed now",
                "credits",
                "transactions",
                "products",
                "problems",
            ],
            [
                (
                    len(files),
                    summary["users"],
                    summary["already_imported"],
                    summary["claimed_now"],
                    summary["credits"],
                    summary["transactions"],
                    summary["products"],
                    len(reading.problems),
                )
            ],
        )
        _not_claimed(summary["not_claimed"])
        _admin_not_granted(summary["admin_not_granted"])
    if blocked:
        if not as_json:
            say(
                f"[red]Nothing imported:[/red] {len(reading.invalid_files)} invalid file(s); "
                "fix them, or pass --skip-invalid to import the others."
            )
        raise typer.Exit(EXIT_FAILED)
