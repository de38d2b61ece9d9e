"""What every command shares: turning errors into one readable line, and finding the database."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from cli.errors import CliError, UsageError
from cli.output import fail

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
    """Run a command body so that a CliError becomes one line on stderr and its exit code
    (the traceback only with the top-level `--debug`)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except CliError as error:
            if debug_enabled():
                raise
            fail(str(error))
            raise typer.Exit(error.exit_code) from None

    return wrapper


# Set by the top-level `--debug` for the command being run.
show_tracebacks: ContextVar[bool] = ContextVar("show_tracebacks", default=False)


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
