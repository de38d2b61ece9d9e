"""`client.admin`: for the service_role key or an admin user. Purchases for confirmed payments,
grants, the credit configuration, roles, users' profiles by e-mail address, analytics, the ledger
audit and the expiry sweep; the marketplace's configuration, display currencies, products taken
off sale, orders counted by status and the sweep of expired order holds; the subscriptions' batch
and configuration."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any, Literal

from mycelium_client._http import AsyncTransport, Call, M, SyncTransport, rows, rpc
from mycelium_client._observe import event, logs_totals
from mycelium_client.amounts import AmountLike, amount, rate, to_decimal
from mycelium_client.credits import UserRef, new_idempotency_key
from mycelium_client.errors import InvalidArgument
from mycelium_client.marketplace import ProductRef
from mycelium_client.models import (
    AppliedMigration,
    AuditFinding,
    CreditConfig,
    CreditSummary,
    DailyStats,
    DatabaseConnections,
    DisplayCurrency,
    ExpiryResult,
    HoldRelease,
    MarketplaceConfig,
    Movement,
    OrderStatusCount,
    Product,
    Profile,
    RoleChange,
    RoleName,
    SubscriptionCharge,
    SubscriptionConfig,
    TopUser,
    UpkeepBacklog,
)

log = logging.getLogger("mycelium.client.admin")


def purchase_call(
    user_id: UserRef, usd_amount: AmountLike, payment_reference: str, package_id: UserRef | None
) -> Call[Movement]:
    # The payment reference is the idempotency key: one payment buys credits once.
    if not payment_reference:
        raise InvalidArgument("payment_reference is required", reason="invalid_argument")
    return rpc(
        "purchase_credits",
        Movement.model_validate,
        safe=True,
        user_id=str(user_id),
        usd_amount=amount(usd_amount, "usd_amount"),
        payment_reference=payment_reference,
        package_id=None if package_id is None else str(package_id),
    )


def grant_call(
    user_id: UserRef, value: AmountLike, reason: str, expires_at: datetime | None, idempotency_key: str | None
) -> Call[Movement]:
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidArgument("expires_at must be timezone-aware", reason="invalid_argument")
    return rpc(
        "grant_credits",
        Movement.model_validate,
        safe=True,
        user_id=str(user_id),
        amount=amount(value),
        reason=reason,
        expires_at=expires_at,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def set_config_call(
    tfc_to_usd_rate: AmountLike | None,
    credit_currency_code: str | None,
    credit_display_name: str | None,
    credit_symbol: str | None,
) -> Call[CreditConfig]:
    # Not idempotent in effect (each call is a history row): only retried if never sent.
    rate = None if tfc_to_usd_rate is None else to_decimal(tfc_to_usd_rate, "tfc_to_usd_rate")
    return rpc(
        "set_credit_config",
        CreditConfig.model_validate,
        safe=False,
        tfc_to_usd_rate=rate,
        credit_currency_code=credit_currency_code,
        credit_display_name=credit_display_name,
        credit_symbol=credit_symbol,
    )


def role_call(
    name: Literal["grant_role", "revoke_role"], user_id: UserRef, role: RoleName | str
) -> Call[RoleChange]:
    return rpc(name, RoleChange.model_validate, safe=True, user_id=str(user_id), role=RoleName(role).value)


def exactly(text: str) -> str:
    """A regular expression that matches `text` and nothing else: every ASCII character but
    letters and digits escaped (in PostgreSQL's regular expressions a backslash before any other
    character makes it literal)."""
    return "^" + "".join(f"\\{c}" if c.isascii() and not c.isalnum() else c for c in text) + "$"


def find_profile_call(email: str) -> Call[Profile | None]:
    address = email.strip()
    if not address:
        raise InvalidArgument("an e-mail address is required", reason="invalid_argument")
    # Case-insensitive (imatch) and exact: PostgREST reads every `*` of a like pattern as `%`,
    # and `*` may be part of an address. The oldest profile if case alone tells several apart.
    params = {"email": f"imatch.{exactly(address)}", "order": "created_at,id", "limit": "1"}
    return Call("GET", "/profiles", lambda found: Profile.model_validate(found[0]) if found else None, params)


def daily_stats_call(from_day: date | None, to_day: date | None) -> Call[list[DailyStats]]:
    return rpc("platform_daily_stats", rows(DailyStats), safe=True, from_day=from_day, to_day=to_day)


def summary_call() -> Call[CreditSummary]:
    return rpc(
        "platform_credit_summary",
        logs_totals("credit_summary", "credit totals", CreditSummary.model_validate),
        safe=True,
    )


def top_users_call(
    direction: Literal["spenders", "earners"], from_day: date | None, to_day: date | None, limit: int
) -> Call[list[TopUser]]:
    return rpc(
        "top_credit_users",
        rows(TopUser),
        safe=True,
        direction=direction,
        from_day=from_day,
        to_day=to_day,
        max_rows=limit,
    )


def audited(found: Any) -> list[AuditFinding]:
    """The audit's findings, logged (the ledger's soundness is what operators watch): at INFO
    when there is none, else at ERROR with every finding."""
    findings = rows(AuditFinding)(found)
    event(
        log,
        logging.ERROR if findings else logging.INFO,
        "ledger_audit",
        f"ledger audit: {len(findings)} broken invariant(s)" if findings else "ledger audit: clean",
        clean=not findings,
        findings=[finding.model_dump() for finding in findings],
    )
    return findings


def audit_call() -> Call[list[AuditFinding]]:
    return rpc("audit_ledger", audited, safe=True)


def sweep_call(
    function: str, name: str, what: str, model: type[M], as_of: datetime | None, **budget: int | None
) -> Call[M]:
    """A batch of a periodic sweep up to `as_of` within `budget`, its totals logged as the event
    `name`. Every sweep takes each item once, so a batch is safe to retry."""
    return rpc(function, logs_totals(name, what, model.model_validate), safe=True, as_of=as_of, **budget)


def expire_call(as_of: datetime | None, max_lots: int | None) -> Call[ExpiryResult]:
    # Each lot expires once (a unique reference per lot).
    return sweep_call(
        "expire_credits", "credits_expired", "expired credits", ExpiryResult, as_of, max_lots=max_lots
    )


def rolled_up(found: Any) -> int:
    days = int(found)
    event(log, logging.INFO, "ledger_rolled_up", f"rolled up {days} day(s)", days=days)
    return days


def rollups_call(max_days: int | None) -> Call[int]:
    # Each day is rolled up once: safe to retry.
    return rpc("refresh_ledger_rollups", rolled_up, safe=True, max_days=max_days)


def backlog_call(grace: timedelta | None) -> Call[list[UpkeepBacklog]]:
    return rpc("upkeep_backlog", rows(UpkeepBacklog), safe=True, grace=grace)


def applied_migrations_call() -> Call[list[AppliedMigration]]:
    return rpc("applied_migrations", rows(AppliedMigration), safe=True)


def connections_call() -> Call[DatabaseConnections]:
    return rpc("database_connections", DatabaseConnections.model_validate, safe=True)


def set_marketplace_config_call(
    platform_fee_percent: AmountLike | None,
    hold_ttl: timedelta | None,
    max_pending_orders: int | None,
    max_pending_capacity_percent: AmountLike | None,
) -> Call[MarketplaceConfig]:
    # Each call is a history row, as for the credit config: only retried if never sent.
    fee = None if platform_fee_percent is None else to_decimal(platform_fee_percent, "platform_fee_percent")
    share = (
        None
        if max_pending_capacity_percent is None
        else to_decimal(max_pending_capacity_percent, "max_pending_capacity_percent")
    )
    return rpc(
        "set_marketplace_config",
        MarketplaceConfig.model_validate,
        safe=False,
        platform_fee_percent=fee,
        hold_ttl=hold_ttl,
        max_pending_orders=max_pending_orders,
        max_pending_capacity_percent=share,
    )


def set_product_active_call(product_id: ProductRef, active: bool, reason: str) -> Call[Product]:
    # Each call is a moderation record: only retried if never sent.
    if not reason.strip():
        raise InvalidArgument("a reason is required", reason="invalid_argument")
    return rpc(
        "set_product_active",
        Product.model_validate,
        safe=False,
        product_id=str(product_id),
        active=active,
        reason=reason,
    )


def order_status_counts_call() -> Call[list[OrderStatusCount]]:
    return rpc("order_status_counts", rows(OrderStatusCount), safe=True)


def release_holds_call(as_of: datetime | None, max_orders: int | None) -> Call[HoldRelease]:
    # Only pending orders are released, each once.
    return sweep_call(
        "release_expired_holds",
        "holds_released",
        "released expired holds",
        HoldRelease,
        as_of,
        max_orders=max_orders,
    )


def charge_subscriptions_call(as_of: datetime | None, max_periods: int | None) -> Call[SubscriptionCharge]:
    # Each period is charged once, under its subscription's lock.
    return sweep_call(
        "charge_due_subscriptions",
        "subscriptions_charged",
        "charged subscriptions",
        SubscriptionCharge,
        as_of,
        max_periods=max_periods,
    )


def set_subscription_config_call(
    grace_period: timedelta | None, suspension_period: timedelta | None, low_balance_hours: int | None
) -> Call[SubscriptionConfig]:
    # Each call is a history row, as for the other configurations: only retried if never sent.
    return rpc(
        "set_subscription_config",
        SubscriptionConfig.model_validate,
        safe=False,
        grace_period=grace_period,
        suspension_period=suspension_period,
        low_balance_hours=low_balance_hours,
    )


def set_currency_call(
    code: str, usd_per_unit: AmountLike, symbol: str | None, name: str | None, decimals: int | None
) -> Call[DisplayCurrency]:
    # An upsert to the same values: safe to retry.
    return rpc(
        "set_display_currency",
        DisplayCurrency.model_validate,
        safe=True,
        code=code,
        usd_per_unit=rate(usd_per_unit, "usd_per_unit"),
        symbol=symbol,
        name=name,
        decimals=decimals,
    )


def remove_currency_call(code: str) -> Call[None]:
    # Without usd_per_unit the SQL removes the currency.
    return rpc("set_display_currency", lambda _: None, safe=True, code=code)


class Admin:
    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport

    def purchase_credits(
        self,
        user_id: UserRef,
        usd_amount: AmountLike,
        payment_reference: str,
        package_id: UserRef | None = None,
    ) -> Movement:
        """Credit a confirmed payment (service_role only); the same reference again is a replay."""
        return self._transport.send(purchase_call(user_id, usd_amount, payment_reference, package_id))

    def grant_credits(
        self,
        user_id: UserRef,
        amount: AmountLike,
        reason: str,
        *,
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Movement:
        """Promotional credits, optionally expiring."""
        return self._transport.send(grant_call(user_id, amount, reason, expires_at, idempotency_key))

    def set_credit_config(
        self,
        *,
        tfc_to_usd_rate: AmountLike | None = None,
        credit_currency_code: str | None = None,
        credit_display_name: str | None = None,
        credit_symbol: str | None = None,
    ) -> CreditConfig:
        """Change what is given; the rest stays."""
        return self._transport.send(
            set_config_call(tfc_to_usd_rate, credit_currency_code, credit_display_name, credit_symbol)
        )

    def grant_role(self, user_id: UserRef, role: RoleName | str) -> RoleChange:
        return self._transport.send(role_call("grant_role", user_id, role))

    def revoke_role(self, user_id: UserRef, role: RoleName | str) -> RoleChange:
        return self._transport.send(role_call("revoke_role", user_id, role))

    def find_profile(self, email: str) -> Profile | None:
        """The profile of the user with this e-mail address, in any case; None if there is none
        (or, for a user who is not an admin, none but their own)."""
        return self._transport.send(find_profile_call(email))

    def daily_stats(self, from_day: date | None = None, to_day: date | None = None) -> list[DailyStats]:
        """Issued, spent, transferred, expired, revenue and circulation per UTC day."""
        return self._transport.send(daily_stats_call(from_day, to_day))

    def credit_summary(self) -> CreditSummary:
        return self._transport.send(summary_call())

    def top_users(
        self,
        direction: Literal["spenders", "earners"] = "spenders",
        from_day: date | None = None,
        to_day: date | None = None,
        limit: int = 10,
    ) -> list[TopUser]:
        return self._transport.send(top_users_call(direction, from_day, to_day, limit))

    def audit_ledger(self) -> list[AuditFinding]:
        """Every ledger invariant checked in one snapshot: empty when the ledger is sound."""
        return self._transport.send(audit_call())

    def expire_credits(self, as_of: datetime | None = None, *, max_lots: int | None = None) -> ExpiryResult:
        """Sweep what is left of lots expired by `as_of` (default: now); service_role only. About
        `max_lots` lots a call (default 1000): call again while `lots_expired` reaches it."""
        return self._transport.send(expire_call(as_of, max_lots))

    def refresh_ledger_rollups(self, *, max_days: int | None = None) -> int:
        """Roll up the complete UTC days not rolled up yet, oldest first, at most `max_days` a call
        (default 1), so that platform analytics read one row a day; returns how many days were
        added (call again while that is `max_days`). `mycelium upkeep` runs it."""
        return self._transport.send(rollups_call(max_days))

    def upkeep_backlog(self, grace: timedelta | None = None) -> list[UpkeepBacklog]:
        """What each periodic job has left undone for longer than `grace` (default 15 minutes)
        past its due time: all zero while `mycelium upkeep` runs."""
        return self._transport.send(backlog_call(grace))

    def applied_migrations(self) -> list[AppliedMigration]:
        """The database's migration history, to compare with the migrations this install
        shipped with (`cli.migrations`): what the exporter's migration alerts watch."""
        return self._transport.send(applied_migrations_call())

    def database_connections(self) -> DatabaseConnections:
        """Client connections open on the database, and the most it accepts from the API."""
        return self._transport.send(connections_call())

    def set_marketplace_config(
        self,
        *,
        platform_fee_percent: AmountLike | None = None,
        hold_ttl: timedelta | None = None,
        max_pending_orders: int | None = None,
        max_pending_capacity_percent: AmountLike | None = None,
    ) -> MarketplaceConfig:
        """Change what is given; the rest stays. A new fee applies to orders placed from now on;
        the bounds on what one buyer holds pending apply to the next order."""
        return self._transport.send(
            set_marketplace_config_call(
                platform_fee_percent, hold_ttl, max_pending_orders, max_pending_capacity_percent
            )
        )

    def set_product_active(self, product_id: ProductRef, active: bool, reason: str) -> Product:
        """Take a product off sale (`active=False`), or lift such a take-down (`True`): admins
        and the service only, recorded with the reason. Its provider cannot put back on sale
        what was taken down, nor can an admin what its provider took off sale."""
        return self._transport.send(set_product_active_call(product_id, active, reason))

    def release_expired_holds(
        self, as_of: datetime | None = None, *, max_orders: int | None = None
    ) -> HoldRelease:
        """Cancel orders pending for longer than the hold TTL (service_role only), giving their
        holds back; at most `max_orders` a call (default 1000: call again while `orders_released`
        is `max_orders`)."""
        return self._transport.send(release_holds_call(as_of, max_orders))

    def order_status_counts(self) -> list[OrderStatusCount]:
        """How many orders are in each status (only statuses some order is in)."""
        return self._transport.send(order_status_counts_call())

    def charge_due_subscriptions(
        self, as_of: datetime | None = None, *, max_periods: int | None = None
    ) -> SubscriptionCharge:
        """The subscriptions' batch (service_role only), in one transaction: pay the periods ended
        by `as_of` (default now; never later) and hold the next ones, move unpaid subscriptions on
        (grace, suspended, cancelled) and resume those whose balance now covers them; at most
        `max_periods` steps a call (default 500: call again while `done` is false)."""
        return self._transport.send(charge_subscriptions_call(as_of, max_periods))

    def set_subscription_config(
        self,
        *,
        grace_period: timedelta | None = None,
        suspension_period: timedelta | None = None,
        low_balance_hours: int | None = None,
    ) -> SubscriptionConfig:
        """Change the subscriptions' configuration (admins and the service); None leaves a
        setting as it is."""
        return self._transport.send(
            set_subscription_config_call(grace_period, suspension_period, low_balance_hours)
        )

    def set_display_currency(
        self,
        code: str,
        usd_per_unit: AmountLike,
        *,
        symbol: str | None = None,
        name: str | None = None,
        decimals: int | None = None,
    ) -> DisplayCurrency:
        """Add or change a currency prices may be shown in; one unit is worth `usd_per_unit` USD."""
        return self._transport.send(set_currency_call(code, usd_per_unit, symbol, name, decimals))

    def remove_display_currency(self, code: str) -> None:
        self._transport.send(remove_currency_call(code))


class AsyncAdmin:
    """The async twin of `Admin`."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def purchase_credits(
        self,
        user_id: UserRef,
        usd_amount: AmountLike,
        payment_reference: str,
        package_id: UserRef | None = None,
    ) -> Movement:
        return await self._transport.send(purchase_call(user_id, usd_amount, payment_reference, package_id))

    async def grant_credits(
        self,
        user_id: UserRef,
        amount: AmountLike,
        reason: str,
        *,
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Movement:
        return await self._transport.send(grant_call(user_id, amount, reason, expires_at, idempotency_key))

    async def set_credit_config(
        self,
        *,
        tfc_to_usd_rate: AmountLike | None = None,
        credit_currency_code: str | None = None,
        credit_display_name: str | None = None,
        credit_symbol: str | None = None,
    ) -> CreditConfig:
        return await self._transport.send(
            set_config_call(tfc_to_usd_rate, credit_currency_code, credit_display_name, credit_symbol)
        )

    async def grant_role(self, user_id: UserRef, role: RoleName | str) -> RoleChange:
        return await self._transport.send(role_call("grant_role", user_id, role))

    async def revoke_role(self, user_id: UserRef, role: RoleName | str) -> RoleChange:
        return await self._transport.send(role_call("revoke_role", user_id, role))

    async def find_profile(self, email: str) -> Profile | None:
        return await self._transport.send(find_profile_call(email))

    async def daily_stats(self, from_day: date | None = None, to_day: date | None = None) -> list[DailyStats]:
        return await self._transport.send(daily_stats_call(from_day, to_day))

    async def credit_summary(self) -> CreditSummary:
        return await self._transport.send(summary_call())

    async def top_users(
        self,
        direction: Literal["spenders", "earners"] = "spenders",
        from_day: date | None = None,
        to_day: date | None = None,
        limit: int = 10,
    ) -> list[TopUser]:
        return await self._transport.send(top_users_call(direction, from_day, to_day, limit))

    async def audit_ledger(self) -> list[AuditFinding]:
        return await self._transport.send(audit_call())

    async def expire_credits(
        self, as_of: datetime | None = None, *, max_lots: int | None = None
    ) -> ExpiryResult:
        return await self._transport.send(expire_call(as_of, max_lots))

    async def refresh_ledger_rollups(self, *, max_days: int | None = None) -> int:
        return await self._transport.send(rollups_call(max_days))

    async def upkeep_backlog(self, grace: timedelta | None = None) -> list[UpkeepBacklog]:
        return await self._transport.send(backlog_call(grace))

    async def applied_migrations(self) -> list[AppliedMigration]:
        return await self._transport.send(applied_migrations_call())

    async def database_connections(self) -> DatabaseConnections:
        return await self._transport.send(connections_call())

    async def set_marketplace_config(
        self,
        *,
        platform_fee_percent: AmountLike | None = None,
        hold_ttl: timedelta | None = None,
        max_pending_orders: int | None = None,
        max_pending_capacity_percent: AmountLike | None = None,
    ) -> MarketplaceConfig:
        return await self._transport.send(
            set_marketplace_config_call(
                platform_fee_percent, hold_ttl, max_pending_orders, max_pending_capacity_percent
            )
        )

    async def set_product_active(self, product_id: ProductRef, active: bool, reason: str) -> Product:
        return await self._transport.send(set_product_active_call(product_id, active, reason))

    async def release_expired_holds(
        self, as_of: datetime | None = None, *, max_orders: int | None = None
    ) -> HoldRelease:
        return await self._transport.send(release_holds_call(as_of, max_orders))

    async def order_status_counts(self) -> list[OrderStatusCount]:
        return await self._transport.send(order_status_counts_call())

    async def charge_due_subscriptions(
        self, as_of: datetime | None = None, *, max_periods: int | None = None
    ) -> SubscriptionCharge:
        return await self._transport.send(charge_subscriptions_call(as_of, max_periods))

    async def set_subscription_config(
        self,
        *,
        grace_period: timedelta | None = None,
        suspension_period: timedelta | None = None,
        low_balance_hours: int | None = None,
    ) -> SubscriptionConfig:
        return await self._transport.send(
            set_subscription_config_call(grace_period, suspension_period, low_balance_hours)
        )

    async def set_display_currency(
        self,
        code: str,
        usd_per_unit: AmountLike,
        *,
        symbol: str | None = None,
        name: str | None = None,
        decimals: int | None = None,
    ) -> DisplayCurrency:
        return await self._transport.send(set_currency_call(code, usd_per_unit, symbol, name, decimals))

    async def remove_display_currency(self, code: str) -> None:
        await self._transport.send(remove_currency_call(code))


__all__ = ["Admin", "AsyncAdmin"]
