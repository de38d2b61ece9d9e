"""The rows and results the API returns, as pydantic models.

Amounts are `Decimal` (a float is refused even when building a model by hand), times are
timezone-aware, kinds are enums.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, timedelta
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
    model_config = ConfigDict(frozen=True, extra="ignore")


class TransactionKind(StrEnum):
    """What a movement was, seen from one account: the database's `credit_entry_kind`."""

    PURCHASE = "purchase"
    GRANT = "grant"
    TRANSFER_IN = "transfer_in"
    TRANSFER_OUT = "transfer_out"
    EXPIRY = "expiry"
    LEGACY_MIGRATION = "legacy_migration"
    ORDER_HOLD = "order_hold"
    ORDER_RELEASE = "order_release"
    PROVIDER_EARNING = "provider_earning"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class MovementKind(StrEnum):
    """What a movement in the ledger was: the database's `credit_transfer_kind`."""

    PURCHASE = "purchase"
    GRANT = "grant"
    TRANSFER = "transfer"
    EXPIRY = "expiry"
    LEGACY_MIGRATION = "legacy_migration"
    ORDER_HOLD = "order_hold"
    ORDER_RELEASE = "order_release"
    PROVIDER_EARNING = "provider_earning"
    PLATFORM_FEE = "platform_fee"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class BalanceSource(StrEnum):
    """Where a `BalanceChange` came from."""

    BROADCAST = "broadcast"
    POSTGRES_CHANGES = "postgres_changes"
    RESYNC = "resync"  # read after (re)subscribing, so a change during a gap is not missed
    FEED = "feed"


class CreditConfig(Row):
    """The credit's value in USD (`tfc_to_usd_rate`), its code, display name and symbol."""

    tfc_to_usd_rate: Money
    credit_currency_code: str
    credit_display_name: str
    credit_symbol: str
    updated_at: AwareDatetime


class Balance(Row):
    """An account: its balance, the part of it that expires (in lots), and what open orders and
    running subscription periods hold (not in the balance). `burn_rate`: what your running
    subscriptions cost an hour (their prices, and their metered usage of the last 24 hours per
    hour), 0 when nothing runs; `runway_hours`: how long the spendable balance lasts at that rate,
    None when nothing runs."""

    user_id: uuid.UUID
    balance: Money
    expiring: Money
    held: Money
    updated_at: AwareDatetime
    burn_rate: Money | None = None
    runway_hours: Money | None = None


class BalanceChange(Row):
    """A balance as it is after a committed change: the account's columns, the burn rate and
    runway as `Balance` has them (None from Postgres Changes, which sends the account's row only),
    and `source`, which the client adds (not a column): where the change came from."""

    user_id: uuid.UUID
    balance: Money
    held: Money
    updated_at: AwareDatetime
    burn_rate: Money | None = None
    runway_hours: Money | None = None
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


class Profile(Row):
    """A user's profile: one per Auth user, made when Auth creates it, with its e-mail address."""

    id: uuid.UUID
    email: str | None = None
    display_name: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime


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
    tfc_to_usd_rate: Money


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


# -- the marketplace -------------------------------------------------------------------------------
_POSTGRES_INTERVAL = re.compile(
    r"^(?:(?P<years>\d+) years? ?)?(?:(?P<months>\d+) mons? ?)?(?:(?P<days>\d+) days? ?)?"
    r"(?:(?P<hours>\d+):(?P<minutes>\d\d):(?P<seconds>\d\d(?:\.\d+)?))?$"
)


def _interval(value: Any) -> Any:
    """A PostgreSQL interval as PostgREST sends it (`1 day 02:00:00`), as a timedelta; a month
    counts 30 days (a year 12 months), as PostgreSQL counts them when it compares intervals."""
    found = _POSTGRES_INTERVAL.match(value) if isinstance(value, str) and value else None
    if found is None:
        return value  # ISO 8601 and numbers of seconds are pydantic's
    part = {name: Decimal(text or 0) for name, text in found.groupdict().items()}
    days = (part["years"] * 12 + part["months"]) * 30 + part["days"]
    seconds = ((days * 24 + part["hours"]) * 60 + part["minutes"]) * 60 + part["seconds"]
    return timedelta(seconds=int(seconds), microseconds=int(seconds % 1 * 1_000_000))


Interval = Annotated[timedelta, BeforeValidator(_interval)]
"""A PostgreSQL interval, read as a timedelta."""


class ProductCategory(StrEnum):
    """What a product is; the provider's role decides which they may list."""

    COMPUTE = "compute"  # farmers
    NODE = "node"  # farmers
    GATEWAY = "gateway"  # farmers
    APP = "app"  # app providers
    SERVICE = "service"  # service providers


class ProductUnit(StrEnum):
    """What a product's price is for."""

    HOUR = "hour"
    MONTH = "month"
    ONCE = "once"


class ProductSort(StrEnum):
    NEWEST = "newest"
    PRICE_ASC = "price_asc"
    PRICE_DESC = "price_desc"


class OrderStatus(StrEnum):
    """pending -> fulfilled | cancelled | failed; fulfilled -> partially_refunded | refunded."""

    PENDING = "pending"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"  # by the buyer, or its hold expired
    FAILED = "failed"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class _Listing(Row):
    """What a product and a search hit share."""

    id: uuid.UUID
    provider_id: uuid.UUID
    category: ProductCategory
    name: str
    description: str
    price: Money  # TFC per unit
    unit: ProductUnit
    attributes: dict[str, Any]
    capacity: int | None = None  # units that may be sold at once; None: unlimited
    location: str | None = None  # attributes["location"]
    created_at: AwareDatetime


class Product(_Listing):
    """A product of the catalogue, as its provider (and, while active, anyone) reads it."""

    units_in_use: int  # held by pending and fulfilled orders (counted only with a capacity)
    active: bool
    updated_at: AwareDatetime


class ProductHit(_Listing):
    """A product found by `marketplace.search`, with its price in USD (and in the currency asked
    for) and the cursor that resumes the search after it."""

    units_available: int | None = None  # None: unlimited
    price_usd: Money
    currency: str | None = None
    price_in_currency: Money | None = None
    cursor: dict[str, Any]


class ProductPrices(Row):
    """A product's price in TFC, USD and every display currency (display only)."""

    id: uuid.UUID
    name: str
    category: ProductCategory
    unit: ProductUnit
    price: Money
    price_usd: Money
    prices: dict[str, Money]  # by currency code, "TFC" and "USD" included


class DisplayCurrency(Row):
    """A currency prices may be shown in: one unit is worth `usd_per_unit` USD."""

    code: str
    symbol: str
    name: str | None = None
    usd_per_unit: Money
    decimals: int
    updated_at: AwareDatetime


class MarketplaceConfig(Row):
    """The platform's share of each order (snapshotted when it is placed), how long an order
    may stay pending before its hold is released, and how much one buyer may hold pending."""

    platform_fee_percent: Money
    hold_ttl: Interval
    max_pending_orders: int  # how many pending orders one buyer may have at once
    max_pending_capacity_percent: Money  # the share of a product's capacity one buyer may hold pending
    updated_at: AwareDatetime


class OrderItem(Row):
    """What an order bought, at the product's name and price when it was placed."""

    product_id: uuid.UUID
    product_name: str
    category: ProductCategory
    unit: ProductUnit
    quantity: int
    unit_price: Money
    line_total: Money


class Order(Row):
    """An order paid in TFC: its total is held from the buyer while pending, then captured
    (the provider gets the total less the fee) or released; captured orders may be refunded.
    `items` is not a column of orders: its rows of order_items, which the order functions return
    with it and reads embed."""

    id: uuid.UUID
    buyer_id: uuid.UUID
    provider_id: uuid.UUID
    status: OrderStatus
    total: Money
    held_amount: Money
    fee_percent: Money
    fee_amount: Money | None = None  # set when captured
    refunded_amount: Money
    fee_refunded: Money  # the part of the refunds taken from the platform's fee
    idempotency_key: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    fulfilled_at: AwareDatetime | None = None
    items: list[OrderItem] = Field(default_factory=list)


class OrderStatusCount(Row):
    """How many orders there are in one status (`admin.order_status_counts`)."""

    status: OrderStatus
    orders: int


class HoldRelease(Row):
    """The result of `admin.release_expired_holds`: call again while `orders_released` is the
    `max_orders` asked for."""

    as_of: AwareDatetime
    hold_ttl: Interval
    orders_released: int
    credits_released: Money


class UpkeepBacklog(Row):
    """What a periodic job (`job`: its SQL function) has left undone past its due time and the
    grace given: `overdue` items, the oldest due since `due_since`. Nonzero means the scheduler
    (`mycelium upkeep`) is not running, or failing."""

    job: str
    overdue: int
    due_since: AwareDatetime | None


class AppliedMigration(Row):
    """One migration in the database's history (`admin.applied_migrations`): `checksum` is the
    sha256 of the file as `mycelium sql push` applied it, null when the Supabase CLI pushed it
    (which keeps the `statements` it ran instead)."""

    version: str
    name: str
    checksum: str | None
    statements: list[str]


class DatabaseConnections(Row):
    """Client connections open on the database server, and the most it accepts from the API's
    roles (`max_connections` less the slots reserved for superusers)."""

    connections: int
    max_connections: int


class _Earnings(Row):
    """Captured orders and charged subscription periods (`periods` of them): what buyers paid
    (gross), the platform's fee, refunds (fee_refunded of them from the fee) and what the provider
    keeps (net)."""

    provider_id: uuid.UUID
    orders: int
    gross: Money
    fee: Money
    refunded: Money
    fee_refunded: Money
    net: Money
    periods: int = 0


class DailyEarnings(_Earnings):
    """A provider's earnings over one UTC day (orders counted on the day they were fulfilled,
    subscription periods on the day they were charged)."""

    day: date


class MonthlyEarnings(_Earnings):
    """A provider's earnings over one UTC month, `month` being its first day (orders counted in
    the month they were fulfilled, subscription periods in the month they were charged)."""

    month: date


class ProductEarnings(_Earnings):
    """A provider's earnings from one product (an order's fee and refunds shared between its
    items in proportion to their line totals); `units`: those sold by orders."""

    product_id: uuid.UUID
    product_name: str
    category: ProductCategory
    units: int


class CategorySpending(Row):
    """What a buyer spent in one category: captured orders net of refunds, and charged
    subscription periods (`periods` of them; `orders` and `units` are the orders')."""

    buyer_id: uuid.UUID
    category: ProductCategory
    orders: int
    units: int
    paid: Money
    refunded: Money
    spent: Money
    periods: int = 0


# -- subscriptions ---------------------------------------------------------------------------------
class SubscriptionStatus(StrEnum):
    """active -> grace (the balance could not renew it) -> suspended -> cancelled; a top-up resumes a
    grace or suspended one (active again); stopped by its buyer, provider or the service."""

    ACTIVE = "active"
    GRACE = "grace"  # unpaid, the workload runs on
    SUSPENDED = "suspended"  # unpaid, the provider stops the workload
    STOPPED = "stopped"
    CANCELLED = "cancelled"  # unpaid past the suspension, or its product off sale


class SubscriptionEventKind(StrEnum):
    """What happened to a subscription (`subscription_events.event`)."""

    STARTED = "started"
    RENEWED = "renewed"
    GRACE = "grace"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    STOPPED = "stopped"
    CANCELLED = "cancelled"


class PeriodKind(StrEnum):
    PERIOD = "period"  # held in advance, charged when it ends (or by the started hour when stopped)
    ARREARS = "arrears"  # unpaid time, charged when resumed or ended
    USAGE = "usage"  # the metered usage reported for a period


class PeriodStatus(StrEnum):
    HELD = "held"
    CHARGED = "charged"


class SubscriptionPeriod(Row):
    """One period of a subscription, numbered by `seq`: held from the buyer in advance, charged once
    (`charged_amount`, of which `fee_amount` is the platform's; the rest of `amount` went back)."""

    id: uuid.UUID
    subscription_id: uuid.UUID
    seq: int
    kind: PeriodKind
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    unit_price: Money | None = None  # none for usage, whose reports carry theirs
    quantity: int
    amount: Money
    fee_percent: Money
    status: PeriodStatus
    held_amount: Money
    charged_amount: Money | None = None
    fee_amount: Money | None = None
    created_at: AwareDatetime
    charged_at: AwareDatetime | None = None


class Subscription(Row):
    """A product that runs until stopped, paid a period at a time. `period` is not a column: the
    running (last) period, which the subscription functions return with it (reads leave it out)."""

    id: uuid.UUID
    buyer_id: uuid.UUID
    provider_id: uuid.UUID
    product_id: uuid.UUID
    quantity: int
    unit: ProductUnit
    status: SubscriptionStatus
    due_at: AwareDatetime | None = None  # when the batch looks at it next; None once ended
    paid_until: AwareDatetime
    grace_since: AwareDatetime | None = None
    suspended_at: AwareDatetime | None = None
    periods: int
    idempotency_key: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    period: SubscriptionPeriod | None = None


class SubscriptionUsage(Row):
    """A report of metered usage (`quantity` of `unit` at `unit_price`, the product's usage price
    when reported); `charge_id` is the usage period that charged it, None until then."""

    id: uuid.UUID
    subscription_id: uuid.UUID
    unit: str
    quantity: Money
    unit_price: Money
    idempotency_key: str
    reported_by: uuid.UUID | None = None
    reported_role: str
    reported_at: AwareDatetime
    charge_id: uuid.UUID | None = None


class SubscriptionEvent(Row):
    """What happened to a subscription, for its buyer and its provider (who starts and stops the
    workload); `amount` is what it held or charged the buyer. Ids grow with time."""

    id: int
    subscription_id: uuid.UUID
    buyer_id: uuid.UUID
    provider_id: uuid.UUID
    event: SubscriptionEventKind
    period_id: uuid.UUID | None = None
    amount: Money | None = None
    reason: str | None = None
    changed_by: uuid.UUID | None = None
    changed_role: str
    at: AwareDatetime


class LowBalanceWarning(Row):
    """Your balance lasted fewer than `threshold_hours` at what your running subscriptions cost."""

    id: int
    user_id: uuid.UUID
    cost_per_hour: Money
    balance: Money
    runway_hours: Money
    threshold_hours: int
    at: AwareDatetime


class SubscriptionConfig(Row):
    """How long an unpaid subscription runs on (grace) and then stays suspended before it is
    cancelled, and below how many hours of running costs a balance is low (0: never warned)."""

    grace_period: Interval
    suspension_period: Interval
    low_balance_hours: int
    updated_at: AwareDatetime


class SubscriptionCharge(Row):
    """One call of the batch (`admin.charge_due_subscriptions`): call again while `done` is false
    (false also when the batch left a subscription whose buyer's account another transaction held;
    a call that moved nothing on can wait for the next round). The counts are the steps taken (a
    subscription behind by several periods renews several times)."""

    as_of: AwareDatetime
    done: bool
    credits_charged: Money
    periods_charged: int
    renewed: int
    grace: int
    suspended: int
    resumed: int
    cancelled: int
