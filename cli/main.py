"""`mycelium`: the operators' command."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from cli import (
    config_commands,
    credits_commands,
    demo,
    health,
    metrics,
    products_commands,
    sql_commands,
    subscriptions_commands,
    upkeep,
)
from cli.common import show_tracebacks
from cli.dev import commands as dev_commands
from cli.legacy import commands as legacy_commands

OPERATE, MIGRATE, DEVELOP = "Operate", "Migrate", "Develop"
PANELS = (OPERATE, MIGRATE, DEVELOP)


class PanelOrder(TyperGroup):
    """Lists the commands panel by panel, operators' first: typer lists every command before
    every group, which would put `demo` (Develop) ahead of `sql` (Migrate)."""

    def list_commands(self, ctx: object) -> list[str]:
        def panel(name: str) -> int:
            return PANELS.index(getattr(self.commands[name], "rich_help_panel", None))

        return sorted(self.commands, key=panel)  # stable: each panel keeps the order of creation


app = typer.Typer(
    name="mycelium",
    cls=PanelOrder,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("health", rich_help_panel=OPERATE)(health.health)
app.command("upkeep", rich_help_panel=OPERATE)(upkeep.upkeep)
app.add_typer(credits_commands.app, name="credits", rich_help_panel=OPERATE)
app.add_typer(config_commands.app, name="config", rich_help_panel=OPERATE)
app.add_typer(products_commands.app, name="products", rich_help_panel=OPERATE)
app.add_typer(subscriptions_commands.app, name="subscriptions", rich_help_panel=OPERATE)
app.add_typer(metrics.app, name="metrics", rich_help_panel=OPERATE)
app.add_typer(sql_commands.app, name="sql", rich_help_panel=MIGRATE)
app.add_typer(legacy_commands.app, name="legacy", rich_help_panel=MIGRATE)
app.command("demo", rich_help_panel=DEVELOP)(demo.demo)
app.add_typer(dev_commands.app, name="dev", rich_help_panel=DEVELOP)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Operate Mycelium, the TFC credits and marketplace backend on self-hosted Supabase."""
    show_tracebacks.set(debug)


if __name__ == "__main__":
    app()
