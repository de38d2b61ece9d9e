"""`mycelium legacy import`: the old JSON user files into PostgreSQL, in one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
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
    Source,
    locate,
    read_old_config,
    read_user_files,
)
from cli.output import emit_json, err, say, table
from mycelium_client.amounts import loads

app = typer.Typer(help="Import the old marketplace's JSON files into PostgreSQL.")


def _sql_json(data: Any) -> str:
    """JSON for the import function: Decimals as exact plain strings (no exponent)."""

    def default(value: object) -> object:
        if isinstance(value, Decimal):
            return format(value, "f")
        raise TypeError(f"cannot send {type(value).__name__} as JSON")

    return json.dumps(data, default=default)


def _tfc_to_usd_rate(conn: psycopg.Connection[tuple[object, ...]]) -> Decimal:
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


def _tfp_usd_rate(text: str) -> Decimal:
    rate = parse_decimal(text, "--tfp-usd-rate")
    if rate <= 0:
        raise UsageError(f"--tfp-usd-rate must be greater than zero, not {text}")
    return rate


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


def _write(
    conn: psycopg.Connection[tuple[object, ...]],
    source: Source,
    rate: Decimal,
    reading: Reading,
    settings: dict[str, Decimal | str],
) -> dict[str, Any]:
    """The valid users with their history and products, then, if any of it was new, the old
    settings; the import's totals."""
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
    totals: dict[str, Any] = row[0]  # type: ignore[assignment]
    if totals["run_id"] is not None:  # something new: the old settings come along
        applied = conn.execute(
            "select mycelium_private.apply_legacy_settings(%s::jsonb)", (_sql_json(settings),)
        ).fetchone()
        totals["settings_applied"] = applied[0] if applied else {}
    return totals


@dataclass(frozen=True)
class Imported:
    """What an import did, or would have done: a dry run, or one an invalid file blocked, writes
    nothing."""

    dry_run: bool
    blocked: bool
    files: int
    reading: Reading
    settings: dict[str, Decimal | str]
    totals: dict[str, Any]  # from mycelium_private.legacy_import(); empty when blocked


def _import(
    db_url: str,
    source: Source,
    rate: Decimal,
    *,
    dry_run: bool,
    skip_invalid: bool,
    truncate_excess: bool,
    quiet: bool,
) -> Imported:
    """Every user file read and checked, then the valid ones written in one transaction, unless an
    invalid one blocks the import; a dry run rolls the transaction back."""
    files = sorted(source.user_data.glob("*.json"))
    with migrations.connect(db_url) as conn, conn.transaction() as transaction:
        set_json_loads(loads, conn)  # the import's totals as Decimals, never floats
        converter = Converter(rate, _tfc_to_usd_rate(conn), truncate_excess)
        reading = _read(files, converter, _role_for_category(conn), quiet)
        settings = read_old_config(source.config, rate, reading)
        blocked = bool(reading.problems) and not skip_invalid
        totals = {} if blocked else _write(conn, source, rate, reading, settings)
        if dry_run or blocked:
            raise psycopg.Rollback(transaction)  # nothing at all is written: no rows, no run record
    return Imported(dry_run, blocked, len(files), reading, settings, totals)


def _summary(imported: Imported) -> dict[str, Any]:
    """The import as `--json` prints it."""
    totals, reading = imported.totals, imported.reading
    return {
        "dry_run": imported.dry_run,
        "written": not (imported.dry_run or imported.blocked) and totals.get("run_id") is not None,
        "files": imported.files,
        "valid_files": len(reading.valid),
        "invalid_files": sorted(reading.invalid_files),
        "users": totals.get("users", 0),
        "already_imported": totals.get("already_imported", 0),
        "claimed": totals.get("claimed", 0),
        "not_claimed": totals.get("not_claimed", []),
        "admin_not_granted": totals.get("admin_not_granted", []),
        "credits": str(totals.get("credits", 0)),
        "transactions": totals.get("transactions", 0),
        "products": totals.get("products", 0),
        "settings": imported.settings,
        "settings_applied": totals.get("settings_applied", {}),
        "problems": [vars(finding) for finding in reading.problems],
        "warnings": [vars(finding) for finding in reading.warnings],
        "run_id": totals.get("run_id"),
    }


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


def _print_report(imported: Imported) -> None:
    """The import for people: what is wrong in the files, what came over, what waits for an
    operator."""
    summary = _summary(imported)
    _findings("Problems (invalid files)", imported.reading.problems)
    _findings("Warnings", imported.reading.warnings)
    counts = {
        "files": summary["files"],
        "users": summary["users"],
        "already imported": summary["already_imported"],
        "claimed now": summary["claimed"],
        "credits": summary["credits"],
        "transactions": summary["transactions"],
        "products": summary["products"],
        "problems": len(summary["problems"]),
    }
    title = "Legacy import" + (" (dry run: nothing written)" if imported.dry_run else "")
    table(title, list(counts), [list(counts.values())])
    _not_claimed(summary["not_claimed"])
    _admin_not_granted(summary["admin_not_granted"])
    if imported.blocked:
        say(
            f"[red]Nothing imported:[/red] {len(summary['invalid_files'])} invalid file(s); "
            "fix them, or pass --skip-invalid to import the others."
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
    """Import the old JSON user files in one transaction.

    What comes over: balances as opening credits, history, products, roles, the old settings.

    Users not in Auth yet claim their credits when they sign up and confirm their e-mail address.

    A claim never grants the admin role: grant it (rpc/grant_role) once you know who owns the address.

    Running it again writes nothing.

    Example: mycelium legacy import /srv/old-marketplace --tfp-usd-rate 0.1 --dry-run

    Exit codes:
      0  imported, or nothing new
      1  invalid files (nothing written)
      2  bad arguments, or cannot connect
    """
    rate = _tfp_usd_rate(tfp_usd_rate)
    source = locate(directory)
    imported = _import(
        resolve_db_url(db_url),
        source,
        rate,
        dry_run=dry_run,
        skip_invalid=skip_invalid,
        truncate_excess=truncate_excess,
        quiet=as_json,
    )
    if as_json:
        emit_json(_summary(imported))
    else:
        _print_report(imported)
    if imported.blocked:
        raise typer.Exit(EXIT_FAILED)
