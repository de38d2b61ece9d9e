"""What every command shares: turning errors into one readable line, and finding the database."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from cli.errors import EXIT_FAILED, EXIT_USAGE, CliError, UsageError
from cli.output import fail
from mycelium_client import ConfigurationError, MyceliumClient, MyceliumError, ServiceUnavailable

P = ParamSpec("P")
R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
DbUrlOption = Annotated[
    str | None,
    typer.Option(
        "--db-url", help="PostgreSQL URL; else MYCELIUM_DB_URL, DATABASE_URL, or the local stack's."
    ),
]
DevDirOption = Annotated[
    Path,
    typer.Option("--dir", envvar="MYCELIUM_DEV_DIR", help="The local stack's folder."),
]


def reported(function: Callable[P, R]) -> Callable[P, R]:
    """Run a command body so that a CliError, or an error of the client (a refusal by the SQL,
    an unreachable stack), becomes one line on stderr and its exit code (the traceback only with
    the top-level `--debug`)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except (CliError, MyceliumError) as error:
            if debug_enabled():
                raise
            fail(str(error))
            raise typer.Exit(_exit_code(error)) from None

    return wrapper


# Set by the top-level `--debug` for the command being run.
show_tracebacks: ContextVar[bool] = ContextVar("show_tracebacks", default=False)


def _exit_code(error: CliError | MyceliumError) -> int:
    if isinstance(error, CliError):
        return error.exit_code
    # Connection and configuration problems are the operator's to fix: usage, like a bad flag.
    return EXIT_USAGE if isinstance(error, ConfigurationError | ServiceUnavailable) else EXIT_FAILED


def debug_enabled() -> bool:
    return show_tracebacks.get() or os.environ.get("MYCELIUM_DEBUG") == "1"


def resolve_db_url(option: str | None) -> str:
    """`--db-url`, else MYCELIUM_DB_URL, else DATABASE_URL, else the running local stack's."""
    for candidate in (option, os.environ.get("MYCELIUM_DB_URL"), os.environ.get("DATABASE_URL")):
        if candidate:
            return candidate
    from cli.dev.stack import LocalStack, default_directory

    stack = LocalStack(default_directory())
    if stack.exists():
        return stack.db_url
    raise UsageError("no database given: pass --db-url, or set MYCELIUM_DB_URL or DATABASE_URL")


UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The project's URL (the gateway); else SUPABASE_URL, or the local stack's."),
]
ServiceKeyOption = Annotated[
    str | None,
    typer.Option(
        "--service-key", help="The service_role key; else SUPABASE_SERVICE_ROLE_KEY, or the local stack's."
    ),
]


@dataclass(frozen=True)
class ApiSettings:
    """Where the operator's commands reach the project, with the trusted service_role key."""

    url: str
    service_role_key: str


def resolve_api(url: str | None, service_key: str | None) -> ApiSettings:
    """Each setting from its flag, else the environment, else the running local stack in
    `.mycelium` (`mycelium dev env`): the one place commands find the project."""
    url = url or os.environ.get("SUPABASE_URL")
    service_key = service_key or os.environ.get("SUPABASE_SERVICE_ROLE_KEY")
    if not (url and service_key):
        from cli.dev.stack import LocalStack, default_directory

        stack = LocalStack(default_directory())
        if not stack.exists():
            raise UsageError(
                "no project given: pass --url and --service-key, set SUPABASE_URL and "
                "SUPABASE_SERVICE_ROLE_KEY, or run `mycelium dev up`"
            )
        url, service_key = url or stack.api_url, service_key or stack.service_role_key
    return ApiSettings(url.rstrip("/"), service_key)


def service_client(url: str | None, service_key: str | None) -> MyceliumClient:
    """A `MyceliumClient` acting as the trusted service (operators are trusted)."""
    api = resolve_api(url, service_key)
    return MyceliumClient(api.url, api.service_role_key)
