"""audit_ledger() finds what is broken (SQL level: only a superuser can break the ledger)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from tests.support import Api, User, body

MakeUser = Callable[..., User]


def test_audit_reports_each_broken_invariant(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    rich, poor, lonely = make_user(), make_user(), make_user()
    for user in (rich, poor):
        reply = service_api.rpc(
            "purchase_credits", user_id=user.id, usd_amount="10", payment_reference=f"a-{uuid.uuid4()}"
        )
        assert reply.status_code == 200, reply.text
    assert body(service_api.rpc("audit_ledger")) == []

    with db.transaction(force_rollback=True):
        # A balance changed behind the ledger's back.
        db.execute("update public.credit_accounts set balance = balance + 1 where user_id = %s", (rich.id,))
        # A lot that its account does not count.
        db.execute(
            "insert into public.credit_lots (user_id, amount, remaining, expires_at) "
            "values (%s, 2, 2, now() + interval '1 day')",
            (poor.id,),
        )
        # A transfer without its entry (credits issued to nobody's history).
        db.execute(
            "insert into mycelium_private.transfers (kind, from_system, to_user, amount) "
            "values ('grant', 'issuance', %s, 3)",
            (lonely.id,),
        )
        found = {(check, subject) for check, subject, _ in db.execute("select * from public.audit_ledger()")}
    assert ("sum_zero", "ledger") in found
    assert ("balance_equals_entries", rich.id) in found
    assert ("balance_after_of_last_entry", rich.id) in found
    assert ("lots_equal_expiring", poor.id) in found
    assert ("entries_equal_transfers", lonely.id) in found
    assert body(service_api.rpc("audit_ledger")) == []


def test_daily_rollups_give_the_same_stats_as_live_sums(
    make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    user = make_user()
    stats = "select * from public.platform_daily_stats(current_date - 20, current_date)"
    with db.transaction(force_rollback=True):
        # Movements on past days (rolled back with everything else at the end).
        db.execute(
            "insert into mycelium_private.transfers (kind, from_system, to_user, amount, created_at) "
            "select 'grant', 'issuance', %s, g, now() - g * interval '1 day' from generate_series(1, 15) g",
            (user.id,),
        )
        live = db.execute(stats).fetchall()
        assert db.execute("select public.refresh_ledger_rollups()").fetchone() == (1,)  # one a call
        added = db.execute("select public.refresh_ledger_rollups(3660)").fetchone()
        assert added is not None and added[0] >= 13
        assert db.execute("select public.refresh_ledger_rollups(3660)").fetchone() == (0,)
        assert db.execute(stats).fetchall() == live
        by_day = {row[0]: row for row in live}
        assert all(
            by_day[day][3] >= g
            for day, g in db.execute(
                "select (now() - g * interval '1 day')::date, g from generate_series(2, 14) g"
            )
        )


def test_refresh_rollups_is_for_admins(make_user: MakeUser) -> None:
    reply = make_user().api.rpc("refresh_ledger_rollups")
    assert reply.status_code == 403 and body(reply)["code"] == "not_authorized"


@pytest.mark.parametrize(
    ("now", "oldest_open", "last_complete"),
    [
        # An hour of margin after midnight, whatever is open.
        ("2026-11-27 00:30+00", None, "2026-11-25"),
        ("2026-11-27 01:30+00", None, "2026-11-26"),
        # A transaction begun before midnight and still open holds its day back, however late.
        ("2026-11-27 23:00+00", "2026-11-26 23:59:59+00", "2026-11-25"),
        ("2026-11-29 12:00+00", "2026-11-26 23:59:59+00", "2026-11-25"),
        # One begun at midnight or later belongs to the next day.
        ("2026-11-27 23:00+00", "2026-11-27 00:00+00", "2026-11-26"),
        # Days are UTC, whatever the session's time zone says.
        ("2026-11-27 01:30-05", None, "2026-11-26"),
    ],
)
def test_a_day_is_complete_an_hour_after_it_ended_and_once_what_began_in_it_ended(
    db: psycopg.Connection[TupleRow], now: str, oldest_open: str | None, last_complete: str
) -> None:
    row = db.execute(
        "select mycelium_private.last_complete_day(%s::timestamptz, %s::timestamptz)::text",
        (now, oldest_open),
    ).fetchone()
    assert row == (last_complete,)


@contextmanager
def open_transaction(url: str) -> Iterator[object]:
    """A session of `url` holding a transaction open; yields its start."""
    with psycopg.connect(url) as conn:
        row = conn.execute("select now()").fetchone()
        assert row is not None
        yield row[0]
        conn.rollback()


def oldest_open_seen_by_owner(stack: LocalStack) -> object:
    # As the owner of the migrations, who owns refresh_ledger_rollups and so reads pg_stat_activity.
    with psycopg.connect(stack.local_db_url("postgres"), autocommit=True) as owner:
        row = owner.execute("select mycelium_private.oldest_open_transaction_start()").fetchone()
    assert row is not None
    return row[0]


def test_rollups_see_a_transaction_left_open_by_the_owners_role(stack: LocalStack) -> None:
    with open_transaction(stack.local_db_url("postgres")) as started:
        assert oldest_open_seen_by_owner(stack) == started


def test_rollups_see_other_roles_transactions_once_granted_pg_read_all_stats(
    stack: LocalStack, db: psycopg.Connection[TupleRow]
) -> None:
    """docs/deploy.md tells operators to grant pg_read_all_stats to postgres: without it, the roll-up
    cannot see other roles' open transactions and relies on its hour of margin for them."""
    with open_transaction(stack.local_db_url("authenticator")) as started:
        assert oldest_open_seen_by_owner(stack) is None
        db.execute("grant pg_read_all_stats to postgres")
        try:
            assert oldest_open_seen_by_owner(stack) == started
        finally:
            db.execute("revoke pg_read_all_stats from postgres")
