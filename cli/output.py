"""How commands speak: tables and one-line messages for people, `--json` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)  # exact, never through float
    return str(value)


def emit_json(data: Any, *, line: bool = False) -> None:
    """`data` as indented JSON, or on one line (`line`: JSON lines, for a command that goes on)."""
    sys.stdout.write(json.dumps(data, default=_default, indent=None if line else 2) + "\n")
    sys.stdout.flush()  # a long-running command (metrics serve, credits watch) is read as it goes


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    grid = Table(title=title, title_justify="left")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    out.print(grid)


def say(message: str) -> None:
    out.print(message)


def progress(message: str) -> None:
    """A step of long work, on stderr so that stdout stays clean for `--json`."""
    err.print(f"[dim]…[/dim] {message}")


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)
