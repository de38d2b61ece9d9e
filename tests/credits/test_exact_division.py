"""The SQL's exact division of amounts (mycelium_private.divide_truncated / divide_rounded),
against Python's Decimal at a precision where every quotient below is exact before it is cut."""

from __future__ import annotations

import random
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, localcontext

import psycopg
from psycopg.rows import TupleRow

SCALE = 6


def expected(a: Decimal, b: Decimal, rounding: str) -> Decimal:
    with localcontext() as exact:
        exact.prec = 80
        return (a / b).quantize(Decimal(1).scaleb(-SCALE), rounding=rounding)


def amounts(count: int, seed: int) -> list[Decimal]:
    """Amounts from 0.000001 to just under 10^15 with up to 6 decimals."""
    generator = random.Random(seed)
    return [Decimal(generator.randrange(1, 10**21)).scaleb(-SCALE) for _ in range(count)]


def test_division_is_exact_truncated_and_rounded_half_away_from_zero(
    db: psycopg.Connection[TupleRow],
) -> None:
    single = amounts(100, seed=1)
    # Products of two amounts (what the fee shares divide), and negatives.
    values = [
        *single,
        *(a * b for a, b in zip(single[:25], single[25:50], strict=True)),
        *(-a for a in single[:25]),
    ]
    divisors = [Decimal("0.6"), Decimal("3"), Decimal("7.000001"), Decimal("0.000003"), *amounts(4, seed=2)]
    pairs = [
        *((a, b) for a in values for b in divisors),
        # Halfway cases: round() goes away from zero, and so must divide_rounded.
        (Decimal("0.0000025"), Decimal(1)),
        (Decimal("-0.0000025"), Decimal(1)),
        (Decimal("1"), Decimal("-8000000")),
    ]
    rows = db.execute(
        "select mycelium_private.divide_truncated(a, b, 6), mycelium_private.divide_rounded(a, b, 6) "
        "from unnest(%s::numeric[], %s::numeric[]) as p(a, b)",
        ([a for a, _ in pairs], [b for _, b in pairs]),
    ).fetchall()
    for (a, b), (truncated, rounded) in zip(pairs, rows, strict=True):
        assert truncated == expected(a, b, ROUND_DOWN), (a, b)
        assert rounded == expected(a, b, ROUND_HALF_UP), (a, b)
