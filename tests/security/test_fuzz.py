"""Hostile input everywhere (issue 18): every table, view and RPC that PostgREST's own OpenAPI
description lists for a role is fuzzed through the gateway as that role would reach it, as anon,
as a buyer with credits and an order, as another user aiming at the buyer's ids, and with forged
tokens. No answer may be a server error; a rejected call changes nothing (every table's rows
and newest row version are compared around each call); a rejection carries a stable
machine-readable reason, the same one when sent again; and anon and forged tokens change nothing
at all, nor does a forged token get anything but a rejection.

The requests are Hypothesis's, derandomized: the same ones every run, a bounded number an
operation (see `tests/support/fuzz.py` for the values)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from tests.support import Api, User
from tests.support.fuzz import (
    Caller,
    Fuzz,
    Operation,
    anon_caller,
    changed,
    fingerprint,
    fingerprint_query,
    forged_tokens,
    openapi,
    operations,
    user_caller,
)
from tests.support.marketplace import audit_is_clean, buyer, fund, list_product, placed

Conn = psycopg.Connection[TupleRow]
MakeUser = Callable[..., User]
NIL = "00000000-0000-0000-0000-000000000000"


def examples(operation: Operation) -> int:
    """More for the writes, where money moves, than for the reads."""
    if operation.rpc:
        return 8 if operation.method == "POST" else 3
    return 4 if operation.method in ("POST", "PATCH") else 3


@pytest.fixture
def arena(service_api: Api, make_user: MakeUser) -> dict[str, User | str]:
    """A provider with a product, a buyer holding credits and a pending order of it, a stranger."""
    provider = make_user("farmer")
    product = list_product(provider)["id"]
    holder = buyer(service_api, make_user, "100")
    order = placed(holder, (product, 1))["id"]
    return {
        "provider": provider,
        "buyer": holder,
        "stranger": make_user(),
        "product": product,
        "order": order,
    }


@pytest.fixture
def fuzz(stack: LocalStack, db: Conn, arena: dict[str, User | str], service_api: Api) -> Iterator[Fuzz]:
    ids = [value.id if isinstance(value, User) else value for value in arena.values()]
    fuzzer = Fuzz(stack.api_url, db, [*ids, NIL])
    yield fuzzer
    audit_is_clean(service_api)


def test_the_fingerprint_sees_a_committed_change_and_nothing_else(
    db: Conn, service_api: Api, make_user: MakeUser
) -> None:
    query = fingerprint_query(db)
    user = make_user()
    before = fingerprint(db, query)
    assert changed(before, fingerprint(db, query)) == []
    fund(service_api, user, "5")
    assert {"public.credit_accounts", "public.credit_transactions"} <= set(
        changed(before, fingerprint(db, query))
    )


def fuzz_all(fuzz: Fuzz, caller: Caller, found: list[Operation]) -> None:
    try:
        for operation in found:
            fuzz.operation(caller, operation, examples(operation))
    finally:
        caller.close()


def test_anon_fuzz_finds_no_server_error_no_change_and_a_reason_for_every_rejection(
    stack: LocalStack, fuzz: Fuzz
) -> None:
    found = operations(openapi(stack))
    assert {"/rpc/search_products", "/products"} <= {operation.path for operation in found}
    fuzz_all(fuzz, anon_caller(stack), found)
    fuzz.assert_nothing_found()


@pytest.mark.parametrize("who", ["buyer", "stranger"])
def test_a_users_fuzz_finds_no_server_error_no_change_from_a_rejection_and_a_reason_for_every_one(
    who: str, stack: LocalStack, fuzz: Fuzz, arena: dict[str, User | str]
) -> None:
    user = arena[who]
    assert isinstance(user, User)
    found = operations(openapi(stack, user.token))
    assert {"/rpc/transfer_credits", "/rpc/place_order", "/credit_accounts"} <= {o.path for o in found}
    fuzz_all(fuzz, user_caller(who, stack, user.id, user.email), found)
    fuzz.assert_nothing_found()


def test_forged_tokens_are_refused_everywhere_with_a_reason_and_change_nothing(
    stack: LocalStack, fuzz: Fuzz, arena: dict[str, User | str]
) -> None:
    victim = arena["buyer"]
    assert isinstance(victim, User)
    # What a forger would aim at: everything the service role reaches, each operation with one of
    # the tokens in turn.
    found = operations(openapi(stack, stack.service_role_key))
    forged = [
        Caller(f"forged: {trick}", stack.anon_key, [token], owns_nothing=True, forged=True)
        for trick, token in forged_tokens(stack, victim.id).items()
    ]
    try:
        for index, operation in enumerate(found):
            fuzz.operation(forged[index % len(forged)], operation, 2)
    finally:
        for caller in forged:
            caller.close()
    fuzz.assert_nothing_found()
