"""`mycelium products`: moderation of the catalogue, for operators (through the API with the
service_role key): take a product off sale, and lift such a take-down. Every call is recorded with
its reason in `product_moderation`, which the product's provider reads too."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import JsonOption, ServiceKeyOption, UrlOption, reported, service_client
from cli.output import emit_json, say

app = typer.Typer(help="Moderate the catalogue: take products down, restore them.")

ProductArgument = Annotated[str, typer.Argument(metavar="PRODUCT", help="The product's id.")]
ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why: recorded, and shown to the product's provider.")
]


def _set_active(
    product: str, active: bool, reason: str, url: str | None, service_key: str | None, as_json: bool
) -> None:
    with service_client(url, service_key) as client:
        changed = client.admin.set_product_active(product, active, reason)
    if as_json:
        emit_json(changed.model_dump(mode="json"))
    else:
        say(f"{changed.id} ({changed.name}) is {'on' if changed.active else 'off'} sale.")


@app.command("take-down")
@reported
def take_down(
    product: ProductArgument,
    reason: ReasonOption,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take a product off sale until it is restored.

    Its provider cannot put it back on sale; orders already placed stay as they are.

    Example: mycelium products take-down 3f2c9a4e-6b1d-4f0a-9c8e-2d7b5a1e0f43 --reason "fraud report 17"
    """
    _set_active(product, False, reason, url, service_key, as_json)


@app.command()
@reported
def restore(
    product: ProductArgument,
    reason: ReasonOption,
    url: UrlOption = None,
    service_key: ServiceKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lift a take-down: the product is on sale again.

    Refused while its provider lacks the role, and for what its provider took off sale themselves.

    Example: mycelium products restore 3f2c9a4e-6b1d-4f0a-9c8e-2d7b5a1e0f43 --reason "report cleared"
    """
    _set_active(product, True, reason, url, service_key, as_json)
