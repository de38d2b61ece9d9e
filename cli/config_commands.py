"""`mycelium config`: the credit configuration, the platform fee and the bounds on what one buyer
holds pending, from `marketplace.config` and the environment, compared with what the database
holds, and pushed through the admin functions.

The file is plain `key = value` lines with `#` comments; the environment overrides it. Every
value is checked before anything is applied, and an error names its line (or variable).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from cli.common import JsonOption, ServiceKeyOption, UrlOption, reported, service_client
from cli.errors import UsageError
from cli.output import emit_json, say, table
from mycelium_client import MyceliumClient

DEFAULT_FILE = Path("marketplace.config")

FileOption = Annotated[
    Path,
    typer.Option(
        "--file",
        envvar="MYCELIUM_CONFIG_FILE",
        help="The `key = value` configuration file (it may be absent).",
    ),
]


def _positive(text: str) -> Decimal:
    number = _number(text)
    if number <= 0:
        raise ValueError(f"must be greater than zero, not {text}")
    return number


def _percent(text: str) -> Decimal:
    number = _number(text)
    if not 0 <= number <= 100:
        raise ValueError(f"must be a percentage from 0 to 100, not {text}")
    return number


def _share(text: str) -> Decimal:
    number = _number(text)
    if not 0 < number <= 100:
        raise ValueError(f"must be a percentage above 0 and at most 100, not {text}")
    return number


def _count(text: str) -> Decimal:
    number = _number(text)
    if number != number.to_integral_value() or not 1 <= number <= 10000:
        raise ValueError(f"must be a whole number from 1 to 10000, not {text}")
    return number


def _number(text: str) -> Decimal:
    try:
        number = Decimal(text)
    except ArithmeticError:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    return number


def _text(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


@dataclass(frozen=True)
class Key:
    name: str
    env: str
    parse: Callable[[str], Decimal | str]
    marketplace: bool = False  # in the marketplace configuration, not the credit configuration


KEYS: dict[str, Key] = {
    key.name: key
    for key in (
        Key("tfc_to_usd_rate", "TFC_USD_RATE", _positive),
        Key("credit_currency_code", "MYCELIUM_CREDIT_CODE", _text),
        Key("credit_display_name", "MYCELIUM_CREDIT_NAME", _text),
        Key("credit_symbol", "MYCELIUM_CREDIT_SYMBOL", _text),
        Key("platform_fee_percent", "MYCELIUM_PLATFORM_FEE_PERCENT", _percent, marketplace=True),
        Key("max_pending_orders", "MYCELIUM_MAX_PENDING_ORDERS", _count, marketplace=True),
        Key(
            "max_pending_capacity_percent", "MYCELIUM_MAX_PENDING_CAPACITY_PERCENT", _share, marketplace=True
        ),
    )
}


@dataclass(frozen=True)
class Setting:
    key: str
    value: Decimal | str
    origin: str  # "marketplace.config line 3", "env TFC_USD_RATE", "argument"


def parse_value(key: str, text: str, origin: str) -> Setting:
    if key not in KEYS:
        raise UsageError(f"{origin}: unknown key {key!r} (known: {', '.join(KEYS)})")
    try:
        return Setting(key, KEYS[key].parse(text.strip()), origin)
    except ValueError as problem:
        raise UsageError(f"{origin}: {key} {problem}") from None


def key_values(path: Path) -> Iterator[tuple[int, str, str]]:
    """`(line number, key, value)` for each `key = value` line of a file (`#` starts a comment)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        key, equals, value = content.partition("=")
        if not equals:
            raise UsageError(f"{path} line {number}: expected `key = value`, got {content!r}")
        yield number, key.strip(), value.strip()


def read_file(path: Path) -> dict[str, Setting]:
    """The settings of a configuration file; an absent file has none."""
    if not path.is_file():
        return {}
    return {key: parse_value(key, value, f"{path} line {number}") for number, key, value in key_values(path)}


def read_env(environ: Mapping[str, str]) -> dict[str, Setting]:
    return {
        key.name: parse_value(key.name, environ[key.env], f"env {key.env}")
        for key in KEYS.values()
        if environ.get(key.env)
    }


def database_values(client: MyceliumClient) -> dict[str, Decimal | str]:
    """Each key's value in the database: the field of the same name of its configuration."""
    credit, marketplace = client.credits.config(refresh=True), client.marketplace.config()
    return {key.name: getattr(marketplace if key.marketplace else credit, key.name) for key in KEYS.values()}


@dataclass(frozen=True)
class Change:
    key: str
    old: Decimal | str | None
    new: Decimal | str
    origin: str


def changes(wanted: Mapping[str, Setting], held: Mapping[str, Decimal | str]) -> list[Change]:
    """What differs (numbers compared by value: 1.0 is 1)."""
    return [
        Change(key, held.get(key), setting.value, setting.origin)
        for key, setting in wanted.items()
        if held.get(key) != setting.value
    ]


def apply_changes(client: MyceliumClient, found: list[Change]) -> None:
    """The credit settings in one call, then the marketplace's in another (each all or none;
    every value was checked before either)."""
    new = {c.key: c.new for c in found}

    def text(key: str) -> str | None:
        return None if key not in new else str(new[key])

    if any(not KEYS[key].marketplace for key in new):
        client.admin.set_credit_config(
            tfc_to_usd_rate=new.get("tfc_to_usd_rate"),
            credit_currency_code=text("credit_currency_code"),
            credit_display_name=text("credit_display_name"),
            credit_symbol=text("credit_symbol"),
        )
    if any(KEYS[key].marketplace for key in new):
        client.admin.set_marketplace_config(
            platform_fee_percent=new.get("platform_fee_percent"),
            max_pending_orders=None if "max_pending_orders" not in new else int(new["max_pending_orders"]),
            max_pending_capacity_percent=new.get("max_pending_capacity_percent"),
        )


def _show_changes(found: list[Change], as_json: bool) -> None:
    if as_json:
        emit_json({"changed": [vars(c) for c in found]})
    elif found:
        table("Applied", ["key", "was", "now", "from"], [(c.key, c.old, c.new, c.origin) for c in found])
    else:
        say("Nothing to change: the database already holds this configuration.")


app = typer.Typer(help="Show, apply and set the credit and marketplace configuration.")


@app.command()
@reported
def show(
    file: FileOption = DEFAULT_FILE,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare the configuration in the database, file and environment.

    What the database holds, what the file and the environment say, and what `apply` would change.

    Example: mycelium config show --file /etc/mycelium/marketplace.config
    """
    from_file, from_env = read_file(file), read_env(os.environ)
    wanted = {**from_file, **from_env}
    with service_client(url, service_key) as client:
        held = database_values(client)
    differing = {c.key for c in changes(wanted, held)}
    rows = [
        {
            "key": key,
            "database": held.get(key),
            "file": from_file[key].value if key in from_file else None,
            "env": from_env[key].value if key in from_env else None,
            "differs": key in differing,
        }
        for key in KEYS
    ]
    if as_json:
        emit_json(rows)
        return
    table(
        f"Configuration (file {file}{'' if file.is_file() else ', absent'})",
        ["key", "database", "file", "env", "to apply"],
        [
            (row["key"], row["database"], row["file"], row["env"], "yes" if row["differs"] else "")
            for row in rows
        ],
    )


@app.command()
@reported
def apply(
    file: FileOption = DEFAULT_FILE,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Push the file's and the environment's values to the database.

    The environment overrides the file. Prints the change; running it again changes nothing.

    Example: mycelium config apply --file /etc/mycelium/marketplace.config

    Example: TFC_USD_RATE=1.25 mycelium config apply
    """
    wanted = {**read_file(file), **read_env(os.environ)}
    if not wanted:
        raise UsageError(f"nothing to apply: {file} is absent and no MYCELIUM_*/TFC_USD_RATE variable is set")
    with service_client(url, service_key) as client:
        found = changes(wanted, database_values(client))
        apply_changes(client, found)
    _show_changes(found, as_json)


@app.command("set")
@reported
def set_value(
    key: Annotated[str, typer.Argument(help=f"One of {', '.join(KEYS)}.")],
    value: Annotated[str, typer.Argument(help="The new value.")],
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set one configuration value in the database.

    Example: mycelium config set credit_symbol T
    """
    setting = parse_value(key, value, "argument")
    with service_client(url, service_key) as client:
        found = changes({key: setting}, database_values(client))
        apply_changes(client, found)
    _show_changes(found, as_json)
