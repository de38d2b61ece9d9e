"""The client speaks the database's vocabulary: its enums name exactly the values the database
accepts (a value the database adds would fail to parse in every client, one it never had would
filter on nothing), every reason the SQL fails with has its exception class, and every field of a
model is named after a column of what feeds it (a table, a view, a function's result)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import psycopg
import pytest
from psycopg.rows import TupleRow
from pydantic import BaseModel
from supabase_auth.types import AuthResponse
from supabase_auth.types import Session as AuthSessionData
from supabase_auth.types import User as AuthUserData

from mycelium_client import (
    AppliedMigration,
    AuditFinding,
    AuthUser,
    Balance,
    BalanceChange,
    CategorySpending,
    CreditConfig,
    CreditPackage,
    CreditSummary,
    DailyEarnings,
    DailyStats,
    DatabaseConnections,
    DisplayCurrency,
    ExpiryResult,
    HoldRelease,
    LowBalanceWarning,
    MarketplaceConfig,
    MonthlyEarnings,
    Movement,
    MovementKind,
    MyceliumError,
    Order,
    OrderItem,
    OrderStatus,
    OrderStatusCount,
    PeriodKind,
    PeriodStatus,
    Product,
    ProductCategory,
    ProductEarnings,
    ProductHit,
    ProductPrices,
    ProductUnit,
    Profile,
    RoleChange,
    RoleName,
    Session,
    SignUpResult,
    Subscription,
    SubscriptionCharge,
    SubscriptionConfig,
    SubscriptionEvent,
    SubscriptionEventKind,
    SubscriptionPeriod,
    SubscriptionStatus,
    SubscriptionUsage,
    TopUser,
    Transaction,
    TransactionKind,
    UpkeepBacklog,
    models,
)
from mycelium_client.errors import error_class
from mycelium_client.models import Row
from tests.support import REPO, Api, User, body

SQL_FOLDER = REPO / "sql"
# The reason a business rule fails with: the first argument of mycelium_private.fail.
FAIL_REASON = re.compile(r"mycelium_private\.fail\(\s*'([a-z_]+)'")

# A text literal in a CHECK as pg_get_constraintdef prints it: 'value'::text ('' is a quote).
TEXT_LITERAL = re.compile(r"'((?:[^']|'')*)'::text")


def domain_values(db: psycopg.Connection[TupleRow], domain: str) -> set[str]:
    rows = db.execute(
        "select pg_get_constraintdef(c.oid) from pg_constraint c where c.contypid = %s::regtype",
        (domain,),
    ).fetchall()
    return literals(rows)


def column_values(db: psycopg.Connection[TupleRow], table: str, column: str) -> set[str]:
    """The values allowed by the CHECKs on `column` alone."""
    rows = db.execute(
        "select pg_get_constraintdef(c.oid) from pg_constraint c "
        "join pg_attribute a on a.attrelid = c.conrelid and c.conkey = array[a.attnum] "
        "where c.conrelid = %s::regclass and c.contype = 'c' and a.attname = %s",
        (table, column),
    ).fetchall()
    return literals(rows)


def literals(rows: list[TupleRow]) -> set[str]:
    assert rows, "no CHECK found: the test reads the wrong place"
    return {value.replace("''", "'") for (definition,) in rows for value in TEXT_LITERAL.findall(definition)}


@pytest.mark.parametrize(
    ("enum", "domain"),
    [(TransactionKind, "public.credit_entry_kind"), (MovementKind, "public.credit_transfer_kind")],
)
def test_ledger_kinds_are_the_database_domains(
    db: psycopg.Connection[TupleRow], enum: type[StrEnum], domain: str
) -> None:
    assert {member.value for member in enum} == domain_values(db, domain)


@pytest.mark.parametrize(
    ("enum", "table", "column"),
    [
        (RoleName, "public.user_roles", "role"),
        (ProductCategory, "public.products", "category"),
        (ProductUnit, "public.products", "unit"),
        (OrderStatus, "public.orders", "status"),
        (SubscriptionStatus, "public.subscriptions", "status"),
        (SubscriptionEventKind, "public.subscription_events", "event"),
        (PeriodKind, "public.subscription_periods", "kind"),
        (PeriodStatus, "public.subscription_periods", "status"),
    ],
)
def test_enums_are_the_database_checks(
    db: psycopg.Connection[TupleRow], enum: type[StrEnum], table: str, column: str
) -> None:
    assert {member.value for member in enum} == column_values(db, table, column)


def test_every_reason_the_sql_fails_with_has_its_exception() -> None:
    sql = "\n".join(path.read_text(encoding="utf-8") for path in SQL_FOLDER.glob("*.sql"))
    reasons = set(FAIL_REASON.findall(sql))
    assert {"insufficient_credits", "append_only", "not_authorized"} <= reasons, "the pattern misses calls"
    # Status 0: no HTTP status to fall back on, so only the reason can name the class.
    unmapped = sorted(reason for reason in reasons if error_class(reason, 0) is MyceliumError)
    assert unmapped == []


# -- each model's fields are named after the columns of what feeds it -------------------------------
@dataclass(frozen=True)
class Probe:
    """What a source is read with: the catalog, the API as service_role, and new users."""

    db: psycopg.Connection[TupleRow]
    api: Api
    make_user: Callable[..., User]


Source = Callable[[Probe], set[str]]

ROW_TYPE_COLUMNS = (
    "select a.attname from pg_type t join pg_attribute a on a.attrelid = t.typrelid "
    "where t.oid = %s::regtype and a.attnum > 0 and not a.attisdropped"
)
# `returns table (...)` declares its columns as arguments of mode 't'; `returns [setof] <row type>`
# has that type's.
RESULT_COLUMNS = (
    "select x.name from pg_proc p, unnest(p.proargnames, p.proargmodes::text[]) x(name, mode) "
    "where p.oid = %(function)s::regproc and x.mode = 't' "
    "union all "
    "select a.attname from pg_proc p join pg_type t on t.oid = p.prorettype "
    "join pg_attribute a on a.attrelid = t.typrelid "
    "where p.oid = %(function)s::regproc and a.attnum > 0 and not a.attisdropped"
)
# A time before anything was due: the sweeps answer and change nothing.
PAST = "2000-01-01T00:00:00Z"


def relation(name: str) -> Source:
    """The columns of a table, a view or a composite type."""
    return lambda probe: {row[0] for row in probe.db.execute(ROW_TYPE_COLUMNS, (name,)).fetchall()}


def returned(function: str) -> Source:
    """The columns a function declares it returns."""
    return lambda probe: {
        row[0] for row in probe.db.execute(RESULT_COLUMNS, {"function": function}).fetchall()
    }


def answer(function: str, arguments: Callable[[Probe], dict[str, object]] = lambda _: {}) -> Source:
    """The keys of the JSON object a function returns (its type, jsonb, declares none), called
    through the API with the service key, as the client calls it."""

    def keys(probe: Probe) -> set[str]:
        response = probe.api.rpc(function, **arguments(probe))
        assert response.status_code == 200, response.text
        return set(body(response))

    return keys


def fields_of(model: type[BaseModel]) -> Source:
    """What supabase-auth reads from Auth's answers, which the client's Auth models are made from."""
    return lambda _: set(model.model_fields)


SOURCES: dict[type[Row], Source] = {
    CreditConfig: relation("public.credit_config"),  # set_credit_config returns its row too
    Balance: relation("public.credit_balances"),
    BalanceChange: relation("public.credit_balances"),  # Broadcast and the feed send its columns
    Transaction: relation("public.credit_transactions"),
    Movement: answer(  # what transfers and grants return too
        "purchase_credits",
        lambda probe: {
            "user_id": probe.make_user().id,
            "usd_amount": "1",
            "payment_reference": f"vocabulary-{uuid.uuid4()}",
        },
    ),
    CreditPackage: relation("public.credit_packages"),
    Profile: relation("public.profiles"),
    RoleChange: answer("grant_role", lambda probe: {"user_id": probe.make_user().id, "role": "farmer"}),
    ExpiryResult: answer("expire_credits", lambda _: {"as_of": PAST}),
    AuditFinding: returned("public.audit_ledger"),
    DailyStats: returned("public.platform_daily_stats"),
    CreditSummary: answer("platform_credit_summary"),
    TopUser: returned("public.top_credit_users"),
    AuthUser: fields_of(AuthUserData),
    Session: fields_of(AuthSessionData),
    SignUpResult: fields_of(AuthResponse),
    Product: relation("public.products"),
    ProductHit: returned("public.search_products"),
    ProductPrices: relation("public.product_prices"),
    DisplayCurrency: relation("public.display_currencies"),
    MarketplaceConfig: relation("public.marketplace_config"),
    OrderItem: relation("public.order_items"),
    Order: relation("public.orders"),  # the order functions return to_jsonb of its row, plus items
    OrderStatusCount: returned("public.order_status_counts"),
    HoldRelease: answer("release_expired_holds", lambda _: {"as_of": PAST}),
    UpkeepBacklog: returned("public.upkeep_backlog"),
    AppliedMigration: returned("public.applied_migrations"),
    DatabaseConnections: answer("database_connections"),
    DailyEarnings: relation("public.provider_earnings_daily"),
    MonthlyEarnings: relation("public.provider_earnings_monthly"),
    ProductEarnings: relation("public.provider_earnings_by_product"),
    CategorySpending: relation("public.buyer_spending_by_category"),
    # The subscription functions return to_jsonb of its row, plus its running period.
    Subscription: relation("public.subscriptions"),
    SubscriptionPeriod: relation("public.subscription_periods"),
    SubscriptionUsage: relation("public.subscription_usage"),  # report_usage returns its row
    SubscriptionEvent: relation("public.subscription_events"),
    LowBalanceWarning: relation("public.low_balance_warnings"),
    SubscriptionConfig: relation("public.subscription_config"),
    SubscriptionCharge: answer("charge_due_subscriptions", lambda _: {"as_of": PAST}),
}
# Fields the client adds to what its source sends (each says so in its model).
COMPUTED: dict[type[Row], set[str]] = {
    BalanceChange: {"source"},
    Order: {"items"},
    Subscription: {"period"},
}


def test_every_model_has_its_source() -> None:
    """A new model needs its source here, else its fields are not checked."""
    defined = {
        value
        for name, value in vars(models).items()
        if isinstance(value, type)
        and issubclass(value, Row)
        and not name.startswith("_")
        and value is not Row
    }
    assert defined == set(SOURCES)


@pytest.mark.parametrize("model", list(SOURCES), ids=lambda model: model.__name__)
def test_each_field_is_named_after_a_column_of_its_source(
    model: type[Row],
    db: psycopg.Connection[TupleRow],
    service_api: Api,
    make_user: Callable[..., User],
) -> None:
    columns = SOURCES[model](Probe(db, service_api, make_user))
    assert columns, "no columns found: the test reads the wrong place"
    computed = COMPUTED.get(model, set())
    assert computed.isdisjoint(columns), "a field named after a column is not computed"
    assert sorted(set(model.model_fields) - columns - computed) == []
