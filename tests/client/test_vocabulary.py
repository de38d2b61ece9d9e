"""The client speaks the database's vocabulary: its enums name exactly the values the database
accepts (a value the database adds would fail to parse in every client, one it never had would
filter on nothing), and every reason the SQL fails with has its exception class."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from mycelium_client import (
    MovementKind,
    MyceliumError,
    OrderStatus,
    ProductCategory,
    ProductUnit,
    RoleName,
    TransactionKind,
)
from mycelium_client.errors import error_class

SQL_FOLDER = Path(__file__).resolve().parents[2] / "sql"
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
