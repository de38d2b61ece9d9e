"""`mycelium sql`: push the migrations in `sql/` to a Supabase database, and inspect them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import migrations
from cli.common import DbUrlOption, JsonOption, reported, resolve_db_url
from cli.errors import EXIT_DRIFT
from cli.output import emit_json, progress, say, table

app = typer.Typer(help="Push the migrations, see which are applied, start a new one.")

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Migrations folder; else MYCELIUM_SQL_DIR, ./sql, or the bundled one."),
]


@app.command()
@reported
def push(
    db_url: DbUrlOption = None,
    directory: DirOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be applied; apply nothing.")
    ] = False,
    lock_timeout: Annotated[
        # At least 1: PostgreSQL would read 0 as "wait for ever" and refuse a negative timeout.
        int, typer.Option(min=1, help="Seconds to wait for another push to finish.")
    ] = migrations.DEFAULT_LOCK_TIMEOUT_SECONDS,
    as_json: JsonOption = False,
) -> None:
    """Apply every pending migration in one transaction, or none.

    Example: mycelium sql push --db-url postgresql://postgres:secret@db:5432/postgres

    Exit codes:
      0  applied, or nothing to do
      1  a migration failed (all rolled back)
      2  cannot connect, or bad arguments
      3  drift (an applied file was changed)
    """
    files = migrations.discover(migrations.resolve_sql_dir(directory))
    with migrations.connect(resolve_db_url(db_url)) as conn:
        if not as_json:
            progress(f"checking {len(files)} migration files against the database")
        result = migrations.push(conn, files, dry_run=dry_run, lock_timeout_seconds=lock_timeout)
    if as_json:
        emit_json(
            {
                "dry_run": result.dry_run,
                "applied": [f.file_name for f in result.applied],
                "already_applied": result.already_applied,
            }
        )
        return
    if not result.applied:
        say(f"Nothing to do: all {result.already_applied} migrations are applied.")
        return
    verb = "Would apply" if result.dry_run else "Applied"
    for file in result.applied:
        say(f"  {file.file_name}")
    say(f"{verb} {len(result.applied)} migration(s); {result.already_applied} were already applied.")


@app.command()
@reported
def status(db_url: DbUrlOption = None, directory: DirOption = None, as_json: JsonOption = False) -> None:
    """List the applied, pending, drifted and missing migrations.

    Exits 3 when any drifted (an applied file was changed).

    Example: mycelium sql status --json
    """
    files = migrations.discover(migrations.resolve_sql_dir(directory))
    with migrations.connect(resolve_db_url(db_url)) as conn:
        rows = migrations.status(conn, files)
    if as_json:
        emit_json([{"version": r.version, "name": r.name, "state": r.state.value} for r in rows])
    else:
        table("Migrations", ["version", "name", "state"], [(r.version, r.name, r.state.value) for r in rows])
    if any(r.state is migrations.State.DRIFTED for r in rows):
        raise typer.Exit(EXIT_DRIFT)


@app.command()
@reported
def new(
    name: Annotated[str, typer.Argument(help="lowercase_with_underscores")],
    directory: DirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start the next migration file from the template.

    Its comments carry the checklist: security definer, search_path, caller check, revoke, grant.

    Example: mycelium sql new order_notes
    """
    path = migrations.new_migration(migrations.resolve_sql_dir(directory), name)
    if as_json:
        emit_json({"path": str(path)})
    else:
        say(f"Created {path}")
