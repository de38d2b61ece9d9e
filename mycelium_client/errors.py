"""The client's exceptions: one small hierarchy, mapped from the stable reasons the SQL returns.

Every error carries `reason` (the machine-readable code, e.g. `insufficient_credits`), `message`
(for people) and `status` (the HTTP status, 0 when no response arrived).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class MyceliumError(Exception):
    """Base class of every error the client raises."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "error",
        status: int = 0,
        details: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status
        self.details = details
        self.hint = hint

    def __str__(self) -> str:
        where = f", HTTP {self.status}" if self.status else ""
        return f"{self.message} ({self.reason}{where})"


class InvalidArgument(MyceliumError):
    """An argument was refused, by the client before sending or by the SQL."""


class InvalidAmount(InvalidArgument):
    """An amount is not a positive decimal with at most 6 fractional digits (or is a float)."""


class InsufficientCredits(MyceliumError):
    """The account does not hold enough spendable credits."""


class NotAuthorized(MyceliumError):
    """Not signed in, a bad or expired token, or a role that may not do this."""


class NotFound(MyceliumError):
    """The user, package, product, order or row does not exist (or is not visible to you)."""


class Conflict(MyceliumError):
    """The request contradicts what exists: a reused idempotency key, an inactive package or
    product, a product sold out, an order not in a state that allows this, a refund above what
    is left, a refund whose provider cannot pay their part yet, ..."""


class ServiceUnavailable(MyceliumError):
    """The service could not be reached or answered with a server error, retries included."""


class RateLimited(ServiceUnavailable):
    """The gateway refused the call for now (429, `rate_limited`): too many calls from this
    address or token; `retry_after` says in how many seconds to try again (None: not said).
    The client already retried as often as its retry policy allows."""

    retry_after: float | None = None


class QueryTimeout(ServiceUnavailable):
    """The database cancelled the statement at its timeout (3 s for anon, 8 s for a user):
    PostgREST answers it 500 with SQLSTATE 57014, read here as `query_timeout`. Narrow the
    filter or page; the client does not retry it, as the same statement would time out again."""


class ConfigurationError(MyceliumError):
    """The client is missing a setting (an environment variable, a database URL)."""


# Stable reasons from the SQL (`mycelium_private.fail`), and PostgREST's own codes worth naming.
_BY_REASON: dict[str, type[MyceliumError]] = {
    "insufficient_credits": InsufficientCredits,
    "invalid_amount": InvalidAmount,
    "invalid_argument": InvalidArgument,
    "self_transfer": InvalidArgument,
    "invalid_quantity": InvalidArgument,
    "mixed_providers": InvalidArgument,  # one order per provider
    "own_product": InvalidArgument,  # providers do not buy from themselves
    "unknown_usage_unit": InvalidArgument,  # usage of a unit the product has no usage price for
    "not_authorized": NotAuthorized,
    "user_banned": NotAuthorized,  # a token of a user Auth has banned since it was issued
    "user_not_found": NotAuthorized,  # a token of a user Auth has deleted since
    "not_found": NotFound,
    "unknown_recipient": NotFound,
    "product_not_found": NotFound,
    "order_not_found": NotFound,
    "subscription_not_found": NotFound,
    "duplicate_reference": Conflict,
    "package_inactive": Conflict,
    "append_only": Conflict,
    "read_only": Conflict,  # a write into a view that only reads
    "product_inactive": Conflict,
    "capacity_exceeded": Conflict,
    "not_subscribable": Conflict,  # a product sold by orders only (unit once, or a capacity)
    "provider_not_selling": Conflict,  # the provider no longer holds the role the product needs
    "too_many_pending_orders": Conflict,  # a buyer's pending orders are bounded (marketplace_config)
    "too_many_pending_units": Conflict,  # so is their share of a product's capacity
    "invalid_transition": Conflict,  # e.g. fulfilling an order twice, cancelling a fulfilled one
    "refund_exceeds_paid": Conflict,
    "provider_funds_short": Conflict,  # a refund the provider's credits cannot pay yet: fund them, retry
    # The gateway's own answers (cli/dev/gateway.py, supabase/kong.yml).
    "rate_limited": RateLimited,
    "query_too_long": InvalidArgument,  # an anonymous query string past the allowance
    "filter_too_complex": InvalidArgument,  # an anonymous filter past its operator allowance
    "invalid_query_encoding": InvalidArgument,  # a query string that is not UTF-8
    "body_too_large": InvalidArgument,  # past 1 MiB, or past the anonymous allowance (2 KiB)
    "unsupported_media_type": InvalidArgument,  # a body that is not JSON
    "request_line_too_long": InvalidArgument,  # a request line past 8 KiB
    "headers_too_large": InvalidArgument,  # a header past 8 KiB
    "bad_request": InvalidArgument,  # a request the gateway could not read
    "query_timeout": QueryTimeout,
    "42501": NotAuthorized,  # insufficient_privilege
    "22P02": InvalidArgument,  # invalid text representation (a malformed uuid, ...)
    "22023": InvalidArgument,  # invalid parameter value
    "23505": Conflict,  # unique violation
    "PGRST116": NotFound,  # an object was asked for and no row matched
    "PGRST202": NotFound,  # no such function (or not yet in PostgREST's schema cache)
    "PGRST205": NotFound,  # no such table
}
_BY_STATUS: dict[int, type[MyceliumError]] = {
    400: InvalidArgument,
    401: NotAuthorized,
    403: NotAuthorized,
    404: NotFound,
    406: NotFound,
    409: Conflict,
    422: InvalidArgument,
    429: RateLimited,
}
# Reasons for answers that carry none of ours: Kong's rate limiting, its size limit and its own
# refusals say only a message, and PostgREST passes a statement timeout on as its SQLSTATE.
_REASON_BY_STATUS = {413: "body_too_large", 414: "request_line_too_long", 429: "rate_limited"}
_REASON_BY_CODE = {"57014": "query_timeout"}


def error_class(reason: str, status: int) -> type[MyceliumError]:
    """The class for a reason, else for the HTTP status."""
    if reason in _BY_REASON:
        return _BY_REASON[reason]
    if status >= 500:
        return ServiceUnavailable
    return _BY_STATUS.get(status, MyceliumError)


def lost_database_connection(status: int, body: Any) -> bool:
    """PostgREST's answer when the database connection itself failed mid-request (PostgreSQL
    crashed or closed it): libpq's own error, which carries no SQLSTATE, passed on as HTTP 400
    with an empty code. The database never answered: the request may or may not have been applied."""
    return status == 400 and isinstance(body, Mapping) and body.get("code") == ""


def from_body(status: int, body: Any) -> MyceliumError:
    """The error for a PostgREST (or gateway) error response body, whatever its shape."""
    if lost_database_connection(status, body):
        return ServiceUnavailable(
            "the database connection failed during the request, which may have been applied",
            reason="database_connection_lost",
            status=status,
        )
    fields: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    code = str(fields.get("code") or _REASON_BY_STATUS.get(status) or f"http_{status}")
    reason = _REASON_BY_CODE.get(code, code)
    message = str(fields.get("message") or fields.get("msg") or body or f"HTTP {status}")
    details, hint = fields.get("details"), fields.get("hint")
    cls = error_class(reason, status)
    return cls(
        message,
        reason=reason,
        status=status,
        details=None if details is None else str(details),
        hint=None if hint is None else str(hint),
    )
