"""`mycelium products`: an operator takes a product off sale and restores it, against the local
stack; a refusal of the SQL is one line on stderr."""

from __future__ import annotations

import json
from decimal import Decimal

from typer.testing import CliRunner

from cli.dev.stack import LocalStack
from cli.main import app
from tests.support import Api, body
from tests.support.marketplace import MakeUser, list_product


def test_an_operator_takes_a_product_off_sale_and_restores_it(
    stack: LocalStack, anon_api: Api, make_user: MakeUser
) -> None:
    provider = make_user("farmer")
    product = list_product(provider, name="cheap gpu")
    env = stack.env()

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, ["products", *args], env=env)
        return result.exit_code, result.stdout, result.stderr

    code, out, _ = run("take-down", product["id"], "--reason", "fraud report 17", "--json")
    taken = json.loads(out, parse_float=Decimal)
    assert code == 0 and taken["id"] == product["id"] and taken["active"] is False
    assert body(anon_api.get("/products", id=f"eq.{product['id']}")) == []
    reasons = body(provider.api.get("/product_moderation", product_id=f"eq.{product['id']}"))
    assert [(r["active"], r["reason"], r["changed_role"]) for r in reasons] == [
        (False, "fraud report 17", "service_role")
    ]

    code, out, _ = run("restore", product["id"], "--reason", "report cleared")
    assert code == 0 and out.strip() == f"{product['id']} (cheap gpu) is on sale."
    assert len(body(anon_api.get("/products", id=f"eq.{product['id']}"))) == 1

    assert provider.api.patch("/products", {"active": False}, id=f"eq.{product['id']}").status_code == 200
    code, out, err = run("restore", product["id"], "--reason", "x")
    assert (
        code != 0
        and out == ""
        and "taken off sale by its provider" in err
        and len(err.strip().splitlines()) == 1
    )
