"""Amounts of credits and money: `Decimal` in, `Decimal` out, never a float.

JSON is read with every fractional number as `Decimal`, and `Decimal`s are sent as JSON strings,
which PostgREST casts exactly to `numeric`.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

from mycelium_client.errors import InvalidAmount

AmountLike: TypeAlias = Decimal | int | str
"""What amount arguments accept. A `float` is refused: it cannot hold most decimal amounts."""

MAX_FRACTION_DIGITS = 6
AMOUNT_LIMIT = Decimal(10) ** 15


def to_decimal(value: object, what: str = "amount") -> Decimal:
    """`value` as a finite Decimal; floats, booleans, NaN, infinities and junk are refused."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        kind = type(value).__name__
        hint = " (pass a Decimal, an int or a decimal string: floats lose cents)" if kind == "float" else ""
        raise InvalidAmount(
            f"{what} must be a Decimal, int or decimal string, not {kind}{hint}", reason="invalid_amount"
        )
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise InvalidAmount(f"{what} {value!r} is not a decimal number", reason="invalid_amount") from None
    if not number.is_finite():
        raise InvalidAmount(f"{what} must be a finite number, not {number}", reason="invalid_amount")
    return number


def amount(value: object, what: str = "amount") -> Decimal:
    """A credit amount as the SQL accepts it: > 0, at most 6 fractional digits, below 10^15."""
    number = to_decimal(value, what)
    if number <= 0:
        raise InvalidAmount(f"{what} must be greater than zero", reason="invalid_amount")
    if fraction_digits(number) > MAX_FRACTION_DIGITS:
        raise InvalidAmount(
            f"{what} has more than {MAX_FRACTION_DIGITS} fractional digits", reason="invalid_amount"
        )
    if number >= AMOUNT_LIMIT:
        raise InvalidAmount(f"{what} must be below {AMOUNT_LIMIT:f}", reason="invalid_amount")
    return number


def fraction_digits(number: Decimal) -> int:
    exponent = number.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def loads(text: str | bytes) -> Any:
    """JSON with fractional numbers as Decimal (integers stay int, exact at any size)."""
    return json.loads(text, parse_float=Decimal)


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):  # as a PostgreSQL interval, exactly
        return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


def dumps(value: object) -> bytes:
    return json.dumps(value, default=_default, separators=(",", ":")).encode()
