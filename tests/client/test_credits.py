"""`client.credits` end to end: the real SQL behind the real PostgREST, through the gateway."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from mycelium_client import (
    Balance,
    Conflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    MovementKind,
    NotAuthorized,
    NotFound,
    TransactionKind,
)
from tests.support.client import MakeAccount, Target


def test_config_is_readable_without_signing_in(target: Target) -> None:
    config = target.client().credits.config()
    assert config.credit_currency_code and config.credit_symbol and config.credit_display_name
    assert isinstance(config.tfc_to_usd_rate, Decimal) and config.tfc_to_usd_rate > 0
    assert config.updated_at.tzinfo is not None


def test_balance_and_transfer(account: MakeAccount) -> None:
    sender, recipient = account(funded="100.25"), account()
    balance = sender.client.credits.balance()
    assert isinstance(balance, Balance)
    assert balance.user_id == sender.id and balance.balance == Decimal("100.25") and balance.held == 0
    assert balance.expiring == 0

    movement = sender.client.credits.transfer(recipient.id, "40.123456", memo="lunch")
    assert movement.kind is MovementKind.TRANSFER
    assert movement.amount == Decimal("40.123456") and movement.balance_after == Decimal("60.126544")
    assert movement.from_user_id == sender.id and movement.to_user_id == recipient.id
    assert movement.reference and movement.reference.startswith("mycelium-client-")
    assert recipient.client.credits.balance().balance == Decimal("40.123456")


def test_a_transfer_with_the_same_key_is_applied_once(account: MakeAccount) -> None:
    sender, recipient = account(funded=10), account()
    key = f"order-{uuid.uuid4()}"
    first = sender.client.credits.transfer(recipient.id, 3, idempotency_key=key)
    again = sender.client.credits.transfer(recipient.id, 3, idempotency_key=key)
    assert again == first
    assert sender.client.credits.balance().balance == 7


def test_history_is_typed_newest_first(account: MakeAccount) -> None:
    sender, recipient = account(funded=50), account()
    sender.client.credits.transfer(recipient.id, 5, memo="one")
    sender.client.credits.transfer(recipient.id, "2.5", memo="two")
    entries = list(sender.client.credits.history())
    assert [entry.kind for entry in entries] == [
        TransactionKind.TRANSFER_OUT,
        TransactionKind.TRANSFER_OUT,
        TransactionKind.PURCHASE,
    ]
    assert [entry.amount for entry in entries] == [Decimal("-2.5"), Decimal(-5), Decimal(50)]
    assert [entry.balance_after for entry in entries] == [Decimal("42.5"), Decimal(45), Decimal(50)]
    assert entries[0].counterparty_id == recipient.id and entries[0].memo == "two"
    only_in = list(recipient.client.credits.history(kinds=[TransactionKind.TRANSFER_IN]))
    assert [entry.amount for entry in only_in] == [Decimal("2.5"), Decimal(5)]


def test_history_pages_through_thousands_of_rows(target: Target, account: MakeAccount) -> None:
    user = account()
    with target.connect() as conn:  # 3,000 grants in one statement (a direct login is trusted)
        conn.execute(
            """
            select public.grant_credits(%s, 1, 'page ' || n, idempotency_key => 'page-' || n)
            from generate_series(1, 3000) n
            """,
            (user.id,),
        )
    seen = list(user.client.credits.history(page_size=700))
    assert len(seen) == 3000
    assert len({entry.id for entry in seen}) == 3000
    keys = [(entry.created_at, entry.id) for entry in seen]
    assert keys == sorted(keys, reverse=True)
    assert seen[0].balance_after == 3000 and seen[-1].balance_after == 1


def test_packages_are_typed(target: Target) -> None:
    name = f"client-pack-{uuid.uuid4().hex[:8]}"
    with target.connect() as conn:
        conn.execute(
            "insert into public.credit_packages (name, price_usd, bonus_credits, expires_after) "
            "values (%s, 19.99, 0.5, interval '90 days')",
            (name,),
        )
    packages = {package.name: package for package in target.client().credits.packages()}
    package = packages[name]
    assert package.price_usd == Decimal("19.99") and package.bonus_credits == Decimal("0.5")
    assert package.active and package.expires_after == "90 days"


def test_display_helpers(target: Target) -> None:
    credits = target.client().credits
    config = credits.config()
    assert credits.format(Decimal("1250.5")) == f"1,250.50 {config.credit_symbol}"
    assert credits.format("0.000001") == f"0.000001 {config.credit_symbol}"
    assert credits.format(3) == f"3.00 {config.credit_symbol}"
    assert credits.to_usd("2.5") == Decimal("2.5") * config.tfc_to_usd_rate


# -- every error class, raised from a real SQL error ----------------------------------------------
def test_insufficient_credits(account: MakeAccount) -> None:
    sender, recipient = account(funded=1), account()
    with pytest.raises(InsufficientCredits) as raised:
        sender.client.credits.transfer(recipient.id, "1.000001")
    assert raised.value.reason == "insufficient_credits" and raised.value.status == 409
    assert "insufficient credits" in raised.value.message


def test_unknown_recipient_is_not_found(account: MakeAccount) -> None:
    sender = account(funded=1)
    with pytest.raises(NotFound) as raised:
        sender.client.credits.transfer(uuid.uuid4(), 1)
    assert raised.value.reason == "unknown_recipient" and raised.value.status == 404


def test_self_transfer_is_an_invalid_argument(account: MakeAccount) -> None:
    sender = account(funded=1)
    with pytest.raises(InvalidArgument) as raised:
        sender.client.credits.transfer(sender.id, 1)
    assert raised.value.reason == "self_transfer" and raised.value.status == 400


def test_reusing_a_key_for_another_transfer_is_a_conflict(account: MakeAccount) -> None:
    sender, recipient = account(funded=5), account()
    sender.client.credits.transfer(recipient.id, 1, idempotency_key="k-1")
    with pytest.raises(Conflict) as raised:
        sender.client.credits.transfer(recipient.id, 2, idempotency_key="k-1")
    assert raised.value.reason == "duplicate_reference" and raised.value.status == 409


def test_a_bad_rate_is_an_invalid_amount_from_sql(target: Target) -> None:
    with pytest.raises(InvalidAmount) as raised:
        target.service().admin.set_credit_config(tfc_to_usd_rate="-1")
    assert raised.value.reason == "invalid_amount" and raised.value.status == 400


def test_signed_out_transfer_is_not_authorized(target: Target, account: MakeAccount) -> None:
    recipient = account()
    anonymous = target.client()
    with pytest.raises(NotAuthorized):  # refused before sending: nobody to send as
        anonymous.credits.transfer(recipient.id, 1)
    service = target.service()
    with pytest.raises(NotAuthorized) as raised:  # the service key may not transfer (SQL grants)
        service.as_user(service_role_token(target)).credits.transfer(recipient.id, 1)
    assert raised.value.status in (401, 403)


def test_users_may_not_use_admin_functions(account: MakeAccount) -> None:
    user = account()
    with pytest.raises(NotAuthorized) as raised:
        user.client.admin.grant_credits(user.id, 5, "free money")
    assert raised.value.reason == "not_authorized" and raised.value.status == 403


def service_role_token(target: Target) -> str:
    return target.service_role_key
