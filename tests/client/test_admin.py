"""`client.admin` end to end: purchases, grants, configuration, roles, analytics, audit, expiry."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from mycelium_client import (
    AsyncMyceliumClient,
    Conflict,
    InvalidAmount,
    InvalidArgument,
    MovementKind,
    NotAuthorized,
    OrderStatus,
    OrderStatusCount,
    Profile,
    RoleName,
    TransactionKind,
    UpkeepBacklog,
)
from tests.support.client import FAST_RETRY, MakeAccount, Target, listed


def test_purchase_for_a_confirmed_payment_is_applied_once(target: Target, account: MakeAccount) -> None:
    user = account()
    admin = target.service().admin
    reference = f"stripe-{uuid.uuid4()}"
    first = admin.purchase_credits(user.id, "12.50", reference)
    assert first.kind is MovementKind.PURCHASE and first.usd_amount == Decimal("12.50")
    assert admin.purchase_credits(user.id, "12.50", reference) == first
    with pytest.raises(Conflict):
        admin.purchase_credits(user.id, "13", reference)
    assert user.client.credits.balance().balance == first.amount


def test_grants_optionally_expire_and_the_sweep_takes_them(target: Target, account: MakeAccount) -> None:
    user = account()
    admin = target.service().admin
    soon = datetime.now(UTC) + timedelta(days=1)
    grant = admin.grant_credits(user.id, "3.5", "trial", expires_at=soon)
    assert grant.kind is MovementKind.GRANT and grant.expires_at == soon
    with target.connect() as conn:  # let the lot run out
        conn.execute(
            "update public.credit_lots set expires_at = now() - interval '1 minute' "
            "where source_transfer_id = %s",
            (grant.transfer_id,),
        )
    swept = admin.expire_credits()
    assert swept.lots_expired >= 1 and swept.credits_expired >= Decimal("3.5")
    assert user.client.credits.balance().balance == 0
    assert next(user.client.credits.history()).kind is TransactionKind.EXPIRY


def test_credit_config_changes_and_comes_back(target: Target) -> None:
    admin = target.service().admin
    before = target.client().credits.config()
    try:
        changed = admin.set_credit_config(tfc_to_usd_rate="0.25", credit_symbol="cr")
        assert (changed.tfc_to_usd_rate, changed.credit_symbol) == (Decimal("0.25"), "cr")
        assert changed.credit_currency_code == before.credit_currency_code
        fresh = target.client().credits
        assert fresh.format("1000") == "1,000.00 cr" and fresh.to_usd(8) == 2
    finally:
        admin.set_credit_config(tfc_to_usd_rate=before.tfc_to_usd_rate, credit_symbol=before.credit_symbol)


def test_display_currencies_take_rates_as_fine_as_the_sql_does(target: Target) -> None:
    admin = target.service().admin
    code = "R" + uuid.uuid4().hex[:6].upper()
    try:
        rupiah = admin.set_display_currency(code, "0.0000616", symbol="Rp", decimals=0)
        assert rupiah.usd_per_unit == Decimal("0.0000616")
        for rate in ("0.000000000001", "999999999.999999999999"):  # the SQL's bounds
            assert admin.set_display_currency(code, rate).usd_per_unit == Decimal(rate)
        for rate in ("0.0000000000001", "1000000000"):
            with pytest.raises(InvalidAmount) as raised:
                admin.set_display_currency(code, rate)
            assert raised.value.reason == "invalid_amount" and raised.value.status == 0  # never sent
    finally:
        admin.remove_display_currency(code)


def test_roles(target: Target, account: MakeAccount) -> None:
    user = account()
    admin = target.service().admin
    granted = admin.grant_role(user.id, RoleName.FARMER)
    assert granted.role is RoleName.FARMER and granted.granted
    assert not admin.revoke_role(user.id, "farmer").granted
    with pytest.raises(NotAuthorized):
        user.client.admin.grant_role(user.id, RoleName.ADMIN)


def test_a_profile_is_found_by_its_e_mail_address_in_any_case_and_only_by_it(
    target: Target, account: MakeAccount
) -> None:
    user, other = account(), account()
    admin = target.service().admin
    found = admin.find_profile(f" {user.email.upper()} ")
    assert isinstance(found, Profile) and (found.id, found.email) == (user.id, user.email)
    # Neither a like pattern's wildcards (`_`, and `*`, which PostgREST reads as `%`) nor a regular
    # expression's (`.`, `*`) in an address match other addresses.
    tag = uuid.uuid4().hex[:10]
    wanted = f"{tag}.a_b*c@example.test"
    for decoy in (f"{tag}.a_bzzc@example.test", f"{tag}.azb*c@example.test", f"{tag}za_b*c@example.test"):
        target.create_user(decoy)
    assert admin.find_profile(wanted) is None
    wanted_id, _ = target.create_user(wanted)
    assert (found := admin.find_profile(wanted)) is not None and found.id == wanted_id
    # A user who is not an admin reads their own profile only.
    assert other.client.admin.find_profile(user.email) is None
    assert other.client.admin.find_profile(other.email) is not None
    with pytest.raises(InvalidArgument) as raised:
        admin.find_profile("  ")
    assert raised.value.status == 0  # never sent

    async def as_the_service() -> Profile | None:
        async with AsyncMyceliumClient(target.url, target.service_role_key, retry=FAST_RETRY) as service:
            return await service.admin.find_profile(user.email)

    assert asyncio.run(as_the_service()) == admin.find_profile(user.email)


def test_orders_are_counted_by_status(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    buyer.client.orders.place({listed(provider).id: 1})
    admin = target.service().admin
    counts = admin.order_status_counts()
    with target.connect() as conn:
        held = conn.execute("select status, count(*) from public.orders group by status").fetchall()
    assert {(count.status, count.orders) for count in counts} == {(OrderStatus(s), n) for s, n in held}
    assert any(count.status is OrderStatus.PENDING and count.orders >= 1 for count in counts)
    with pytest.raises(NotAuthorized):
        buyer.client.admin.order_status_counts()

    async def as_the_service() -> list[OrderStatusCount]:
        async with AsyncMyceliumClient(target.url, target.service_role_key, retry=FAST_RETRY) as service:
            return await service.admin.order_status_counts()

    assert asyncio.run(as_the_service()) == counts


def test_an_admin_user_reads_analytics_and_audits_the_ledger(target: Target, account: MakeAccount) -> None:
    sender, recipient = account(funded=4), account()
    sender.client.credits.transfer(recipient.id, 1)
    boss = account()
    target.service().admin.grant_role(boss.id, RoleName.ADMIN)
    admin = boss.client.admin
    assert admin.audit_ledger() == []
    summary = admin.credit_summary()
    assert summary.issued >= 4 and summary.user_accounts >= 2 and isinstance(summary.circulation, Decimal)
    today = datetime.now(UTC).date()
    days = admin.daily_stats(today - timedelta(days=2), today)
    assert [day.day for day in days][-1] == today and days[-1].transferred >= 1
    spenders = admin.top_users("spenders", limit=1000)
    assert any(row.user_id == sender.id and row.total >= 1 for row in spenders)


def test_days_are_rolled_up_once_and_the_backlog_empties(target: Target, account: MakeAccount) -> None:
    admin = target.service().admin
    admin.refresh_ledger_rollups(max_days=3660)  # whatever is complete and not rolled up yet
    assert admin.refresh_ledger_rollups() == 0  # every complete day is rolled up already
    with pytest.raises(InvalidArgument):
        admin.refresh_ledger_rollups(max_days=0)
    days = next(job for job in admin.upkeep_backlog() if job.job == "refresh_ledger_rollups")
    assert (days.overdue, days.due_since) == (0, None)
    with pytest.raises(NotAuthorized):
        account().client.admin.refresh_ledger_rollups()
    with pytest.raises(NotAuthorized):
        account().client.admin.upkeep_backlog()

    async def as_the_service() -> tuple[int, list[UpkeepBacklog]]:
        async with AsyncMyceliumClient(target.url, target.service_role_key, retry=FAST_RETRY) as service:
            return (
                await service.admin.refresh_ledger_rollups(),
                await service.admin.upkeep_backlog(timedelta(hours=1)),
            )

    rolled_up, backlog = asyncio.run(as_the_service())
    assert rolled_up == 0
    jobs = {"release_expired_holds", "expire_credits", "refresh_ledger_rollups", "charge_due_subscriptions"}
    assert {job.job for job in backlog} == jobs
