"""Security of the credits schema, proven through PostgREST as anon, as other users, and in the
catalog: RLS everywhere, no EXECUTE where it does not belong, no writes to the ledger."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.support import Api, User, body, denied

MakeUser = Callable[..., User]

PRIVATE_TABLES = [
    "credit_accounts",
    "credit_transactions",
    "credit_lots",
    "user_roles",
    "profiles",
    "credit_config_history",
    "credit_daily_activity",
    "credit_monthly_activity",
    "credit_balances",
]
LEDGER_TABLES = [
    "credit_accounts",
    "credit_transactions",
    "credit_lots",
    "user_roles",
    "profiles",
    "credit_config",
    "credit_config_history",
]
SERVICE_ONLY = ["purchase_credits", "expire_credits"]
ADMIN_ONLY = [
    "grant_credits",
    "set_credit_config",
    "audit_ledger",
    "platform_daily_stats",
    "platform_credit_summary",
    "top_credit_users",
    "grant_role",
    "revoke_role",
    "refresh_ledger_rollups",
    "upkeep_backlog",
    "applied_migrations",
    "database_connections",
]


def funded_pair(service_api: Api, make_user: MakeUser) -> tuple[User, User]:
    victim, attacker = make_user(), make_user()
    reply = service_api.rpc(
        "purchase_credits", user_id=victim.id, usd_amount="50", payment_reference=f"sec-{uuid.uuid4()}"
    )
    assert reply.status_code == 200, reply.text
    return victim, attacker


@pytest.mark.parametrize("table", PRIVATE_TABLES)
def test_anon_reads_nothing_private(anon_api: Api, service_api: Api, make_user: MakeUser, table: str) -> None:
    funded_pair(service_api, make_user)
    response = anon_api.get(f"/{table}")
    assert denied(response) or body(response) == [], response.text


@pytest.mark.parametrize("table", PRIVATE_TABLES)
def test_users_read_only_their_own_rows(service_api: Api, make_user: MakeUser, table: str) -> None:
    victim, attacker = funded_pair(service_api, make_user)
    column = "id" if table == "profiles" else "user_id"
    if table == "credit_config_history":
        assert body(attacker.api.get(f"/{table}")) == []
        return
    rows = body(attacker.api.get(f"/{table}", **{column: f"eq.{victim.id}"}))
    assert rows == [], rows
    everything = body(attacker.api.get(f"/{table}"))
    assert all(row[column] == attacker.id for row in everything)


def write_attempts(
    table: str, attacker: User, victim: User
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """A row to insert, a change to apply and a filter, each valid for `table`."""
    mine, theirs = attacker.id, victim.id
    attempts: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, str]]] = {
        "credit_accounts": (
            {"user_id": str(uuid.uuid4()), "balance": "1000000"},
            {"balance": "1000000"},
            {"user_id": f"eq.{theirs}"},
        ),
        "credit_transactions": (
            {
                "transfer_id": str(uuid.uuid4()),
                "user_id": mine,
                "amount": "5",
                "kind": "grant",
                "balance_after": "5",
            },
            {"amount": "1"},
            {"user_id": f"eq.{theirs}"},
        ),
        "credit_lots": (
            {"user_id": mine, "amount": "5", "remaining": "5"},
            {"remaining": "100"},
            {"user_id": f"eq.{theirs}"},
        ),
        "user_roles": ({"user_id": mine, "role": "admin"}, {"role": "farmer"}, {"user_id": f"eq.{theirs}"}),
        "profiles": (
            {"id": str(uuid.uuid4()), "email": "x@example.test"},
            {"email": "hijack@example.test"},
            {"id": f"eq.{theirs}"},
        ),
        "credit_config": (
            {"id": False, "tfc_to_usd_rate": "0.0001"},
            {"tfc_to_usd_rate": "0.0001"},
            {"id": "eq.true"},
        ),
        "credit_config_history": ({"old_config": {}, "new_config": {}}, {"new_config": {}}, {"id": "gt.0"}),
    }
    return attempts[table]


@pytest.mark.parametrize("table", LEDGER_TABLES)
def test_no_api_role_writes_ledger_tables(
    anon_api: Api, service_api: Api, make_user: MakeUser, table: str
) -> None:
    victim, attacker = funded_pair(service_api, make_user)
    row, change, where = write_attempts(table, attacker, victim)
    for api in (anon_api, attacker.api, service_api):
        inserted = api.post(f"/{table}", row)
        assert denied(inserted), (table, inserted.text)
        patched = api.patch(f"/{table}", change, **where)
        assert denied(patched) or body(patched) == [], (table, patched.text)
        deleted = api.delete(f"/{table}", **where)
        assert denied(deleted) or body(deleted) == [], (table, deleted.text)
    victim_balance = body(victim.api.get("/credit_accounts", select="balance"))
    assert str(victim_balance[0]["balance"]) == "50"
    assert body(victim.api.get("/profiles"))[0]["email"] == victim.email
    assert str(body(anon_api.get("/credit_config"))[0]["tfc_to_usd_rate"]) != "0.0001"


def test_users_may_rename_themselves_only(service_api: Api, make_user: MakeUser) -> None:
    victim, attacker = funded_pair(service_api, make_user)
    renamed = attacker.api.patch("/profiles", {"display_name": "Mallory"}, id=f"eq.{attacker.id}")
    assert renamed.status_code == 200 and body(renamed)[0]["display_name"] == "Mallory"
    assert body(attacker.api.patch("/profiles", {"display_name": "pwned"}, id=f"eq.{victim.id}")) == []
    assert body(victim.api.get("/profiles"))[0]["display_name"] is None


@pytest.mark.parametrize("name", SERVICE_ONLY + ADMIN_ONLY)
def test_anon_and_users_cannot_call_privileged_functions(
    anon_api: Api, make_user: MakeUser, name: str
) -> None:
    user = make_user()
    args: dict[str, Any] = {}
    if name == "purchase_credits":
        args = {"user_id": user.id, "usd_amount": "100", "payment_reference": f"x-{uuid.uuid4()}"}
    elif name == "grant_credits":
        args = {"user_id": user.id, "amount": "100", "reason": "x"}
    elif name in ("grant_role", "revoke_role"):
        args = {"user_id": user.id, "role": "admin"}
    elif name == "set_credit_config":
        args = {"tfc_to_usd_rate": "0.0001"}
    for api in (anon_api, user.api):
        response = api.rpc(name, **args)
        assert denied(response), (name, response.status_code, response.text)
    assert body(user.api.get("/user_roles")) == []
    assert str(body(user.api.get("/credit_accounts"))[0]["balance"]) == "0"


def test_user_cannot_make_themselves_admin(make_user: MakeUser) -> None:
    user = make_user()
    assert denied(user.api.rpc("grant_role", user_id=user.id, role="admin"))
    assert denied(user.api.post("/user_roles", {"user_id": user.id, "role": "admin"}))
    assert body(user.api.get("/user_roles")) == []


def test_admins_grant_and_revoke_roles(make_user: MakeUser, service_api: Api) -> None:
    admin, user = make_user("admin"), make_user()
    assert admin.api.rpc("grant_role", user_id=user.id, role="farmer").status_code == 200
    assert [r["role"] for r in body(user.api.get("/user_roles"))] == ["farmer"]
    assert body(user.api.rpc("has_role", role="farmer")) is True
    assert service_api.rpc("revoke_role", user_id=user.id, role="farmer").status_code == 200
    assert body(user.api.get("/user_roles")) == []
    bad = admin.api.rpc("grant_role", user_id=user.id, role="emperor")
    assert bad.status_code == 400 and body(bad)["code"] == "invalid_argument"


def test_cannot_transfer_from_someone_elses_account(service_api: Api, make_user: MakeUser) -> None:
    victim, attacker = funded_pair(service_api, make_user)
    # The sender is always the caller: there is no parameter naming another sender.
    response = attacker.api.rpc("transfer_credits", recipient=attacker.id, amount="10", sender=victim.id)
    assert response.status_code in (300, 400, 404), response.text
    response = attacker.api.rpc("transfer_credits", recipient=victim.id, amount="10")
    assert response.status_code == 409 and body(response)["code"] == "insufficient_credits"
    # A JWT for a user id that is not in auth.users has no account to spend from.
    assert str(body(victim.api.get("/credit_accounts"))[0]["balance"]) == "50"


def test_cannot_mint_by_self_transfer_negative_or_nan(service_api: Api, make_user: MakeUser) -> None:
    victim, attacker = funded_pair(service_api, make_user)
    service_api.rpc(
        "purchase_credits", user_id=attacker.id, usd_amount="1", payment_reference=f"m-{uuid.uuid4()}"
    )
    for amount in ("-10", "NaN", "-Infinity", "Infinity", "0"):
        response = attacker.api.rpc("transfer_credits", recipient=victim.id, amount=amount)
        assert response.status_code == 400 and body(response)["code"] == "invalid_amount", amount
    response = attacker.api.rpc("transfer_credits", recipient=attacker.id, amount="1")
    assert body(response)["code"] == "self_transfer"
    assert str(body(attacker.api.get("/credit_accounts"))[0]["balance"]) == "1"
    assert str(body(victim.api.get("/credit_accounts"))[0]["balance"]) == "50"


# ---------------------------------------------------------------------------------------------
# Catalog: RLS on every table of exposed schemas, EXECUTE only where intended.
# ---------------------------------------------------------------------------------------------


def test_rls_enabled_on_every_public_table(db: psycopg.Connection[TupleRow]) -> None:
    rows = db.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relrowsecurity"
    ).fetchall()
    assert rows == []


def test_private_schema_is_closed(db: psycopg.Connection[TupleRow]) -> None:
    for role in ("anon", "authenticated", "service_role"):
        usage = db.execute("select has_schema_privilege(%s, 'mycelium_private', 'usage')", (role,)).fetchone()
        assert usage == (False,), role


def test_ledger_is_append_only_even_for_the_owner(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    victim, _ = funded_pair(service_api, make_user)
    for statement in (
        "update public.credit_transactions set amount = 1 where user_id = %s",
        "delete from public.credit_transactions where user_id = %s",
        "update mycelium_private.transfers set amount = 1 where to_user = %s",
        "delete from mycelium_private.transfers where to_user = %s",
    ):
        with pytest.raises(psycopg.Error, match="append-only"):
            db.execute(statement, (victim.id,))
