"""A token outlives what Auth does to its user: banned, soft-deleted and deleted users' tokens,
still unexpired, must read nothing and move nothing (nor may an expired token). Each state is
made the way Supabase Auth makes it in `auth.users` (its admin API's ban sets `banned_until`, a
soft delete `deleted_at`, a hard delete removes the row), then the old token is tried through
PostgREST as its holder would."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx
import psycopg
import pytest
from psycopg.rows import TupleRow

from cli.dev.postgrest import PRE_REQUEST
from cli.dev.stack import LocalStack
from cli.keys import access_token
from tests.support import Api, User, body
from tests.support.deploy import COMPOSE_FILE, K3S_DIR, load_yaml, load_yaml_documents

MakeUser = Callable[..., User]
Conn = psycopg.Connection[TupleRow]

# What Auth writes for each state, keyed by the reason and status the API then answers with.
BLOCKING_STATES = {
    "banned": (
        "update auth.users set banned_until = now() + interval '1 day' where id = %s",
        403,
        "user_banned",
    ),
    "soft-deleted": ("update auth.users set deleted_at = now() where id = %s", 401, "user_not_found"),
    "deleted": ("delete from auth.users where id = %s", 401, "user_not_found"),
}


def transfer(sender: User, recipient: User, amount: str) -> httpx.Response:
    return sender.api.rpc(
        "transfer_credits", recipient=recipient.id, amount=amount, idempotency_key=str(uuid.uuid4())
    )


def funded(service_api: Api, make_user: MakeUser, amount: str = "40") -> User:
    user = make_user()
    reply = service_api.rpc(
        "purchase_credits", user_id=user.id, usd_amount=amount, payment_reference=f"gate-{uuid.uuid4()}"
    )
    assert reply.status_code == 200, reply.text
    return user


def balance_of(db: Conn, user_id: str) -> Decimal:
    row = db.execute("select balance from public.credit_accounts where user_id = %s", (user_id,)).fetchone()
    assert row is not None
    return Decimal(row[0])


@pytest.mark.parametrize("state", list(BLOCKING_STATES))
def test_a_blocked_users_token_reads_nothing_and_moves_nothing(
    state: str, db: Conn, service_api: Api, make_user: MakeUser
) -> None:
    holder, friend = funded(service_api, make_user), make_user()
    assert body(holder.api.get("/credit_accounts"))[0]["balance"] == Decimal("40")  # the token works

    statement, status, reason = BLOCKING_STATES[state]
    db.execute(statement, (holder.id,))

    for response in (
        holder.api.get("/credit_accounts"),
        holder.api.get("/credit_transactions"),
        holder.api.rpc("credit_history"),
        transfer(holder, friend, "5"),
    ):
        assert response.status_code == status, response.text
        assert body(response)["code"] == reason
    assert balance_of(db, holder.id) == Decimal("40")
    assert balance_of(db, friend.id) == Decimal("0")


def test_a_ban_that_has_run_out_blocks_nothing(db: Conn, service_api: Api, make_user: MakeUser) -> None:
    holder, friend = funded(service_api, make_user), make_user()
    db.execute("update auth.users set banned_until = now() - interval '1 minute' where id = %s", (holder.id,))
    reply = transfer(holder, friend, "5")
    assert reply.status_code == 200, reply.text
    assert balance_of(db, friend.id) == Decimal("5")


def test_keys_without_a_user_pass_the_gate(anon_api: Api, service_api: Api) -> None:
    assert anon_api.get("/credit_config").status_code == 200
    assert service_api.rpc("audit_ledger").status_code == 200


def test_a_deleted_user_leaves_the_ledger_balanced(db: Conn, service_api: Api, make_user: MakeUser) -> None:
    """Their account and its history stay (the ledger is append-only); only their identity goes."""
    holder = funded(service_api, make_user)
    db.execute("delete from auth.users where id = %s", (holder.id,))
    assert balance_of(db, holder.id) == Decimal("40")
    assert body(service_api.rpc("audit_ledger")) == []


def test_every_api_role_may_run_the_gate(db: Conn) -> None:
    for role in ("anon", "authenticated", "service_role"):
        allowed = db.execute(
            "select has_function_privilege(%s, 'mycelium_gate.check_caller()', 'execute')", (role,)
        ).fetchone()
        assert allowed == (True,), role


def test_every_deployment_runs_the_gate(stack: LocalStack) -> None:
    """The hook is PostgREST's setting, so each deployment must carry it."""
    local = stack.postgrest.config.read_text()
    assert f'db-pre-request = "{PRE_REQUEST}"' in local.splitlines()
    compose = load_yaml(COMPOSE_FILE)["services"]["rest"]["environment"]
    assert compose["PGRST_DB_PRE_REQUEST"] == PRE_REQUEST
    (rest,) = [doc for doc in load_yaml_documents(K3S_DIR / "rest.yaml") if doc["kind"] == "Deployment"]
    (container,) = rest["spec"]["template"]["spec"]["containers"]
    assert {"name": "PGRST_DB_PRE_REQUEST", "value": PRE_REQUEST} in container["env"]


def test_an_expired_token_reads_nothing_and_moves_nothing(
    stack: LocalStack, db: Conn, service_api: Api, make_user: MakeUser
) -> None:
    """PostgREST refuses it before the gate runs: an hour-old token of a user in good standing."""
    holder, friend = funded(service_api, make_user), make_user()
    an_hour_ago = int(time.time()) - 3600
    token = access_token(
        stack.jwt_secret, holder.id, email=holder.email, lifetime_seconds=60, now=an_hour_ago
    )
    expired = User(holder.id, holder.email, token, Api(stack.api_url, stack.anon_key, token))
    try:
        for response in (expired.api.get("/credit_accounts"), transfer(expired, friend, "5")):
            assert response.status_code == 401, response.text
            assert body(response)["code"] == "PGRST301"  # "JWT expired"
    finally:
        expired.api.close()
    assert balance_of(db, holder.id) == Decimal("40")
