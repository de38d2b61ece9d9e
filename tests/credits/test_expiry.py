"""Expiring credits: lots consumed soonest-expiry first, expired lots unspendable, swept once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.support import Api, User, body

MakeUser = Callable[..., User]
D = Decimal


def balance(user: User) -> Decimal:
    return D(str(body(user.api.get("/credit_accounts"))[0]["balance"]))


def lots(user: User) -> tuple[Decimal, list[Decimal]]:
    """What never expires (the account's balance less `expiring`), and what each lot holds."""
    account = body(user.api.get("/credit_accounts"))[0]
    rows = body(user.api.get("/credit_lots", order="id"))
    non_expiring = D(str(account["balance"])) - D(str(account["expiring"]))
    return non_expiring, [D(str(r["remaining"])) for r in rows]


def grant_then_buy(service_api: Api, user: User, expires: datetime) -> None:
    """10 promotional credits expiring at `expires`, then 5 bought ones that never expire."""
    granted = service_api.rpc(
        "grant_credits", user_id=user.id, amount="10", reason="promo", expires_at=expires.isoformat()
    )
    assert granted.status_code == 200, granted.text
    bought = service_api.rpc(
        "purchase_credits", user_id=user.id, usd_amount="5", payment_reference=f"e-{uuid.uuid4()}"
    )
    assert bought.status_code == 200, bought.text


def test_expiring_credits_are_spent_first_then_unspendable_then_swept(
    service_api: Api, make_user: MakeUser
) -> None:
    user, friend = make_user(), make_user()
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    grant_then_buy(service_api, user, expires)

    # Spending takes the expiring lot first.
    assert user.api.rpc("transfer_credits", recipient=friend.id, amount="3").status_code == 200
    assert lots(user) == (D("5"), [D("7")])

    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    # Past expiry, before the sweep: those 7 credits are in the balance but cannot be spent.
    assert balance(user) == D("12")
    refused = user.api.rpc("transfer_credits", recipient=friend.id, amount="6")
    assert refused.status_code == 409 and body(refused)["code"] == "insufficient_credits"
    assert user.api.rpc("transfer_credits", recipient=friend.id, amount="5").status_code == 200
    assert balance(user) == D("7")

    swept = service_api.rpc("expire_credits")
    assert swept.status_code == 200, swept.text
    assert body(swept)["credits_expired"] >= D("7")
    assert balance(user) == D("0") and lots(user) == (D("0"), [D("0")])
    last = body(user.api.get("/credit_transactions", order="id.desc", limit=1))[0]
    assert (last["kind"], last["amount"], last["balance_after"]) == ("expiry", D("-7"), D("0"))

    # Once only.
    assert service_api.rpc("expire_credits").status_code == 200
    expiries = body(user.api.get("/credit_transactions", kind="eq.expiry"))
    assert len(expiries) == 1
    assert body(service_api.rpc("audit_ledger")) == []
    daily = body(user.api.get("/credit_daily_activity"))[0]
    assert (daily["granted"], daily["bought"], daily["sent"], daily["expired"]) == (D(10), D(5), D(8), D(7))


def test_soonest_expiry_first_and_partial_sweep(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    user, friend = make_user(), make_user()
    now = datetime.now(UTC)
    for amount, hours in (("4", 3), ("6", 1), ("2", 2)):
        reply = service_api.rpc(
            "grant_credits",
            user_id=user.id,
            amount=amount,
            reason="promo",
            expires_at=(now + timedelta(hours=hours)).isoformat(),
        )
        assert reply.status_code == 200, reply.text
    assert user.api.rpc("transfer_credits", recipient=friend.id, amount="7").status_code == 200
    remaining = body(user.api.get("/credit_lots", order="expires_at.asc"))
    assert [D(str(r["remaining"])) for r in remaining] == [D(0), D(1), D(4)]
    # Let the 2-hour lot expire early (lots are not ledger rows) and sweep as of now.
    db.execute(
        "update public.credit_lots set expires_at = now() - interval '1 minute' "
        "where user_id = %s and remaining = 1",
        (user.id,),
    )
    assert service_api.rpc("expire_credits").status_code == 200
    assert balance(user) == D("4") and lots(user) == (D("0"), [D(4), D(0), D(0)])  # in grant order
    assert body(service_api.rpc("audit_ledger")) == []


@pytest.mark.parametrize("sender_locks_first", [True, False], ids=["sender-first", "recipient-first"])
def test_transferred_credits_keep_their_expiry(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow], sender_locks_first: bool
) -> None:
    # Accounts are locked in user_id order, and the transfer is written in that order: both orders.
    low, high = sorted((make_user(), make_user()), key=lambda user: uuid.UUID(user.id))
    sender, recipient = (low, high) if sender_locks_first else (high, low)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    grant_then_buy(service_api, sender, expires)

    sent = sender.api.rpc("transfer_credits", recipient=recipient.id, amount="12")
    assert sent.status_code == 200, sent.text
    # The 10 expiring credits go first and stay expiring; 2 of the 5 bought ones follow.
    assert lots(sender) == (D("3"), [D("0")])
    assert lots(recipient) == (D("2"), [D("10")])
    passed = body(recipient.api.get("/credit_lots"))[0]
    assert datetime.fromisoformat(passed["expires_at"]) == expires
    assert passed["source_transfer_id"] == body(sent)["transfer_id"]
    entry = body(recipient.api.get("/credit_transactions"))[0]
    assert (entry["kind"], entry["balance_after"]) == ("transfer_in", D("12"))
    assert body(service_api.rpc("audit_ledger")) == []

    # They expire with the recipient as they would have with the sender.
    db.execute(
        "update public.credit_lots set expires_at = now() - interval '1 minute' where user_id = %s",
        (recipient.id,),
    )
    assert service_api.rpc("expire_credits").status_code == 200
    assert balance(recipient) == D("2") and lots(recipient) == (D("2"), [D("0")])
    assert body(service_api.rpc("audit_ledger")) == []


@pytest.mark.parametrize(
    "unknown", ["00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff"]
)
def test_a_transfer_to_no_one_is_unknown_recipient_when_the_sender_has_expiring_credits(
    service_api: Api, make_user: MakeUser, unknown: str
) -> None:
    # Below and above any sender: the recipient's lots would be written before or after its account.
    sender = make_user()
    grant_then_buy(service_api, sender, datetime.now(UTC) + timedelta(hours=1))
    refused = sender.api.rpc("transfer_credits", recipient=unknown, amount="12")
    assert refused.status_code == 404 and body(refused)["code"] == "unknown_recipient", refused.text
    assert lots(sender) == (D("5"), [D("10")])


def test_credits_passed_on_in_many_movements_stay_one_lot_per_expiry(
    service_api: Api, make_user: MakeUser
) -> None:
    """Else anyone could split an account into thousands of lots, which each spending walks."""
    sender, recipient = make_user(), make_user()
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    grant_then_buy(service_api, sender, expires)
    for _ in range(20):
        sent = sender.api.rpc("transfer_credits", recipient=recipient.id, amount="0.000001")
        assert sent.status_code == 200, sent.text
    # A grant with the same expiry joins the same lot.
    again = service_api.rpc(
        "grant_credits", user_id=recipient.id, amount="1", reason="promo", expires_at=expires.isoformat()
    )
    assert again.status_code == 200, again.text
    assert lots(recipient) == (D("0"), [D("1.00002")])
    assert body(service_api.rpc("audit_ledger")) == []


def test_expire_credits_is_for_service_role_only(
    anon_api: Api, make_user: MakeUser, service_api: Api
) -> None:
    admin = make_user("admin")
    for api in (anon_api, admin.api):
        assert api.rpc("expire_credits").status_code in (401, 403)
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    reply = service_api.rpc("expire_credits", as_of=future)
    assert reply.status_code == 400 and body(reply)["code"] == "invalid_argument"
