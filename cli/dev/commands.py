"""`mycelium dev`: the local stack without Docker, and its users and keys."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict
from typing import Annotated

import typer

from cli import keys, migrations
from cli.common import DevDirOption, JsonOption, reported
from cli.dev.stack import DEFAULT_DIR, LocalStack
from cli.dev.users import create_user, find_user
from cli.errors import EXIT_FAILED
from cli.output import emit_json, progress, say, table

app = typer.Typer(
    help="Run a local stack, without Docker, for development and tests.\n\n"
    "PostgreSQL with Supabase's roles and schemas, PostgREST and a gateway."
)
user_app = typer.Typer(help="Users of the local stack, created as Supabase Auth creates them.")
app.add_typer(user_app, name="user")

PortBaseOption = Annotated[
    int | None,
    typer.Option("--port-base", help="Use ports N+1 (gateway) to N+4; default 54320, or the stack's own."),
]


def _print_env(stack: LocalStack, as_json: bool) -> None:
    if as_json:
        emit_json(stack.env())
    else:
        for key, value in stack.env().items():
            typer.echo(f"{key}={value}")


@app.command()
@reported
def up(
    directory: DevDirOption = DEFAULT_DIR, port_base: PortBaseOption = None, as_json: JsonOption = False
) -> None:
    """Start the local stack; a running one is reported, not changed.

    Example: mycelium dev up --port-base 55000 && eval "$(mycelium dev env)"
    """
    stack = LocalStack(directory)
    report = stack.up(port_base=port_base, progress=progress)
    if as_json:
        emit_json(
            {
                "already_running": report.already_running,
                "started": report.started,
                "migrations_applied": report.migrations_applied,
                "env": stack.env(),
            }
        )
        return
    if report.already_running:
        say(f"The local stack in {stack.directory} is already running at {stack.api_url}; nothing changed.")
    else:
        say(
            f"The local stack is up at {stack.api_url} (started: {', '.join(report.started) or 'nothing'}; "
            f"{len(report.migrations_applied)} migration(s) applied)."
        )
    say("Its settings (also `mycelium dev env`):")
    _print_env(stack, as_json=False)


@app.command()
@reported
def env(directory: DevDirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Print the stack's settings as KEY=value lines.

    Example: eval "$(mycelium dev env)"
    """
    _print_env(LocalStack(directory), as_json)


@app.command()
@reported
def status(directory: DevDirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Show which parts of the stack run; exit 1 when any is down.

    Supabase Auth, which the stack does not start, is shown too, but not counted.

    Example: mycelium dev status --json
    """
    stack = LocalStack(directory)
    own = stack.status() if stack.exists() else []
    rows = [*own, stack.auth_status()] if own else []
    if as_json:
        emit_json([asdict(r) for r in rows])
    elif rows:
        table(
            f"Local stack in {stack.directory}",
            ["component", "version", "state", "address"],
            [(r.name, r.version, r.state, r.address) for r in rows],
        )
    else:
        say(f"No local stack in {stack.directory}: `mycelium dev up` creates one.")
    if not own or not all(r.running for r in own):
        raise typer.Exit(EXIT_FAILED)


@app.command()
@reported
def down(directory: DevDirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Stop the stack cleanly; its data stays for the next `up`.

    Example: mycelium dev down
    """
    stopped = LocalStack(directory).down(progress=progress)
    if as_json:
        emit_json({"stopped": stopped})
    else:
        say(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing was running.")


@app.command()
@reported
def reset(
    directory: DevDirOption = DEFAULT_DIR,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Throw the database away and start a fresh one (same ports and keys).

    Example: mycelium dev reset --yes
    """
    if not yes:
        # On stderr, as every prompt: stdout is the command's answer (JSON with --json). Click
        # writes its prompt there with err=True, but a space after it to stdout: that goes too.
        with contextlib.redirect_stdout(sys.stderr):
            typer.confirm("Delete every row of the local database?", abort=True, err=True)
    stack = LocalStack(directory)
    report = stack.reset(progress=progress)
    if as_json:
        emit_json({"migrations_applied": report.migrations_applied})
    else:
        say(f"Fresh database at {stack.api_url}; {len(report.migrations_applied)} migration(s) applied.")


@app.command("keys")
@reported
def keys_command(
    secret: Annotated[str | None, typer.Option(help="Use this JWT secret instead of a fresh one.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Generate a JWT secret and the anon and service_role keys for it.

    The keys are signed with the secret; the lines are for supabase/.env.

    Example: mycelium dev keys >> supabase/.env
    """
    generated = keys.ApiKeys.generate(secret)
    values = {
        "JWT_SECRET": generated.jwt_secret,
        "ANON_KEY": generated.anon_key,
        "SERVICE_ROLE_KEY": generated.service_role_key,
    }
    if as_json:
        emit_json(values)
    else:
        for key, value in values.items():
            typer.echo(f"{key}={value}")


@user_app.command("create")
@reported
def user_create(
    email: str,
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role", help="Marketplace role, repeatable: admin, farmer, app_provider, service_provider."
        ),
    ] = None,
    password: Annotated[str | None, typer.Option(help="Password for signing in through Auth.")] = None,
    unconfirmed: Annotated[bool, typer.Option("--unconfirmed", help="Leave the e-mail unconfirmed.")] = False,
    directory: DevDirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Create a user as Supabase Auth would (its triggers fire).

    Prints the user's id and an access token.

    Example: mycelium dev user create alice@example.com --role farmer
    """
    stack = LocalStack(directory)
    with migrations.connect(stack.superuser_db_url) as conn:
        user = create_user(conn, email, password=password, confirmed=not unconfirmed, roles=role or ())
    token = keys.access_token(stack.jwt_secret, user.id, email=user.email)
    if as_json:
        emit_json({"id": str(user.id), "email": user.email, "access_token": token})
    else:
        typer.echo(f"USER_ID={user.id}")
        typer.echo(f"ACCESS_TOKEN={token}")


@app.command()
@reported
def token(
    user: Annotated[str, typer.Argument(help="User id or e-mail address.")],
    directory: DevDirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Mint a fresh access token (one hour) for a user of the local stack.

    Example: mycelium dev token alice@example.com
    """
    stack = LocalStack(directory)
    with migrations.connect(stack.superuser_db_url) as conn:
        found = find_user(conn, user)
    minted = keys.access_token(stack.jwt_secret, found.id, email=found.email)
    if as_json:
        emit_json({"id": str(found.id), "email": found.email, "access_token": minted})
    else:
        typer.echo(minted)
