"""`mycelium`: the operators' command."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli import (
    config_commands,
    credits_commands,
    demo,
    health,
    logs,
    metrics,
    products_commands,
    sql_commands,
    subscriptions_commands,
    traces,
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

    def invoke(self, ctx: Any) -> Any:
        """Runs the command inside the root span of its trace, logging as its options say."""
        traces.export_if_asked()
        try:
            with traces.span("mycelium"):
                return super().invoke(ctx)
        finally:
            logs.reset()  # configured by the callback below

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        """Also names the root span after the command line's commands (`mycelium credits grant`)."""
        name, command, rest = super().resolve_command(ctx, args)
        path, group, words = [name], command, rest
        while isinstance(group, TyperGroup) and words and words[0] in group.commands:
            path.append(words[0])
            group, words = group.commands[words[0]], words[1:]
        traces.name_current(" ".join(["mycelium", *(str(part) for part in path)]))
        return name, command, rest


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
    log_format: Annotated[
        logs.LogFormat,
        typer.Option(
            "--log-format",
            envvar="MYCELIUM_LOG_FORMAT",
            help="How logs are written to stderr: text, or json (one object per line).",
        ),
    ] = logs.LogFormat.TEXT,
    log_level: Annotated[
        logs.LogLevel | None,
        typer.Option(
            "--log-level",
            envvar="MYCELIUM_LOG_LEVEL",
            help="The least severe logs written: info has every money operation, retry and job. "
            "Default: info for json logs; none for text, where the command's output says it all.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Operate Mycelium, the TFC credits and marketplace backend on self-hosted Supabase."""
    show_tracebacks.set(debug)
    logs.configure(log_format, log_level)


if __name__ == "__main__":
    app()
