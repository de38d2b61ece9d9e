"""Credits through PostgREST: purchases, packages, transfers, grants, history, idempotency, errors."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.support import Api, User, body

D = Decimal
MakeUser = Callable[..., User]


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return body(response)


def fails(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = body(response)
    assert error["code"] == reason, error
    assert error["message"]
    return error


def buy(service_api: Api, user: User, usd: str | Decimal, reference: str | None = None, **extra: Any) -> Any:
    return ok(
        service_api.rpc(
            "purchase_credits",
            user_id=user.id,
            usd_amount=str(usd),
            payment_reference=reference or f"pay-{uuid.uuid4()}",
            **extra,
        )
    )


def balance(user: User) -> Decimal:
    rows = ok(user.api.get("/credit_accounts", select="balance"))
    assert len(rows) == 1
    return D(str(rows[0]["balance"]))


def audit(service_api: Api) -> list[Any]:
    problems: list[Any] = ok(service_api.rpc("audit_ledger"))
    return problems


# ---------------------------------------------------------------------------------------------
# Accounts and purchases
# ---------------------------------------------------------------------------------------------


def test_new_user_gets_profile_and_empty_account(make_user: MakeUser) -> None:
    user = make_user()
    accounts = ok(user.api.get("/credit_accounts"))
    seen = [(a["user_id"], D(str(a["balance"])), D(str(a["held"]))) for a in accounts]
    assert seen == [(user.id, D(0), D(0))]
    profiles = ok(user.api.get("/profiles"))
    assert [(p["id"], p["email"]) for p in profiles] == [(user.id, user.email)]


def test_purchase_converts_usd_at_the_configured_rate_and_is_idempotent(
    service_api: Api, make_user: MakeUser
) -> None:
    user = make_user()
    reference = f"stripe-{uuid.uuid4()}"
    first = buy(service_api, user, "12.5", reference)
    assert D(str(first["amount"])) == D("12.5")  # default rate 1.0 (other tests restore it)
    assert first["balance_after"] == D("12.5")
    again = buy(service_api, user, "12.5", reference)
    assert again == first
    assert balance(user) == D("12.5")
    history = ok(user.api.get("/credit_transactions", select="kind,amount,balance_after,reference"))
    assert history == [
        {"kind": "purchase", "amount": D("12.5"), "balance_after": D("12.5"), "reference": reference}
    ]
    # The same reference for something else is refused.
    fails(
        service_api.rpc("purchase_credits", user_id=user.id, usd_amount="13", payment_reference=reference),
        409,
        "duplicate_reference",
    )
    assert audit(service_api) == []


def test_purchase_for_unknown_user_and_bad_amounts(service_api: Api) -> None:
    fails(
        service_api.rpc(
            "purchase_credits",
            user_id=str(uuid.uuid4()),
            usd_amount="10",
            payment_reference=f"p-{uuid.uuid4()}",
        ),
        404,
        "unknown_recipient",
    )
    fails(
        service_api.rpc("purchase_credits", user_id=str(uuid.uuid4()), usd_amount="10", payment_reference=""),
        400,
        "invalid_argument",
    )


def test_packages_add_their_bonus_and_must_match_price(
    service_api: Api, anon_api: Api, make_user: MakeUser
) -> None:
    admin = make_user("admin")
    name = f"Bulk {uuid.uuid4().hex[:8]}"
    created = admin.api.post("/credit_packages", {"name": name, "price_usd": "500", "bonus_credits": "25"})
    assert created.status_code == 201, created.text
    package = body(created)[0]
    listed = ok(anon_api.get("/credit_packages", name=f"eq.{name}"))
    assert [p["id"] for p in listed] == [package["id"]]

    user = make_user()
    result = buy(service_api, user, "500", package_id=package["id"])
    assert result["amount"] == D("525")
    assert balance(user) == D("525")
    fails(
        service_api.rpc(
            "purchase_credits",
            user_id=user.id,
            usd_amount="499",
            payment_reference=f"p-{uuid.uuid4()}",
            package_id=package["id"],
        ),
        400,
        "invalid_argument",
    )

    # Inactive packages are hidden from anon and cannot be bought.
    assert admin.api.patch("/credit_packages", {"active": False}, id=f"eq.{package['id']}").status_code == 200
    assert ok(anon_api.get("/credit_packages", name=f"eq.{name}")) == []
    fails(
        service_api.rpc(
            "purchase_credits",
            user_id=user.id,
            usd_amount="500",
            payment_reference=f"p-{uuid.uuid4()}",
            package_id=package["id"],
        ),
        409,
        "package_inactive",
    )

    # Users who are not admins cannot manage packages.
    other = make_user()
    refused = other.api.post("/credit_packages", {"name": f"x{uuid.uuid4().hex}", "price_usd": "1"})
    assert refused.status_code in (401, 403), refused.text
    assert anon_api.post(
        "/credit_packages", {"name": f"x{uuid.uuid4().hex}", "price_usd": "1"}
    ).status_code in (401, 403)


# ---------------------------------------------------------------------------------------------
# Transfers
# ---------------------------------------------------------------------------------------------


def test_transfer_moves_credits_and_records_both_sides(service_api: Api, make_user: MakeUser) -> None:
    alice, bob = make_user(), make_user()
    buy(service_api, alice, "100")
    result = ok(alice.api.rpc("transfer_credits", recipient=bob.id, amount="30.123456", memo="thanks"))
    assert result["amount"] == D("30.123456")
    assert result["balance_after"] == D("69.876544")
    assert balance(alice) == D("69.876544")
    assert balance(bob) == D("30.123456")
    bob_rows = ok(
        bob.api.get("/credit_transactions", select="kind,amount,balance_after,counterparty_id,memo")
    )
    assert bob_rows == [
        {
            "kind": "transfer_in",
            "amount": D("30.123456"),
            "balance_after": D("30.123456"),
            "counterparty_id": alice.id,
            "memo": "thanks",
        }
    ]
    alice_kinds = [r["kind"] for r in ok(alice.api.get("/credit_transactions", order="id"))]
    assert alice_kinds == ["purchase", "transfer_out"]
    assert audit(service_api) == []


def test_transfer_errors_have_stable_reasons_and_move_nothing(service_api: Api, make_user: MakeUser) -> None:
    alice, bob = make_user(), make_user()
    buy(service_api, alice, "10")
    api = alice.api
    fails(api.rpc("transfer_credits", recipient=bob.id, amount="10.000001"), 409, "insufficient_credits")
    fails(api.rpc("transfer_credits", recipient=alice.id, amount="1"), 400, "self_transfer")
    fails(api.rpc("transfer_credits", recipient=str(uuid.uuid4()), amount="1"), 404, "unknown_recipient")
    for bad in ("0", "-1", "NaN", "Infinity", "-Infinity", "1.0000001", "1e15", "0.0000001"):
        fails(api.rpc("transfer_credits", recipient=bob.id, amount=bad), 400, "invalid_amount")
    fails(api.rpc("transfer_credits", recipient=bob.id, amount=None), 400, "invalid_amount")
    # A JSON number with 7 fractional digits is rejected too, not rounded.
    raw = api.client.post(
        "/rpc/transfer_credits",
        content=f'{{"recipient": "{bob.id}", "amount": 1.0000001}}',
        headers={"Content-Type": "application/json"},
    )
    fails(raw, 400, "invalid_amount")
    # Trailing zeros are not extra precision.
    ok(api.rpc("transfer_credits", recipient=bob.id, amount="1.50000000"))
    assert balance(alice) == D("8.5")
    assert balance(bob) == D("1.5")


def test_transfer_idempotency_key_returns_first_transfer(service_api: Api, make_user: MakeUser) -> None:
    alice, bob = make_user(), make_user()
    buy(service_api, alice, "10")
    first = ok(alice.api.rpc("transfer_credits", recipient=bob.id, amount="4", idempotency_key="order-1"))
    again = ok(alice.api.rpc("transfer_credits", recipient=bob.id, amount="4", idempotency_key="order-1"))
    assert again == first
    assert balance(alice) == D("6")
    fails(
        alice.api.rpc("transfer_credits", recipient=bob.id, amount="5", idempotency_key="order-1"),
        409,
        "duplicate_reference",
    )
    # Another sender may use the same key.
    buy(service_api, bob, "1")
    ok(bob.api.rpc("transfer_credits", recipient=alice.id, amount="1", idempotency_key="order-1"))


def test_service_role_and_anon_cannot_transfer(service_api: Api, anon_api: Api, make_user: MakeUser) -> None:
    bob = make_user()
    assert service_api.rpc("transfer_credits", recipient=bob.id, amount="1").status_code in (401, 403)
    assert anon_api.rpc("transfer_credits", recipient=bob.id, amount="1").status_code in (401, 403)


# ---------------------------------------------------------------------------------------------
# Grants
# ---------------------------------------------------------------------------------------------


def test_admin_grants_credits_idempotently(service_api: Api, make_user: MakeUser) -> None:
    admin, user = make_user("admin"), make_user()
    first = ok(
        admin.api.rpc("grant_credits", user_id=user.id, amount="5", reason="welcome", idempotency_key="w")
    )
    assert (
        ok(admin.api.rpc("grant_credits", user_id=user.id, amount="5", reason="welcome", idempotency_key="w"))
        == first
    )
    ok(service_api.rpc("grant_credits", user_id=user.id, amount="2", reason="support"))
    assert balance(user) == D("7")
    fails(admin.api.rpc("grant_credits", user_id=user.id, amount="5", reason=""), 400, "invalid_argument")
    fails(
        admin.api.rpc("grant_credits", user_id=str(uuid.uuid4()), amount="5", reason="x"),
        404,
        "unknown_recipient",
    )
    fails(
        admin.api.rpc(
            "grant_credits", user_id=user.id, amount="5", reason="x", expires_at="2000-01-01T00:00:00Z"
        ),
        400,
        "invalid_argument",
    )
    fails(user.api.rpc("grant_credits", user_id=user.id, amount="5", reason="me"), 403, "not_authorized")
    assert balance(user) == D("7")
    # A grant's key is per recipient: the same key for someone else is another grant.
    other = make_user()
    ok(admin.api.rpc("grant_credits", user_id=other.id, amount="5", reason="welcome", idempotency_key="w"))
    assert balance(other) == D("5")


def test_one_key_in_different_kinds_of_movement_are_different_movements(
    service_api: Api, make_user: MakeUser
) -> None:
    alice, bob = make_user(), make_user()
    key = f"shared-{uuid.uuid4()}"
    buy(service_api, alice, "10", key)
    ok(service_api.rpc("grant_credits", user_id=alice.id, amount="2", reason="promo", idempotency_key=key))
    ok(alice.api.rpc("transfer_credits", recipient=bob.id, amount="3", idempotency_key=key))
    assert (balance(alice), balance(bob)) == (D("9"), D("3"))
    assert audit(service_api) == []


# ---------------------------------------------------------------------------------------------
# History, analytics, display
# ---------------------------------------------------------------------------------------------


def test_history_keyset_pagination_and_analytics(service_api: Api, make_user: MakeUser) -> None:
    alice, bob = make_user(), make_user()
    buy(service_api, alice, "100")
    for _ in range(5):
        ok(alice.api.rpc("transfer_credits", recipient=bob.id, amount="1"))
    ok(bob.api.rpc("transfer_credits", recipient=alice.id, amount="2"))

    page = ok(alice.api.get("/credit_transactions", order="created_at.desc,id.desc", limit=3))
    assert len(page) == 3
    last = page[-1]
    cursor = (
        f"(created_at.lt.{last['created_at']},and(created_at.eq.{last['created_at']},id.lt.{last['id']}))"
    )
    rest = ok(
        alice.api.get("/credit_transactions", order="created_at.desc,id.desc", limit=10, **{"or": cursor})
    )
    ids = [r["id"] for r in page + rest]
    assert len(ids) == 7 and len(set(ids)) == 7

    daily = ok(alice.api.get("/credit_daily_activity"))
    assert len(daily) == 1
    day = daily[0]
    assert (day["bought"], day["sent"], day["received"], day["net"]) == (D("100"), D("5"), D("2"), D("97"))
    monthly = ok(alice.api.get("/credit_monthly_activity"))
    assert monthly[0]["bought"] == D("100") and monthly[0]["user_id"] == alice.id
    balances = ok(alice.api.get("/credit_balances"))
    assert balances[0]["balance"] == D("97") and balances[0]["balance_usd"] == D("97")


def test_platform_analytics_for_admins_only(service_api: Api, make_user: MakeUser) -> None:
    admin, user = make_user("admin"), make_user()
    buy(service_api, user, "3")
    stats = ok(admin.api.rpc("platform_daily_stats"))
    assert len(stats) == 30
    assert stats[-1]["issued"] >= D("3") and stats[-1]["purchased"] >= D("3")
    summary = ok(service_api.rpc("platform_credit_summary"))
    assert summary["circulation"] >= D("3")
    top = ok(admin.api.rpc("top_credit_users", direction="earners"))
    assert isinstance(top, list)
    fails(user.api.rpc("platform_daily_stats"), 403, "not_authorized")
    fails(user.api.rpc("top_credit_users"), 403, "not_authorized")


@pytest.mark.parametrize("name", ["audit_ledger", "platform_credit_summary"])
def test_admin_functions_refuse_plain_users(make_user: MakeUser, name: str) -> None:
    fails(make_user().api.rpc(name), 403, "not_authorized")


def test_credit_history_pages_by_cursor_and_shows_only_own_rows(
    service_api: Api, make_user: MakeUser
) -> None:
    alice, bob = make_user(), make_user()
    buy(service_api, alice, "100")
    for _ in range(7):
        ok(alice.api.rpc("transfer_credits", recipient=bob.id, amount="1"))
    seen: list[int] = []
    cursor: dict[str, Any] = {}
    while True:
        page = ok(alice.api.rpc("credit_history", page_size=3, **cursor))
        if not page:
            break
        assert all(row["user_id"] == alice.id for row in page)
        seen += [row["id"] for row in page]
        cursor = {"before_created_at": page[-1]["created_at"], "before_id": page[-1]["id"]}
    assert len(seen) == 8 and seen == sorted(seen, reverse=True)
    assert len(ok(bob.api.rpc("credit_history"))) == 7
    assert ok(service_api.rpc("credit_history")) == []


def test_package_with_validity_makes_an_expiring_lot(service_api: Api, make_user: MakeUser) -> None:
    admin, user = make_user("admin"), make_user()
    created = admin.api.post(
        "/credit_packages",
        {
            "name": f"Trial {uuid.uuid4().hex[:8]}",
            "price_usd": "5",
            "bonus_credits": "1",
            "expires_after": "30 days",
        },
    )
    assert created.status_code == 201, created.text
    package = body(created)[0]
    result = buy(service_api, user, "5", package_id=package["id"])
    assert result["amount"] == D("6") and result["expires_at"] is not None
    lots = ok(user.api.get("/credit_lots", expires_at="not.is.null"))
    assert [(D(str(lot["amount"])), D(str(lot["remaining"]))) for lot in lots] == [(D(6), D(6))]


def test_only_the_service_role_records_purchases(make_user: MakeUser) -> None:
    admin = make_user("admin")
    refused = admin.api.rpc(
        "purchase_credits", user_id=admin.id, usd_amount="100", payment_reference=f"self-{uuid.uuid4()}"
    )
    assert refused.status_code in (401, 403), refused.text
    assert balance(admin) == 0


# ---------------------------------------------------------------------------------------------
# The ledger's own rules: the last line behind the functions' checks
# ---------------------------------------------------------------------------------------------

BAD_LEDGER_ROWS = {
    "NaN amount": ("transfers", "amount", "'NaN'"),
    "zero amount": ("transfers", "amount", "0"),
    "negative amount": ("transfers", "amount", "-1"),
    "seven decimals": ("transfers", "amount", "1.0000001"),
    "amount too large": ("transfers", "amount", "1e15"),
    "unknown kind": ("transfers", "kind", "'gift'"),
    "unknown system account": ("transfers", "from_system", "'bank'"),
    "entry of zero": ("credit_transactions", "amount", "0"),
    "entry of NaN": ("credit_transactions", "amount", "'NaN'"),
    "unknown entry kind": ("credit_transactions", "kind", "'gift'"),
    "negative balance": ("credit_transactions", "balance_after", "-1"),
}


def ledger_insert(table: str, row: dict[str, str]) -> str:
    schema = "mycelium_private" if table == "transfers" else "public"
    return f"insert into {schema}.{table} ({', '.join(row)}) values ({', '.join(row.values())})"


@pytest.mark.parametrize("case", BAD_LEDGER_ROWS)
def test_the_ledger_refuses_what_no_function_may_write(
    case: str, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    table, column, value = BAD_LEDGER_ROWS[case]
    user = make_user()
    sound = {
        "transfers": {
            "kind": "'grant'",
            "from_system": "'issuance'",
            "to_user": f"'{user.id}'",
            "amount": "1",
        },
        "credit_transactions": {
            "transfer_id": f"'{uuid.uuid4()}'",
            "user_id": f"'{user.id}'",
            "amount": "1",
            "kind": "'grant'",
            "balance_after": "1",
        },
    }[table]
    with db.transaction(force_rollback=True):
        with pytest.raises(psycopg.errors.CheckViolation), db.transaction():
            db.execute(ledger_insert(table, {**sound, column: value}))
        db.execute(ledger_insert(table, sound))  # the same row with sound values is taken
