"""`mycelium`: the operators' command."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import config_commands, credits_commands, demo, health, metrics, sql_commands, upkeep
from cli.common import show_tracebacks
from cli.dev import commands as dev_commands
from cli.legacy import commands as legacy_commands

app = typer.Typer(
    name="mycelium",
    help="Operate Mycelium, the TFC credits and marketplace backend on self-hosted Supabase.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(sql_commands.app, name="sql")
app.add_typer(dev_commands.app, name="dev")
app.add_typer(config_commands.app, name="config")
app.add_typer(credits_commands.app, name="credits")
app.add_typer(legacy_commands.app, name="legacy")
app.add_typer(metrics.app, name="metrics")
app.command("health")(health.health)
app.command("demo")(demo.demo)
app.command("upkeep")(upkeep.upkeep)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Operate Mycelium, the TFC credits and marketplace backend on self-hosted Supabase."""
    show_tracebacks.set(debug)


if __name__ == "__main__":
    app()
