"""Amounts of credits and money: `Decimal` in, `Decimal` out, never a float.

JSON is read with every fractional number as `Decimal`, and every `Decimal` is written as a JSON
number with exactly its digits (`7.5`, `1E-7`): PostgreSQL reads it exactly, into a `numeric`
argument as into a `jsonb` value, where a string would not compare as a number (product
attributes, search filters, the search cursor). A float, or a NaN or infinite Decimal, is
refused rather than sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from typing import Any, TypeAlias

from mycelium_client.errors import InvalidAmount

AmountLike: TypeAlias = Decimal | int | str
"""What amount arguments accept. A `float` is refused: it cannot hold most decimal amounts."""

MAX_FRACTION_DIGITS = 6
AMOUNT_LIMIT = Decimal(10) ** 15
# A USD rate (a display currency's usd_per_unit) as rpc/set_display_currency accepts it.
RATE_FRACTION_DIGITS = 12
RATE_LIMIT = Decimal(10) ** 9


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
    return positive(value, what, MAX_FRACTION_DIGITS, AMOUNT_LIMIT)


def rate(value: object, what: str = "rate") -> Decimal:
    """A USD rate as the SQL accepts it: > 0, at most 12 fractional digits, below 10^9."""
    return positive(value, what, RATE_FRACTION_DIGITS, RATE_LIMIT)


def positive(value: object, what: str, max_fraction_digits: int, limit: Decimal) -> Decimal:
    """`value` if it is > 0, has at most `max_fraction_digits` (trailing zeros not counted) and
    is below `limit`; else InvalidAmount."""
    number = to_decimal(value, what)
    if number <= 0:
        raise InvalidAmount(f"{what} must be greater than zero", reason="invalid_amount")
    if fraction_digits(number) > max_fraction_digits:
        raise InvalidAmount(
            f"{what} has more than {max_fraction_digits} fractional digits", reason="invalid_amount"
        )
    if number >= limit:
        raise InvalidAmount(f"{what} must be below {limit:f}", reason="invalid_amount")
    return number


def fraction_digits(number: Decimal) -> int:
    """The digits after the point, trailing zeros not counted, as SQL's scale(trim_scale(x)).
    Read from the digits themselves: normalize() would round to the context's 28 digits first."""
    _, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"{number} has no fractional digits to count")
    significant = "".join(map(str, digits)).rstrip("0")
    if not significant:  # zero
        return 0
    return max(0, -(exponent + len(digits) - len(significant)))


def exact_product(a: Decimal, b: Decimal) -> Decimal:
    """a * b with every digit: the default context keeps 28 and would round the rest away."""
    with localcontext() as context:
        # A product never has more digits than its factors together; Inexact guards that.
        context.prec = len(a.as_tuple().digits) + len(b.as_tuple().digits)
        context.traps[Inexact] = True
        return a * b


def loads(text: str | bytes) -> Any:
    """JSON with fractional numbers as Decimal (integers stay int, exact at any size)."""
    return json.loads(text, parse_float=Decimal)


def dumps(value: object) -> bytes:
    """Compact JSON, with each Decimal as an exact JSON number (see the module's docstring).
    The stdlib encoder can only write a number from a float, so this one writes its own."""
    return _encode(value).encode()


def _encode(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # StrEnums too, by their value
        return json.dumps(value)
    if isinstance(value, int):  # IntEnums too, by their value
        return int.__repr__(value)
    if isinstance(value, Decimal | float):
        # to_decimal refuses floats, NaN and infinities; str() of a finite Decimal is a valid
        # JSON number, digit for digit.
        return str(to_decimal(value, "a number sent as JSON"))
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_key(key)}:{_encode(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    if isinstance(value, uuid.UUID):
        return f'"{value}"'
    if isinstance(value, datetime | date):
        return f'"{value.isoformat()}"'
    if isinstance(value, timedelta):  # as a PostgreSQL interval, exactly
        return f'"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"'
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
    return json.dumps(key)
