"""The rows and results the API returns, as pydantic models.

Amounts are `Decimal` (a float is refused even when building a model by hand), times are
timezone-aware, kinds are enums.
"""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from mycelium_client.amounts import to_decimal


def _exact(value: Any) -> Any:
    return value if value is None else to_decimal(value, "a money field")


Money = Annotated[Decimal, BeforeValidator(_exact)]
"""A Decimal field that never accepts a float."""


class Row(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class TransactionKind(StrEnum):
    """What a movement was, seen from one account."""

    PURCHASE = "purchase"
    GRANT = "grant"
    TRANSFER_IN = "transfer_in"
    TRANSFER_OUT = "transfer_out"
    EXPIRY = "expiry"
    LEGACY_MIGRATION = "legacy_migration"
    ORDER_HOLD = "order_hold"
    ORDER_RELEASE = "order_release"
    ORDER_PAYMENT = "order_payment"
    PROVIDER_EARNING = "provider_earning"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class MovementKind(StrEnum):
    """What a movement in the ledger was."""

    PURCHASE = "purchase"
    GRANT = "grant"
    TRANSFER = "transfer"
    EXPIRY = "expiry"
    LEGACY_MIGRATION = "legacy_migration"
    ORDER_HOLD = "order_hold"
    ORDER_RELEASE = "order_release"
    ORDER_PAYMENT = "order_payment"
    PROVIDER_EARNING = "provider_earning"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class BalanceSource(StrEnum):
    """Where a `BalanceChange` came from."""

    BROADCAST = "broadcast"
    POSTGRES_CHANGES = "postgres_changes"
    RESYNC = "resync"  # read after (re)subscribing, so a change during a gap is not missed
    FEED = "feed"


class CreditConfig(Row):
    """The credit's value in USD, its code, name and symbol."""

    usd_rate: Money = Field(alias="tfc_to_usd_rate")
    code: str = Field(alias="credit_currency_code")
    name: str = Field(alias="credit_display_name")
    symbol: str = Field(alias="credit_symbol")
    updated_at: AwareDatetime


class Balance(Row):
    user_id: uuid.UUID
    balance: Money
    held: Money
    updated_at: AwareDatetime


class BalanceChange(Row):
    """A balance as it is after a committed change."""

    user_id: uuid.UUID
    balance: Money
    held: Money
    updated_at: AwareDatetime
    source: BalanceSource


class Transaction(Row):
    """One entry of an account's history: a signed amount and the balance it produced."""

    id: int
    transfer_id: uuid.UUID
    user_id: uuid.UUID
    amount: Money
    kind: TransactionKind
    balance_after: Money
    counterparty_id: uuid.UUID | None = None
    memo: str | None = None
    reference: str | None = None
    created_at: AwareDatetime
    expires_at: AwareDatetime | None = None


class Movement(Row):
    """The result of a purchase, transfer or grant; `balance_after` is the caller's (or the
    recipient's, for purchases and grants). A replayed call returns the first call's result."""

    transfer_id: uuid.UUID
    kind: MovementKind
    amount: Money
    from_user_id: uuid.UUID | None = None
    to_user_id: uuid.UUID | None = None
    usd_amount: Money | None = None
    package_id: uuid.UUID | None = None
    memo: str | None = None
    reference: str | None = None
    expires_at: AwareDatetime | None = None
    created_at: AwareDatetime
    balance_after: Money | None = None


class CreditPackage(Row):
    id: uuid.UUID
    name: str
    description: str | None = None
    price_usd: Money
    bonus_credits: Money
    expires_after: str | None = None  # a PostgreSQL interval as text, e.g. "90 days"
    active: bool
    sort_order: int


class RoleName(StrEnum):
    ADMIN = "admin"
    FARMER = "farmer"
    APP_PROVIDER = "app_provider"
    SERVICE_PROVIDER = "service_provider"


class RoleChange(Row):
    user_id: uuid.UUID
    role: RoleName
    granted: bool


class ExpiryResult(Row):
    as_of: AwareDatetime
    lots_expired: int
    users: int
    credits_expired: Money


class AuditFinding(Row):
    """A broken ledger invariant; `audit_ledger()` returns none when the ledger is sound."""

    check_name: str
    subject: str
    detail: str


class DailyStats(Row):
    day: date
    issued: Money
    purchased: Money
    granted: Money
    transferred: Money
    spent: Money
    expired: Money
    platform_revenue: Money
    circulation: Money
    movements: int


class CreditSummary(Row):
    circulation: Money
    held: Money
    user_accounts: int
    issued: Money
    spent: Money
    expired: Money
    platform_revenue: Money
    rate: Money


class TopUser(Row):
    user_id: uuid.UUID
    email: str | None = None
    total: Money
    movements: int


class AuthUser(Row):
    id: uuid.UUID
    email: str | None = None
    role: str | None = None
    email_confirmed_at: AwareDatetime | None = None
    last_sign_in_at: AwareDatetime | None = None
    created_at: AwareDatetime | None = None
    app_metadata: dict[str, Any] = Field(default_factory=dict)
    user_metadata: dict[str, Any] = Field(default_factory=dict)


class Session(Row):
    access_token: str = Field(repr=False)
    refresh_token: str = Field(repr=False)
    expires_at: int | None = None  # UNIX time
    user: AuthUser


class SignUpResult(Row):
    """The new user, and a session unless the project asks for e-mail confirmation first."""

    user: AuthUser
    session: Session | None = None
