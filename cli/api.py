"""What the operator commands over the API share: finding a user by e-mail address or id, and
reading amounts, dates, times and durations from arguments."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from cli.errors import CliError, UsageError
from mycelium_client import MyceliumClient


@dataclass(frozen=True)
class UserRef:
    id: uuid.UUID
    email: str | None


def find_user(client: MyceliumClient, who: str) -> UserRef:
    """A user by id (taken as given: the API refuses an unknown one) or by e-mail address (any
    case), looked up in the profiles the service may read."""
    try:
        return UserRef(uuid.UUID(who), None)
    except ValueError:
        if "@" not in who:
            raise UsageError(f"{who!r} is neither a user id nor an e-mail address") from None
    profile = client.admin.find_profile(who)
    if profile is None:
        raise CliError(f"no user {who}")
    return UserRef(profile.id, profile.email)


def parse_decimal(text: str, what: str) -> Decimal:
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        raise UsageError(f"{what} {text!r} is not a decimal number") from None
    if not number.is_finite():
        raise UsageError(f"{what} must be a finite number, not {text!r}")
    return number


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{what} {text!r} is not an ISO 8601 date or time (e.g. 2026-12-31T00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_day(text: str | None, what: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a date (YYYY-MM-DD)") from None


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str, *, zero: bool = False) -> timedelta:
    """A whole number of seconds, minutes, hours or days: 90s, 5m, 1h, 1d (a bare number is seconds);
    none at all (0) only when `zero` allows it."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", text)
    if match is None or (int(match[1]) == 0 and not zero):
        raise UsageError(f"{what} {text!r} is not a duration such as 90s, 5m, 1h or 1d")
    return timedelta(seconds=int(match[1]) * DURATION_UNITS[match[2] or "s"])
