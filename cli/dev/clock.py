"""Simulated time for a subscription on a local stack: the demo's hours pass in an instant.

The batch charges what fell due by `as_of`, which may not be in the future; so time passes the
other way: every time the subscription and its periods hold moves back, as if the hours had gone
by. Only a superuser can write those columns (nothing in the API may rewrite a subscription's
history); the ledger's movements keep their own times.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg


def pass_time(
    conn: psycopg.Connection[Any], subscription_id: uuid.UUID | str, elapsed: timedelta | str
) -> None:
    """`elapsed` (a timedelta, or a PostgreSQL interval such as '1 hour') passes for the subscription."""
    args = {"elapsed": elapsed, "id": str(subscription_id)}
    conn.execute(
        "update public.subscriptions set created_at = created_at - %(elapsed)s::interval,"
        " paid_until = paid_until - %(elapsed)s::interval, due_at = due_at - %(elapsed)s::interval,"
        " grace_since = grace_since - %(elapsed)s::interval,"
        " suspended_at = suspended_at - %(elapsed)s::interval"
        " where id = %(id)s",
        args,
    )
    conn.execute(
        "update public.subscription_periods set starts_at = starts_at - %(elapsed)s::interval,"
        " ends_at = ends_at - %(elapsed)s::interval where subscription_id = %(id)s",
        args,
    )
