"""Helpers for the marketplace tests: funded buyers, providers with products, accounts, audits;
and the work the periodic jobs find: abandoned orders, expired promotional credits."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from tests.support import Api, Clients, User, body

MakeUser = Callable[..., User]
D = Decimal
Call = tuple[User, str, dict[str, Any]]


def fund(service_api: Api, user: User, usd: str) -> None:
    reply = service_api.rpc(
        "purchase_credits", user_id=user.id, usd_amount=usd, payment_reference=f"mkt-{uuid.uuid4()}"
    )
    assert reply.status_code == 200, reply.text


def grant_promotion(service_api: Api, user: User, amount: str, expires: datetime) -> None:
    """`amount` promotional credits granted to `user`, in a lot expiring at `expires`."""
    reply = service_api.rpc(
        "grant_credits", user_id=user.id, amount=amount, reason="promo", expires_at=expires.isoformat()
    )
    assert reply.status_code == 200, reply.text


def buyer(service_api: Api, make_user: MakeUser, usd: str = "100") -> User:
    user = make_user()
    fund(service_api, user, usd)
    return user


def list_product(provider: User, **fields: Any) -> dict[str, Any]:
    """A product of `provider`, created through PostgREST as the provider would."""
    row = {
        "category": "compute",
        "name": f"slice {uuid.uuid4().hex[:8]}",
        "description": "4 vCPU slice",
        "price": "2.5",
        "unit": "month",
        "attributes": {"cpu": 4, "memory_gb": 8, "location": "BE"},
        **fields,
    }
    reply = provider.api.post("/products", row)
    assert reply.status_code == 201, reply.text
    product: dict[str, Any] = body(reply)[0]
    return product


def moderation(api: Api, product: dict[str, Any]) -> list[tuple[bool, str, str | None, str]]:
    """(active, reason, changed_by, changed_role) of each take-down and lifting of `product`."""
    rows = body(api.get("/product_moderation", product_id=f"eq.{product['id']}", order="id"))
    return [(r["active"], r["reason"], r["changed_by"], r["changed_role"]) for r in rows]


def account(user: User) -> tuple[Decimal, Decimal]:
    """(balance, held) of a user, as they read it."""
    row = body(user.api.get("/credit_accounts", select="balance,held"))[0]
    return D(str(row["balance"])), D(str(row["held"]))


def place(user: User, *items: tuple[str, float], key: str | None = None) -> Any:
    args: dict[str, Any] = {"items": [{"product_id": p, "quantity": q} for p, q in items]}
    if key is not None:
        args["idempotency_key"] = key
    return user.api.rpc("place_order", **args)


def placed(user: User, *items: tuple[str, float], key: str | None = None) -> dict[str, Any]:
    reply = place(user, *items, key=key)
    assert reply.status_code == 200, reply.text
    order: dict[str, Any] = body(reply)
    return order


def failure(reply: Any, status: int, reason: str) -> None:
    assert reply.status_code == status and body(reply)["code"] == reason, (reply.status_code, reply.text)


def audit_is_clean(service_api: Api) -> None:
    assert body(service_api.rpc("audit_ledger")) == []


@contextmanager
def setting(service_api: Api, table: str, column: str, value: str) -> Iterator[Decimal]:
    """A known value of a global setting (`platform_fee_percent` of marketplace_config,
    `tfc_to_usd_rate` of credit_config) for the block, put back afterwards."""
    before = body(service_api.get(f"/{table}"))[0][column]
    setter = {"marketplace_config": "set_marketplace_config", "credit_config": "set_credit_config"}[table]
    assert service_api.rpc(setter, **{column: value}).status_code == 200
    try:
        yield D(value)
    finally:
        service_api.rpc(setter, **{column: str(before)})


def abandoned_order(service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]) -> User:
    """A buyer of 10 credits whose order of 2 has been pending for longer than the hold's time to live."""
    alice = buyer(service_api, make_user, "10")
    order = placed(alice, (list_product(make_user("farmer"), price="1")["id"], 2))
    db.execute(
        "update public.orders set created_at = now() - interval '25 hours' where id = %s", (order["id"],)
    )
    return alice


def expired_promotion(service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]) -> User:
    """A user holding 3 promotional credits whose lot expired a minute ago."""
    user = make_user()
    grant_promotion(service_api, user, "3", datetime.now(UTC) + timedelta(hours=1))
    db.execute(
        "update public.credit_lots set expires_at = now() - interval '1 minute' where user_id = %s",
        (user.id,),
    )
    return user


def race(stack: LocalStack, calls: list[Call], workers: int = 12) -> list[tuple[int, Any]]:
    """Run every (user, rpc, args) call in parallel, each thread with its own clients."""
    clients = Clients(stack)

    def run(call: Call) -> tuple[int, Any]:
        user, name, args = call
        reply = clients.api(user.token).rpc(name, **args)
        return reply.status_code, body(reply)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(run, calls))
    finally:
        clients.close()
